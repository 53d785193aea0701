"""SeqIO Tasks and Mixtures of recjax prepared directories.

Importing this package registers the embedded synthetic default
(`synthetic_*`), the dataset modules whose prepared directories exist, and
every directory in `$RECJAX_PREPARED_DIRS` (os.pathsep-separated; each named
by its manifest's dataset name). Registration is idempotent. Directories in
`$RECJAX_SEQIO_CACHE_DIRS` are SeqIO cache dirs (`recjax cache_tasks`), read
with `use_cached=True` (gin: USE_CACHED_TASKS = True).
"""
from __future__ import annotations

import os

from seqio_tasks import amazon, lastfm, movielens, synthetic  # noqa: F401  (registers)
from seqio_tasks.cache import add_cache_dirs_from_env
from seqio_tasks.registry import register_prepared


def register_from_env(var: str = "RECJAX_PREPARED_DIRS") -> list[str]:
  names = []
  for path in filter(None, os.environ.get(var, "").split(os.pathsep)):
    names.extend(register_prepared(path))
  return names


ENV_NAMES = register_from_env()
CACHE_DIRS = add_cache_dirs_from_env()
