"""Loader registry: `load(source, input_path, on_error=..., **options) -> RecDataset`.

Each source has one module (its docstring documents the files it reads and
its options). Every loader takes `input_path` and keyword `on_error`
('raise' | 'skip', see `recjax.data.errors`) plus source-specific options,
and returns a `RecDataset` whose `skipped` counts dropped records by reason.
Loaders whose source has an item file also take `missing_title`
('skip' | 'id'; see `recjax.data.dataset.DatasetBuilder`).

  source        input                              options
  movielens     dir: 100K / 1M / 10M / 20M / 25M   -
  amazon2014    dir or reviews_<Cat>_5.json.gz     category, all_meta
  amazon2018    dir or <Cat>_5.json.gz             category, all_meta
  steam         dir                                -
  lastfm        hetrec2011-lastfm-2k dir           untagged ('after'|'drop')
  lastfm_llara  LLaRA's processed dir              eval_rows
  recbole       dir or <name>.inter                year_in_title
  csv, jsonl    interactions file                  columns, items, item_columns,
                                                   delimiter, category_sep, name
  synthetic     none                               SyntheticConfig fields

Option values may be strings (as from the command line).
"""
from __future__ import annotations

from typing import Any, Callable

from recjax.data import synthetic
from recjax.data.dataset import RecDataset
from recjax.data.errors import check_on_error
from recjax.data.loaders import (amazon2014, amazon2018, generic, lastfm,
                                 lastfm_llara, movielens, recbole, steam)

Loader = Callable[..., RecDataset]

LOADERS: dict[str, Loader] = {
    "movielens": movielens.load,
    "amazon2014": amazon2014.load,
    "amazon2018": amazon2018.load,
    "steam": steam.load,
    "lastfm": lastfm.load,
    "lastfm_llara": lastfm_llara.load,
    "recbole": recbole.load,
    "csv": generic.load_csv,
    "jsonl": generic.load_jsonl,
    "synthetic": synthetic.load,
}
NEEDS_NO_INPUT = frozenset({"synthetic"})


def get_loader(source: str) -> Loader:
  try:
    return LOADERS[source]
  except KeyError:
    raise ValueError(f"unknown data source {source!r}; known sources: "
                     f"{', '.join(sorted(LOADERS))}") from None


def load(source: str, input_path: str | None, on_error: str = "raise",
         **options: Any) -> RecDataset:
  """Loads `input_path` with the loader registered as `source`."""
  loader = get_loader(source)
  check_on_error(on_error)
  if input_path is None and source not in NEEDS_NO_INPUT:
    raise ValueError(f"source {source!r} needs an input path")
  try:
    return loader(None if input_path is None else str(input_path),
                  on_error=on_error, **options)
  except TypeError as e:
    if "unexpected keyword argument" in str(e):
      raise TypeError(f"{source}: {e}; see the docstring of "
                      f"{loader.__module__} for its options") from None
    raise
