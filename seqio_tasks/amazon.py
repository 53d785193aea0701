"""Registers Amazon Beauty from `$RECJAX_AMAZON_DIR` (default
`$RECJAX_DATA_DIR/amazon-beauty`); Toys and Sports register the same way.

Names: `amazon_beauty_<task>`, `amazon_beauty_rec`, `amazon_beauty_rec_aux`.
Any other prepared directory registers the same way:
`seqio_tasks.registry.register_prepared(path, dataset_name=...)`.
"""
from __future__ import annotations

from seqio_tasks import _dirs
from seqio_tasks.registry import register_prepared

PREPARED_DIR = _dirs.dataset_dir("RECJAX_AMAZON_DIR", "amazon-beauty")
NAMES = (register_prepared(PREPARED_DIR, dataset_name="amazon_beauty")
         if (PREPARED_DIR / "tasks").is_dir() else [])
