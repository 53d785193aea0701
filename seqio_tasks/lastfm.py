"""Registers Last.fm from `$RECJAX_LASTFM_DIR` (default `$RECJAX_DATA_DIR/lastfm`).

Names: `lastfm_<task>`, `lastfm_rec`, `lastfm_rec_aux`. Any other
prepared directory registers the same way:
`seqio_tasks.registry.register_prepared(path, dataset_name=...)`.
"""
from __future__ import annotations

from seqio_tasks import _dirs
from seqio_tasks.registry import register_prepared

PREPARED_DIR = _dirs.dataset_dir("RECJAX_LASTFM_DIR", "lastfm")
NAMES = (register_prepared(PREPARED_DIR, dataset_name="lastfm")
         if (PREPARED_DIR / "tasks").is_dir() else [])
