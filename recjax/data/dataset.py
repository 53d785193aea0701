"""RecDataset: a catalogue plus an interaction log, in columns.

Loaders produce a `RecDataset`; `recjax.data.prepare` filters and re-indexes
it into a `PreparedData`. Both halves are columnar so that a log of millions
of interactions loads and filters with numpy, never a per-row Python loop:

  catalogue     item_ids, titles, categories, brands, descriptions, prices
                (parallel lists, one entry per item, in catalogue order)
  interactions  users int32[N] (index into user_ids), items int32[N] (index
                into item_ids), timestamps float64[N] (unix seconds, or a
                synthetic increasing order where the source has no time),
                ratings float32[N] (NaN where the source has no rating);
                rows stay in file order, which breaks timestamp ties.

`skipped` counts records dropped under the error policy (and policy drops
such as items without a title), by reason; see `recjax.data.errors`.

`DatasetBuilder` is what loaders use: they add items and interactions in any
order (interactions name items by their source id), and `build()` resolves
ids, applies the unknown-item and missing-title policies, and checks that
something is left.
"""
from __future__ import annotations

import array
import collections
import dataclasses
import math
import os
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from recjax.data.errors import DataError, ErrorPolicy

MISSING_TITLE = ("skip", "id")


@dataclasses.dataclass
class RecDataset:
  """A catalogue and an interaction log; see the module docstring."""
  name: str
  item_ids: list[str]
  titles: list[str]
  categories: list[list[str]]
  brands: list[Optional[str]]
  descriptions: list[Optional[str]]
  prices: list[Optional[float]]
  user_ids: list[str]
  users: np.ndarray  # int32[N]
  items: np.ndarray  # int32[N]
  timestamps: np.ndarray  # float64[N]
  ratings: np.ndarray  # float32[N], NaN = unknown
  skipped: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.users = np.asarray(self.users, np.int32)
    self.items = np.asarray(self.items, np.int32)
    self.timestamps = np.asarray(self.timestamps, np.float64)
    self.ratings = np.asarray(self.ratings, np.float32)
    self.skipped = collections.Counter(self.skipped)
    n_items = len(self.item_ids)
    for field in ("titles", "categories", "brands", "descriptions", "prices"):
      if len(getattr(self, field)) != n_items:
        raise ValueError(f"{self.name}: {field} has {len(getattr(self, field))} "
                         f"entries for {n_items} items")
    n = len(self.users)
    for field in ("items", "timestamps", "ratings"):
      if getattr(self, field).shape != (n,):
        raise ValueError(f"{self.name}: {field} must have shape ({n},)")
    if n and (self.items.min() < 0 or self.items.max() >= n_items):
      raise ValueError(f"{self.name}: item index out of range [0, {n_items})")
    if n and (self.users.min() < 0 or self.users.max() >= len(self.user_ids)):
      raise ValueError(f"{self.name}: user index out of range")

  @property
  def num_items(self) -> int:
    return len(self.item_ids)

  @property
  def num_users(self) -> int:
    return len(self.user_ids)

  @property
  def num_interactions(self) -> int:
    return len(self.users)

  def item(self, index: int) -> dict[str, Any]:
    """One catalogue entry as a dict with `recjax.data.prepared.ITEM_FIELDS` keys."""
    return {"id": self.item_ids[index], "title": self.titles[index],
            "categories": list(self.categories[index]),
            "brand": self.brands[index],
            "description": self.descriptions[index],
            "price": self.prices[index]}

  def counts(self) -> dict[str, int]:
    """Users and items that occur in the log, and the number of interactions."""
    return {"users": int(len(np.unique(self.users))),
            "items": int(len(np.unique(self.items))),
            "interactions": self.num_interactions}

  def select(self, mask: np.ndarray) -> "RecDataset":
    """The same catalogue and users with only the interactions where `mask`."""
    return dataclasses.replace(
        self, users=self.users[mask], items=self.items[mask],
        timestamps=self.timestamps[mask], ratings=self.ratings[mask],
        skipped=collections.Counter(self.skipped), meta=dict(self.meta))

  @classmethod
  def from_records(cls, name: str, items: Sequence[dict[str, Any]],
                   interactions: Iterable[Sequence[Any]]) -> "RecDataset":
    """Small datasets from dicts and (user, item_id, timestamp[, rating]) tuples."""
    b = DatasetBuilder(name)
    for it in items:
      b.add_item(it["id"], it.get("title"), it.get("categories"),
                 it.get("brand"), it.get("description"), it.get("price"))
    for row in interactions:
      b.add_interaction(row[0], row[1], row[2],
                        row[3] if len(row) > 3 else None)
    return b.build()


def clean_text(value: Any) -> Optional[str]:
  """A stripped string, or None for None/empty/whitespace."""
  if value is None:
    return None
  text = str(value).strip()
  return text or None


def clean_price(value: Any) -> Optional[float]:
  """A non-negative float price, or None if it does not parse.

  Accepts numbers and strings like "$9.99" or "1,299.00"; a range like
  "$9.99 - $19.99" takes its lower end. Prices are optional metadata, so an
  unparseable price is dropped (None), never an error.
  """
  if value is None or isinstance(value, bool):
    return None
  if isinstance(value, (int, float)):
    v = float(value)
  else:
    text = str(value).strip().split(" - ")[0].strip().lstrip("$").replace(",", "")
    if text.lower().startswith("free"):
      return 0.0
    try:
      v = float(text)
    except ValueError:
      return None
  return v if math.isfinite(v) and v >= 0 else None


class DatasetBuilder:
  """Accumulates a catalogue and a log from loaders; `build()` makes a RecDataset.

  Policies, applied here so that every loader behaves the same:
  - Duplicate item ids in the catalogue: the first entry wins; later ones are
    counted as `duplicate_item` (real metadata dumps repeat rows).
  - Items without a title: `missing_title='skip'` (default) drops the item,
    counted `missing_title`, and its interactions, counted
    `item_without_title` (a title-less item cannot appear in a text prompt);
    `missing_title='id'` uses the item id as the title.
  - Interactions whose item is not in the catalogue: a `DataError` naming
    the interaction's file and line (field `item_field`), or under
    on_error='skip' a skip counted `unknown_item`. With `implicit_items=True`
    (sources without an item file) such items are created with the id as
    the title instead.
  - Nothing left: always a `DataError`, whatever the policy.
  """

  def __init__(self, name: str, policy: ErrorPolicy | None = None, *,
               missing_title: str = "skip", implicit_items: bool = False):
    if missing_title not in MISSING_TITLE:
      raise ValueError(f"missing_title must be one of {MISSING_TITLE}, "
                       f"got {missing_title!r}")
    self.name = name
    self.policy = policy or ErrorPolicy("raise")
    self.missing_title = missing_title
    self.implicit_items = implicit_items
    self.meta: dict[str, Any] = {}
    self._item_index: dict[str, int] = {}
    self._untitled: set[str] = set()
    self._item_cols: dict[str, list] = {k: [] for k in (
        "item_ids", "titles", "categories", "brands", "descriptions", "prices")}
    self._user_index: dict[str, int] = {}
    self._key_index: dict[str, int] = {}  # interaction item ids, interned
    self._files: list[str] = []
    self._file_index: dict[str, int] = {}
    self._users = array.array("i")
    self._keys = array.array("i")
    self._ts = array.array("d")
    self._ratings = array.array("f")
    self._file = array.array("i")
    self._line = array.array("q")

  # ---- catalogue ---------------------------------------------------------
  def has_item(self, item_id: str) -> bool:
    return item_id in self._item_index or item_id in self._untitled

  @property
  def num_items(self) -> int:
    return len(self._item_index)

  def add_item(self, item_id: Any, title: Any = None,
               categories: Iterable[Any] | None = None, brand: Any = None,
               description: Any = None, price: Any = None) -> bool:
    """Adds one catalogue entry; returns False if it was dropped by a policy."""
    item_id = str(item_id).strip()
    if self.has_item(item_id):
      self.policy.count("duplicate_item")
      return False
    title = clean_text(title)
    if title is None:
      if self.missing_title == "skip":
        self._untitled.add(item_id)
        self.policy.count("missing_title")
        return False
      title = item_id
    cats = []
    if isinstance(categories, str):
      categories = [categories]
    for c in categories or ():
      c = clean_text(c)
      if c is not None and c not in cats:
        cats.append(c)
    self._item_index[item_id] = len(self._item_index)
    cols = self._item_cols
    cols["item_ids"].append(item_id)
    cols["titles"].append(title)
    cols["categories"].append(cats)
    cols["brands"].append(clean_text(brand))
    cols["descriptions"].append(clean_text(description))
    cols["prices"].append(clean_price(price))
    return True

  # ---- log ---------------------------------------------------------------
  def add_interaction(self, user: Any, item_id: Any, timestamp: float,
                      rating: Optional[float] = None, *,
                      path: str | os.PathLike | None = None,
                      line: int = 0) -> None:
    """Adds one interaction; `path`/`line` are kept for unknown-item errors."""
    users, keys = self._user_index, self._key_index
    u = users.setdefault(str(user), len(users))
    k = keys.setdefault(str(item_id), len(keys))
    p = os.fspath(path) if path is not None else ""
    f = self._file_index.get(p)
    if f is None:
      f = self._file_index[p] = len(self._files)
      self._files.append(p)
    self._users.append(u)
    self._keys.append(k)
    self._ts.append(float(timestamp))
    self._ratings.append(math.nan if rating is None else float(rating))
    self._file.append(f)
    self._line.append(line)

  def add_interactions(self, users: Sequence[str], item_ids: Sequence[str],
                       timestamps: np.ndarray, ratings: np.ndarray | None, *,
                       path: str | os.PathLike, first_line: int) -> None:
    """Adds many interactions from consecutive lines of one file (fast path)."""
    n = len(users)
    user_index, key_index = self._user_index, self._key_index
    for index, values in ((user_index, users), (key_index, item_ids)):
      for x in dict.fromkeys(values):  # new ids in first-appearance order
        if x not in index:
          index[x] = len(index)
    u = np.fromiter(map(user_index.__getitem__, users), np.int32, n)
    k = np.fromiter(map(key_index.__getitem__, item_ids), np.int32, n)
    p = os.fspath(path)
    f = self._file_index.setdefault(p, len(self._files))
    if f == len(self._files):
      self._files.append(p)
    for arr, values in (
        (self._users, u), (self._keys, k),
        (self._ts, np.asarray(timestamps, np.float64)),
        (self._ratings, np.full(n, np.nan, np.float32) if ratings is None
         else np.asarray(ratings, np.float32)),
        (self._file, np.full(n, f, np.int32)),
        (self._line, np.arange(first_line, first_line + n, dtype=np.int64))):
      assert values.itemsize == arr.itemsize and values.shape == (n,)
      arr.frombytes(np.ascontiguousarray(values).tobytes())

  def checkpoint(self) -> tuple[int, int, int, int]:
    """A mark of the log's current size, for `rollback`."""
    return (len(self._users), len(self._user_index), len(self._key_index),
            len(self._files))

  def rollback(self, mark: tuple[int, int, int, int]) -> None:
    """Forgets interactions (and ids first seen) since `checkpoint()`."""
    n, n_users, n_keys, n_files = mark
    for arr in (self._users, self._keys, self._ts, self._ratings, self._file,
                self._line):
      del arr[n:]
    for index, keep in ((self._user_index, n_users), (self._key_index, n_keys),
                        (self._file_index, n_files)):
      for key in list(index)[keep:]:
        del index[key]
    del self._files[n_files:]

  @property
  def num_interactions(self) -> int:
    return len(self._users)

  def referenced_item_ids(self) -> list[str]:
    """Item ids named by the interactions added so far (first-seen order)."""
    return list(self._key_index)

  def build(self, *, item_field: str = "item") -> RecDataset:
    """Resolves item ids and applies the policies in the class docstring."""
    keys = list(self._key_index)
    if self.implicit_items:
      for key in keys:
        if not self.has_item(key):
          self.add_item(key, key)
    # key code -> catalogue index; -1 unknown, -2 dropped for missing title.
    mapping = np.fromiter(
        (self._item_index.get(k, -2 if k in self._untitled else -1)
         for k in keys), np.int64, len(keys))
    key_codes = np.frombuffer(self._keys, np.int32) if len(self._keys) else (
        np.zeros(0, np.int32))
    items = mapping[key_codes] if len(keys) else np.zeros(0, np.int64)
    keep = items >= 0
    unknown = np.flatnonzero(items == -1)
    if len(unknown):
      first = int(unknown[0])
      self.policy.error(
          self._files[self._file[first]] or None, int(self._line[first]),
          item_field, f"unknown item id {keys[key_codes[first]]!r} "
          "(not in the catalogue)", "unknown_item")
      self.policy.count("unknown_item", len(unknown) - 1)
    self.policy.count("item_without_title", int(np.sum(items == -2)))
    users = np.asarray(self._users, np.int32)[keep]
    if not len(users):
      raise DataError(self._files[0] if self._files else None, None, None,
                      f"{self.name}: no interactions left to load "
                      f"(skipped: {dict(self.policy.skipped) or 'none'})")
    # Re-number users that lost all their interactions away.
    used, users = np.unique(users, return_inverse=True)
    all_users = list(self._user_index)
    user_ids = [all_users[u] for u in used]
    # np.unique sorts codes, and codes are first-appearance order, so user
    # order stays first appearance in the file.
    cols = self._item_cols
    return RecDataset(
        name=self.name, item_ids=cols["item_ids"], titles=cols["titles"],
        categories=cols["categories"], brands=cols["brands"],
        descriptions=cols["descriptions"], prices=cols["prices"],
        user_ids=user_ids, users=users.astype(np.int32),
        items=items[keep].astype(np.int32),
        timestamps=np.asarray(self._ts, np.float64)[keep],
        ratings=np.asarray(self._ratings, np.float32)[keep],
        skipped=self.policy.skipped, meta=dict(self.meta))
