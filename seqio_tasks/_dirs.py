"""Where the thin per-dataset modules look for prepared directories."""
from __future__ import annotations

import os
import pathlib

from recjax.data.prepared import data_root


def dataset_dir(env_var: str, default_name: str) -> pathlib.Path:
  """`$<env_var>` if set, else `data_root()/<default_name>`."""
  value = os.environ.get(env_var)
  return pathlib.Path(value).expanduser() if value else data_root() / default_name
