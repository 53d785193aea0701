"""RecBole atomic files: `<name>.inter` and `<name>.item` (TSV, `field:type` headers).

  .inter  user_id, item_id, optional rating, optional timestamp (float or
          numeric token). Without a timestamp column, file order is the order
          (timestamps 0, 1, 2, ... per file row).
  .item   item_id plus any of the common RecBole field names, mapped:
            title        title, movie_title, item_name, name, artist_name,
                         app_name, book_title
            categories   class, categories, category, genre, genres
                         (token_seq: whitespace-separated tokens; token: one)
            brand        brand, developer, publisher, author
            price        price
            description  description, desc
          With `year_in_title=True` (default) and a `release_year` /`year`
          column, the title becomes "Title (1995)" as in the original
          MovieLens files (disambiguates remakes).
          Without an .item file the catalogue is implicit: title = item id.

Input: the directory (`<dir>/<dir name>.inter`, or the single .inter in it)
or the .inter file.
"""
from __future__ import annotations

import pathlib

from recjax.data.dataset import DatasetBuilder, RecDataset
from recjax.data.errors import DataError, ErrorPolicy
from recjax.data.loaders import _io

TITLE = ("title", "movie_title", "item_name", "name", "artist_name",
         "app_name", "book_title")
CATEGORIES = ("class", "categories", "category", "genre", "genres")
BRAND = ("brand", "developer", "publisher", "author")
PRICE = ("price",)
DESCRIPTION = ("description", "desc")
YEAR = ("release_year", "year")


def _header(path, text: str) -> tuple[list[str], list[str]]:
  names, types = [], []
  for col in text.split("\t"):
    name, sep, typ = col.strip().partition(":")
    if not sep or not name:
      raise DataError(path, 1, col.strip() or None,
                      "RecBole header column must be `name:type`")
    names.append(name)
    types.append(typ)
  return names, types


def _pick(names: list[str], candidates) -> int | None:
  for c in candidates:
    if c in names:
      return names.index(c)
  return None


def _table(path, policy):
  """Yields (line, header names, header types, fields) for the data rows."""
  names = types = None
  for lineno, text in _io.iter_lines(path, policy, header=True):
    if names is None:
      names, types = _header(path, text)
      continue
    parts = text.split("\t")
    if len(parts) != len(names):
      policy.error(path, lineno, None, f"expected {len(names)} tab-separated "
                   f"fields, got {len(parts)}", "malformed_line")
      continue
    yield lineno, names, types, parts


def load(input_path: str, *, on_error: str = "raise",
         missing_title: str = "skip", year_in_title: bool = True) -> RecDataset:
  path = pathlib.Path(input_path)
  if path.is_dir():
    inter = path / f"{path.name}.inter"
    if not inter.is_file():
      inter = _io.find_one(path, ["*.inter"], "RecBole .inter")
  else:
    inter = path
  item_file = inter.with_suffix(".item")
  policy = ErrorPolicy(on_error)
  b = DatasetBuilder(inter.stem, policy, missing_title=missing_title,
                     implicit_items=not item_file.is_file())
  b.meta.update(inter=str(inter),
                item=str(item_file) if item_file.is_file() else None)
  if item_file.is_file():
    _read_items(item_file, b, policy, _io.as_bool(year_in_title))
  if not _read_inter_fast(inter, b):
    _read_inter(inter, b, policy)
  return b.build(item_field="item_id")


def _inter_columns(names: list[str]) -> dict[str, int | None]:
  return {k: _pick(names, c) for k, c in (
      ("user", ("user_id",)), ("item", ("item_id",)),
      ("rating", ("rating",)), ("time", ("timestamp",)))}


def _read_inter_fast(inter, b: DatasetBuilder) -> bool:
  """The whole .inter at numpy speed if it is clean (see `_io.add_fast`)."""
  head = _io.first_line(inter).split("\t")
  if not all(":" in h for h in head):
    return False  # the line-by-line reader names the bad header column
  cols = _inter_columns([h.partition(":")[0].strip() for h in head])
  if cols["user"] is None or cols["item"] is None:
    return False
  return _io.add_fast(b, inter, "\t", len(head), cols["user"], cols["item"],
                      cols["time"], cols["rating"], header=True,
                      quote_free=False)


def _read_inter(inter, b: DatasetBuilder, policy) -> None:
  cols = None
  for lineno, names, types, parts in _table(inter, policy):
    del types
    if cols is None:
      cols = _inter_columns(names)
      for k, field in (("user", "user_id"), ("item", "item_id")):
        if cols[k] is None:
          raise DataError(inter, 1, field, "no such column in the header")
    user, item = parts[cols["user"]].strip(), parts[cols["item"]].strip()
    if not user or not item:
      field = "user_id" if not user else "item_id"
      policy.error(inter, lineno, field, "missing", f"missing_field:{field}")
      continue
    rating = None
    if cols["rating"] is not None:
      try:
        rating = _io.parse_rating(parts[cols["rating"]])
      except ValueError:
        policy.error(inter, lineno, "rating", "not a number: "
                     f"{parts[cols['rating']]!r}", "bad_rating")
        continue
    if cols["time"] is not None:
      try:
        ts = _io.parse_timestamp(parts[cols["time"]])
      except ValueError:
        policy.error(inter, lineno, "timestamp", "not a time: "
                     f"{parts[cols['time']]!r}", "bad_timestamp")
        continue
    else:
      ts = float(lineno)
    b.add_interaction(user, item, ts, rating, path=inter, line=lineno)


def _getter(cols, parts):
  return lambda k: None if cols[k] is None else parts[cols[k]].strip()


def _read_items(path, b: DatasetBuilder, policy, year_in_title: bool) -> None:
  cols = None
  for lineno, names, types, parts in _table(path, policy):
    if cols is None:
      if "item_id" not in names:
        raise DataError(path, 1, "item_id", "no such column in the header")
      cols = {"id": names.index("item_id"), "title": _pick(names, TITLE),
              "cat": _pick(names, CATEGORIES), "brand": _pick(names, BRAND),
              "price": _pick(names, PRICE), "desc": _pick(names, DESCRIPTION),
              "year": _pick(names, YEAR) if year_in_title else None}
    get = _getter(cols, parts)
    iid = get("id")
    if not iid:
      policy.error(path, lineno, "item_id", "missing", "missing_field:item_id")
      continue
    title = get("title")
    year = get("year")
    if title and year:
      title = f"{title} ({year})"
    cats = get("cat")
    if cats and types[cols["cat"]] == "token_seq":
      cats = cats.split()
    else:
      cats = [cats] if cats else []
    b.add_item(iid, title, cats, get("brand"), get("desc"), get("price"))
