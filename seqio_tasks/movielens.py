"""Registers MovieLens 100K from `$RECJAX_MOVIELENS_DIR` (default `$RECJAX_DATA_DIR/ml-100k`).

Names: `ml_100k_<task>`, `ml_100k_rec`, `ml_100k_rec_aux`. Any other
prepared directory registers the same way:
`seqio_tasks.registry.register_prepared(path, dataset_name=...)`.
"""
from __future__ import annotations

from seqio_tasks import _dirs
from seqio_tasks.registry import register_prepared

PREPARED_DIR = _dirs.dataset_dir("RECJAX_MOVIELENS_DIR", "ml-100k")
NAMES = (register_prepared(PREPARED_DIR, dataset_name="ml_100k")
         if (PREPARED_DIR / "tasks").is_dir() else [])
