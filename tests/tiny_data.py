"""Tiny real PreparedData builders shared by the prompt and SeqIO tests."""
from __future__ import annotations

import numpy as np

from recjax.data.prepared import PreparedData

COLORS = ("red", "blue", "green", "amber")


def tiny_data(n_users: int = 30, n_items: int = 80, *, ratings: bool = True,
              seed: int = 0, min_len: int = 2, max_len: int = 30
              ) -> PreparedData:
  rng = np.random.default_rng(seed)
  items = [dict(id=f"item_{i}",
                title=f"Thing {i} {COLORS[i % 4]} widget",
                categories=["Toys", f"Cat {i % 5}"],
                description=f"A {COLORS[(i + 1) % 4]} thing number {i} with "
                            "many words here for span corruption to hide",
                brand="Acme", price=1.0 + i)
           for i in range(n_items)]
  seqs = [rng.choice(n_items, size=int(rng.integers(min_len, max_len + 1)),
                     replace=False).tolist() for _ in range(n_users)]
  rts = ([rng.integers(1, 6, size=len(s)).astype(float).tolist() for s in seqs]
         if ratings else None)
  return PreparedData.from_sequences(
      "tiny", items, [f"USERZQ{u:04d}" for u in range(n_users)], seqs,
      ratings=rts)
