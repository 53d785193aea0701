"""Most-popular baseline: every user gets the items ranked by training count.

Counts come from the training part only (each user's `train_sequence`), as
RecBole's Pop. Its "embeddings" are one column, the count divided by the
largest count, with a user vector of [1.0], so the shared format still holds:
score = user_embedding . item_embedding.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from recjax.baselines import common
from recjax.data.prepared import PreparedData


def item_counts(data: PreparedData) -> np.ndarray:
  counts = np.zeros(data.num_items, np.int64)
  for seq in common.train_sequences(data):
    np.add.at(counts, seq, 1)
  return counts


def train_popularity(data: PreparedData, *, seed: int = 0,
                     mask_history: bool = True, ties: str = "pessimistic",
                     log: Callable[[str], None] | None = print,
                     **unused) -> common.BaselineResult:
  """Counts items, evaluates on validation and test. `seed` is unused (no randomness)."""
  del seed
  if unused:
    raise TypeError(f"pop takes no hyper-parameters {sorted(unused)}")
  timer = common.Timer()
  counts = item_counts(data)
  score = (counts / max(1, counts.max())).astype(np.float32)
  sets = {split: common.eval_set(data, split) for split in common.EVAL_SPLITS}
  metrics = common.final_metrics(lambda split: common.evaluate(
      lambda rows: np.broadcast_to(score, (len(rows), len(score))),
      sets[split], mask_history=mask_history, ties=ties, both=True))
  users = {split: (es.users, np.ones((len(es), 1), np.float32))
           for split, es in sets.items()}
  valid = metrics["validation"][common.VALID_METRIC]
  common.progress("pop", 0, 0.0, valid, timer(), log)
  return common.BaselineResult(
      model="pop", hparams={"mask_history": mask_history, "ties": ties},
      metrics=metrics,
      history=[{"epoch": 0, "loss": 0.0, "valid": valid, "seconds": timer()}],
      epochs_run=1, best_epoch=None, item_embeddings=score[:, None],
      user_embeddings=users, seconds=timer())
