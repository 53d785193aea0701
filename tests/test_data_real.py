"""Loaders on the real data in ../shared (skipped with a reason when absent).

The prepared counts below were computed by `build_prepared` and are checked
here against an independent pure-Python k-core over the raw files.
"""
import collections
import json

import numpy as np

from recjax.data import loaders, prepare


def _pure_python_kcore(pairs, k):
  """Iterative k-core over a list of (user, item) pairs; the slow obvious way."""
  pairs = list(pairs)
  while True:
    uc = collections.Counter(u for u, _ in pairs)
    ic = collections.Counter(i for _, i in pairs)
    kept = [(u, i) for u, i in pairs if uc[u] >= k and ic[i] >= k]
    if len(kept) == len(pairs):
      return kept
    pairs = kept


def test_ml100k_recbole_counts(shared_dir):
  data = loaders.load("recbole", shared_dir / "data" / "ml-100k")
  assert data.counts() == {"users": 943, "items": 1682, "interactions": 100_000}
  assert data.num_items == 1682 and not data.skipped
  values, counts = np.unique(data.ratings, return_counts=True)
  assert dict(zip(values.tolist(), counts.tolist())) == {
      1.0: 6110, 2.0: 11370, 3.0: 27145, 4.0: 34174, 5.0: 21201}
  assert data.item(0) == {"id": "1", "title": "Toy Story (1995)",
                          "categories": ["Animation", "Children's", "Comedy"],
                          "brand": None, "description": None, "price": None}
  assert all(data.titles)


def test_ml100k_prepared_5core(shared_dir):
  path = shared_dir / "data" / "ml-100k"
  p = prepare.build_prepared("recbole", str(path), kcore=5)
  # No duplicate (user, item) pairs; items with < 5 ratings go (333 items,
  # 713 ratings); every user keeps >= 19 ratings, so nothing cascades.
  assert p.stats["filters"] == [
      {"name": "dedup", "policy": "first", "removed": 0,
       "after": {"users": 943, "items": 1682, "interactions": 100_000}},
      {"name": "kcore", "k": 5, "iterations": 1, "removed": 713,
       "after": {"users": 943, "items": 1349, "interactions": 99_287}}]
  assert p.stats["final"] == {"users": 943, "items": 1349,
                              "interactions": 99_287}
  lines = (path / "ml-100k.inter").read_text().splitlines()[1:]
  pairs = [tuple(line.split("\t")[:2]) for line in lines]
  kept = _pure_python_kcore(pairs, 5)
  assert len(kept) == p.num_interactions
  assert len({i for _, i in kept}) == p.num_items
  assert min(np.diff(p.user_ptr)) == 19
  assert all(np.all(np.diff(p.timestamps(u)) >= 0) for u in range(943))


def test_lastfm_llara_counts(shared_dir):
  path = shared_dir / "data" / "lastfm-llara"
  data = loaders.load("lastfm_llara", path)
  # SOURCE.md: 1,220 users (976/122/122), 4,606 items, 56,794 interactions
  # (50,800 train + 3,133 valid + 2,861 test, from the all-prefix files).
  assert data.counts() == {"users": 1220, "items": 4606, "interactions": 56_794}
  split = collections.Counter(uid.split("_")[0] for uid in data.user_ids)
  assert split == {"train": 976, "valid": 122, "test": 122}
  per_split = collections.Counter(
      data.user_ids[u].split("_")[0] for u in data.users)
  assert per_split == {"train": 50_800, "valid": 3133, "test": 2861}
  assert np.isnan(data.ratings).all()
  # A held-out user's last item is LLaRA's test target for that user.
  rows = [json.loads(x) for x in (path / "test.jsonl").read_text().splitlines()]
  last = {}
  for u, i in zip(data.users, data.items):
    last[data.user_ids[u]] = data.item_ids[i]
  assert [last[f"test_{k}"] for k in range(122)] == [str(r["next"])
                                                     for r in rows]

  p = prepare.build_prepared("lastfm_llara", str(path), kcore=5)
  assert p.stats["final"] == {"users": 1089, "items": 3624,
                              "interactions": 52_422}
  assert p.stats["filters"][1]["iterations"] == 3
  pairs = [(data.user_ids[u], data.item_ids[i])
           for u, i in zip(data.users, data.items)]
  assert len(_pure_python_kcore(pairs, 5)) == 52_422
