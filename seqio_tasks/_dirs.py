"""Where the thin per-dataset modules look for prepared directories."""
from __future__ import annotations

import os
import pathlib


def data_root() -> pathlib.Path:
  """`$RECJAX_DATA_DIR`, default `~/.cache/recjax`."""
  return pathlib.Path(os.environ.get("RECJAX_DATA_DIR",
                                     "~/.cache/recjax")).expanduser()


def dataset_dir(env_var: str, default_name: str) -> pathlib.Path:
  """`$<env_var>` if set, else `data_root()/<default_name>`."""
  value = os.environ.get(env_var)
  return pathlib.Path(value).expanduser() if value else data_root() / default_name
