"""Raw log -> PreparedData: load, dedup, k-core, chronological sequences, re-index.

`build_prepared` is pure (loads, filters, returns); `prepare_dataset` also
writes the prepared directory atomically. The CLI (`recjax prepare`) calls
`build_prepared`. Every step is numpy over whole columns, so a log of a
million interactions prepares in seconds.

Steps and the choices they make:
  1. Load with `recjax.data.loaders.load` (the error policy applies there).
  2. Chronological order: a stable sort by (user, timestamp), so equal
     timestamps keep file order. Every later step preserves this order.
  3. Dedup of (user, item) pairs: 'first' keeps the earliest interaction,
     'last' the latest (both in the chronological order of step 2), 'keep'
     keeps all. The kept interaction stays at its own time.
  4. Iterative k-core: drop users and items with fewer than k interactions,
     repeated until none is left to drop (one pass removes both the users
     and the items that are short in the current log; removing them can
     make others short, so it cascades). k <= 1 disables it. Counts are
     interactions, so with dedup='keep' repeats count.
  5. Re-indexing: users in order of first appearance in the loaded log
     (file order); items in catalogue order (the order of the source's item
     file, or first appearance for sources without one), restricted to items
     that still have interactions. Catalogue items that were never interacted
     with (before filtering) are dropped and counted in
     `stats["items_without_interactions"]`; items that lose all their
     interactions to dedup/k-core are counted in those filters' `after`.

`stats` layout (written to stats.json):
  {"raw": {"users", "items", "interactions"},     # items: catalogue size
   "filters": [{"name": "dedup", "policy", "removed", "after": {...}},
               {"name": "kcore", "k", "iterations", "removed", "after": {...}}],
   "skipped": {reason: count},                    # from the loader
   "items_without_interactions": n,
   "final": {"users", "items", "interactions"}}
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from recjax.data import loaders
from recjax.data.dataset import RecDataset
from recjax.data.errors import DataError, check_on_error
from recjax.data.prepared import PreparedData

DEDUP = ("first", "last", "keep")


def _counts(users: np.ndarray, items: np.ndarray) -> dict[str, int]:
  return {"users": int(len(np.unique(users))),
          "items": int(len(np.unique(items))),
          "interactions": int(len(users))}


def chronological_order(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
  """Permutation sorting by (user, timestamp); stable, so ties keep input order."""
  return np.lexsort((timestamps, users))


def dedup_mask(users: np.ndarray, items: np.ndarray, policy: str) -> np.ndarray:
  """Which rows to keep so that each (user, item) occurs once.

  Rows must already be in the order that defines 'first' (chronological).
  'first' keeps each pair's first row, 'last' its last row, 'keep' all.
  """
  if policy not in DEDUP:
    raise ValueError(f"dedup must be one of {DEDUP}, got {policy!r}")
  n = len(users)
  if policy == "keep" or n == 0:
    return np.ones(n, bool)
  key = users.astype(np.int64) * (int(items.max()) + 1) + items
  if policy == "last":
    key = key[::-1]
  _, first = np.unique(key, return_index=True)
  keep = np.zeros(n, bool)
  keep[first] = True
  return keep[::-1] if policy == "last" else keep


def kcore_mask(users: np.ndarray, items: np.ndarray,
               k: int) -> tuple[np.ndarray, int]:
  """(rows kept by the iterative k-core, number of passes that removed rows)."""
  keep = np.ones(len(users), bool)
  if k <= 1:
    return keep, 0
  n_users = int(users.max()) + 1 if len(users) else 0
  n_items = int(items.max()) + 1 if len(items) else 0
  iterations = 0
  idx = np.arange(len(users))
  while len(idx):
    u, i = users[idx], items[idx]
    uc = np.bincount(u, minlength=n_users)
    ic = np.bincount(i, minlength=n_items)
    ok = (uc[u] >= k) & (ic[i] >= k)
    if ok.all():
      break
    iterations += 1
    idx = idx[ok]
  keep[:] = False
  keep[idx] = True
  return keep, iterations


def _default_name(source: str, data: RecDataset) -> str:
  name = data.name or source
  return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "data"


def build_prepared(source: str, input_path: str | os.PathLike | None, *,
                   name: str | None = None, kcore: int = 5,
                   on_error: str = "raise", dedup: str = "first",
                   max_history: int = 20,
                   options: Mapping[str, Any] | None = None) -> PreparedData:
  """Loads `input_path` as `source` and returns the filtered, re-indexed data."""
  check_on_error(on_error)
  if dedup not in DEDUP:
    raise ValueError(f"dedup must be one of {DEDUP}, got {dedup!r}")
  if kcore < 0 or max_history < 1:
    raise ValueError("need kcore >= 0 and max_history >= 1")
  input_path = None if input_path is None else os.fspath(input_path)
  data = loaders.load(source, input_path, on_error, **dict(options or {}))
  return prepare_from_dataset(
      data, source=source, input_path=input_path, name=name, kcore=kcore,
      on_error=on_error, dedup=dedup, max_history=max_history,
      options=options)


def prepare_from_dataset(data: RecDataset, *, source: str,
                         input_path: str | None = None, name: str | None = None,
                         kcore: int = 5, on_error: str = "raise",
                         dedup: str = "first", max_history: int = 20,
                         options: Mapping[str, Any] | None = None
                         ) -> PreparedData:
  """The filtering half of `build_prepared`, for an already loaded dataset."""
  users, items = data.users, data.items
  ts, ratings = data.timestamps, data.ratings
  stats: dict[str, Any] = {
      "raw": {"users": int(len(np.unique(users))), "items": data.num_items,
              "interactions": data.num_interactions},
      "filters": [], "skipped": dict(sorted(data.skipped.items()))}
  interacted = np.bincount(items, minlength=data.num_items) > 0
  stats["items_without_interactions"] = int(data.num_items - interacted.sum())

  order = chronological_order(users, ts)
  users, items, ts, ratings = users[order], items[order], ts[order], ratings[order]

  keep = dedup_mask(users, items, dedup)
  users, items, ts, ratings = users[keep], items[keep], ts[keep], ratings[keep]
  stats["filters"].append({"name": "dedup", "policy": dedup,
                           "removed": int((~keep).sum()),
                           "after": _counts(users, items)})

  keep, iterations = kcore_mask(users, items, kcore)
  users, items, ts, ratings = users[keep], items[keep], ts[keep], ratings[keep]
  stats["filters"].append({"name": "kcore", "k": int(kcore),
                           "iterations": iterations,
                           "removed": int((~keep).sum()),
                           "after": _counts(users, items)})
  if not len(users):
    raise DataError(input_path, None, None,
                    f"nothing left after filtering ({stats['filters']}); "
                    "lower kcore or check the input")

  # Dense re-indexing; rows are sorted by user code already.
  user_codes, user_new = np.unique(users, return_inverse=True)
  item_codes, item_new = np.unique(items, return_inverse=True)
  lengths = np.bincount(user_new, minlength=len(user_codes))
  user_ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  stats["final"] = {"users": int(len(user_codes)),
                    "items": int(len(item_codes)),
                    "interactions": int(len(users))}
  prepared_items = [data.item(int(i)) for i in item_codes]
  meta = {"source": source, "input": input_path, "kcore": int(kcore),
          "dedup": dedup, "max_history": int(max_history),
          "on_error": on_error,
          "options": {k: _jsonable(v) for k, v in dict(options or {}).items()},
          "item_order": "catalogue", "user_order": "first_appearance"}
  return PreparedData(
      name=name or _default_name(source, data), items=prepared_items,
      user_ids=[data.user_ids[u] for u in user_codes], user_ptr=user_ptr,
      seq_items=item_new.astype(np.int32), seq_timestamps=ts,
      seq_ratings=ratings, meta=meta, stats=stats)


def _jsonable(value: Any) -> Any:
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return str(value)


def prepare_dataset(source: str, input_path: str | os.PathLike | None,
                    output_dir: str | os.PathLike, *, overwrite: bool = False,
                    **kwargs) -> PreparedData:
  """`build_prepared(...)` then `PreparedData.save(output_dir)` (atomic)."""
  if os.path.exists(output_dir) and not overwrite:
    raise FileExistsError(f"{output_dir} exists; pass overwrite=True")
  data = build_prepared(source, input_path, **kwargs)
  data.save(output_dir, overwrite=overwrite)
  return data
