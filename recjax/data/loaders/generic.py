"""Generic logs: CSV (`csv`) or JSON lines (`jsonl`), with a column mapping.

Interactions file (the input path), one interaction per row/line:
  columns="user=uid,item=iid,time=ts,rating=stars"   (or a dict)
Roles and their default column names (first one present wins):
  user    user, user_id, userId, uid
  item    item, item_id, itemId, iid
  time    time, timestamp, ts, date     numbers (unix seconds) or ISO dates;
                                        `time=` (empty) means file order
  rating  rating, stars, score          optional
Optional item file: items=PATH (CSV or JSON lines by its extension),
  item_columns="item=id,title=name,categories=genres,brand=maker,..."
Item roles: item (item, item_id, id), title (title, name), categories
(categories, category, genres, genre; a list, or a string split on
`category_sep`, default '|'), brand, description, price.
Without an item file the catalogue is implicit: every item's title is its id.
CSV files need a header row; `delimiter` defaults to ','. Files may be .gz.
"""
from __future__ import annotations

import csv as csv_lib
import io
import pathlib
from typing import Any, Mapping

from recjax.data.dataset import DatasetBuilder, RecDataset
from recjax.data.errors import DataError, ErrorPolicy
from recjax.data.loaders import _io

LOG_ROLES = {"user": ("user", "user_id", "userId", "uid"),
             "item": ("item", "item_id", "itemId", "iid"),
             "time": ("time", "timestamp", "ts", "date"),
             "rating": ("rating", "stars", "score")}
ITEM_ROLES = {"item": ("item", "item_id", "id"), "title": ("title", "name"),
              "categories": ("categories", "category", "genres", "genre"),
              "brand": ("brand",), "description": ("description",),
              "price": ("price",)}
_OPTIONAL = ("rating", "categories", "brand", "description", "price")


def parse_mapping(spec: str | Mapping[str, str] | None,
                  roles: Mapping[str, Any]) -> dict[str, str]:
  """'user=uid,item=iid' -> {'user': 'uid', 'item': 'iid'}; checks role names."""
  if spec is None:
    return {}
  if isinstance(spec, str):
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
      role, sep, col = part.partition("=")
      if not sep:
        raise ValueError(f"column mapping {part!r}: expected role=column")
      out[role.strip()] = col.strip()
  else:
    out = dict(spec)
  unknown = set(out) - set(roles)
  if unknown:
    raise ValueError(f"unknown roles {sorted(unknown)} in column mapping; "
                     f"known: {sorted(roles)}")
  return out


def _resolve(mapping: dict[str, str], roles, available) -> dict[str, str | None]:
  """role -> column name (None = absent); `available` = header or None (jsonl)."""
  out = {}
  for role, candidates in roles.items():
    if role in mapping:
      out[role] = mapping[role] or None
    elif available is None:
      out[role] = candidates  # decided per record
    else:
      out[role] = next((c for c in candidates if c in available), None)
  return out


def _rows(path, policy, fmt: str, delimiter: str):
  """Yields (line, dict) for CSV (header required) or JSON lines."""
  if fmt == "jsonl":
    yield from _io.iter_records(path, policy, "json")
    return
  header = None
  for lineno, text in _io.iter_lines(path, policy, header=True):
    try:
      row = next(csv_lib.reader(io.StringIO(text), delimiter=delimiter))
    except (csv_lib.Error, StopIteration) as e:
      policy.error(path, lineno, None, f"not a CSV row ({e})", "malformed_line")
      continue
    if header is None:
      header = [h.strip() for h in row]
      yield 0, {"__header__": header}
      continue
    if len(row) != len(header):
      policy.error(path, lineno, None, f"expected {len(header)} fields, got "
                   f"{len(row)}", "malformed_line")
      continue
    yield lineno, dict(zip(header, row))


def _check_mapped(path, mapping: dict[str, str], header: list[str]) -> None:
  for role, col in mapping.items():
    if col and col not in header:
      raise DataError(path, 1, col, f"no such column (mapped to {role!r}); "
                      f"the header has {header}")


def _get(rec: dict, col):
  if col is None:
    return None
  if isinstance(col, tuple):
    col = next((c for c in col if c in rec), None)
    if col is None:
      return None
  return rec.get(col)


def _field_name(col, role):
  return col if isinstance(col, str) else role


def _format_of(path: pathlib.Path) -> str:
  name = path.name.lower().removesuffix(".gz")
  return "jsonl" if name.endswith((".jsonl", ".json", ".ndjson")) else "csv"


def _load(fmt: str, input_path: str, *, on_error: str, columns=None,
          items: str | None = None, item_columns=None, delimiter: str = ",",
          category_sep: str = "|", missing_title: str = "skip",
          name: str | None = None) -> RecDataset:
  path = pathlib.Path(input_path)
  if not path.is_file():
    raise FileNotFoundError(f"{fmt}: input must be the interactions file; "
                            f"{path} is not a file")
  mapping = parse_mapping(columns, LOG_ROLES)
  item_mapping = parse_mapping(item_columns, ITEM_ROLES)
  policy = ErrorPolicy(on_error)
  stem = path.name.split(".")[0]
  b = DatasetBuilder(name or stem, policy, missing_title=missing_title,
                     implicit_items=items is None)
  if items is not None:
    _read_items(pathlib.Path(items), item_mapping, b, policy, delimiter,
                category_sep)
  if fmt == "csv":
    fast_item_column = _read_csv_fast(path, mapping, delimiter, b)
    if fast_item_column:
      return b.build(item_field=fast_item_column)
  cols = None if fmt == "csv" else _resolve(mapping, LOG_ROLES, None)
  for lineno, rec in _rows(path, policy, fmt, delimiter):
    if "__header__" in rec:
      cols = _resolve(mapping, LOG_ROLES, rec["__header__"])
      _check_mapped(path, mapping, rec["__header__"])
      for role in ("user", "item", "time"):
        if cols[role] is None and not (role == "time" and role in mapping):
          raise DataError(path, 1, mapping.get(role, role),
                          f"no {role} column (map one with columns='"
                          f"{role}=<column>'"
                          + (", or 'time=' for file order)" if role == "time"
                             else ")"))
      continue
    vals = {}
    ok = True
    for role in ("user", "item", "time", "rating"):
      col = cols[role]
      if col is None:
        vals[role] = None
        continue
      v = _get(rec, col)
      if v is None or (isinstance(v, str) and not v.strip()):
        if role in _OPTIONAL:
          vals[role] = None
          continue
        field = _field_name(col, role)
        policy.error(path, lineno, field, "missing", f"missing_field:{field}")
        ok = False
        break
      vals[role] = v
    if not ok:
      continue
    if cols["time"] is None:
      ts = float(lineno)
    else:
      try:
        ts = _io.parse_timestamp(vals["time"])
      except (ValueError, TypeError, OverflowError):
        policy.error(path, lineno, _field_name(cols["time"], "time"),
                     f"not a time: {str(vals['time'])[:40]!r}", "bad_timestamp")
        continue
    rating = None
    if vals["rating"] is not None:
      try:
        rating = _io.parse_rating(vals["rating"])
      except (ValueError, TypeError):
        policy.error(path, lineno, _field_name(cols["rating"], "rating"),
                     f"not a number: {str(vals['rating'])[:40]!r}",
                     "bad_rating")
        continue
    b.add_interaction(str(vals["user"]).strip(), str(vals["item"]).strip(), ts,
                      rating, path=path, line=lineno)
  return b.build(item_field=_field_name(cols["item"], "item") if cols
                 else "item")


def _read_csv_fast(path, mapping, delimiter: str,
                   b: DatasetBuilder) -> str | None:
  """A clean CSV log at numpy speed (see `_io.add_fast`).

  Returns the item column's name, or None (nothing added) if the file is not
  clean and must be read line by line.
  """
  header = [h.strip() for h in _io.first_line(path).split(delimiter)]
  cols = _resolve(mapping, LOG_ROLES, header)
  if any(c and c not in header for c in mapping.values()):
    return None
  if cols["user"] is None or cols["item"] is None or (
      cols["time"] is None and "time" not in mapping):
    return None
  index = lambda role: None if cols[role] is None else header.index(cols[role])
  if _io.add_fast(b, path, delimiter, len(header), index("user"),
                  index("item"), index("time"), index("rating"), header=True):
    return cols["item"]
  return None


def _read_items(path: pathlib.Path, mapping, b: DatasetBuilder, policy,
                delimiter: str, category_sep: str) -> None:
  fmt = _format_of(path)
  cols = None if fmt == "csv" else _resolve(mapping, ITEM_ROLES, None)
  for lineno, rec in _rows(path, policy, fmt, delimiter):
    if "__header__" in rec:
      cols = _resolve(mapping, ITEM_ROLES, rec["__header__"])
      _check_mapped(path, mapping, rec["__header__"])
      if cols["item"] is None:
        raise DataError(path, 1, mapping.get("item", "item"),
                        "no item id column (map one with item_columns="
                        "'item=<column>')")
      continue
    iid = _get(rec, cols["item"])
    if iid is None or not str(iid).strip():
      field = _field_name(cols["item"], "item")
      policy.error(path, lineno, field, "missing", f"missing_field:{field}")
      continue
    cats = _get(rec, cols["categories"])
    if isinstance(cats, str):
      cats = cats.split(category_sep) if category_sep else [cats]
    elif cats is not None and not isinstance(cats, (list, tuple)):
      cats = [cats]
    b.add_item(iid, _get(rec, cols["title"]), cats, _get(rec, cols["brand"]),
               _get(rec, cols["description"]), _get(rec, cols["price"]))


def load_csv(input_path: str, *, on_error: str = "raise", **options) -> RecDataset:
  """A CSV interaction log (header row); see the module docstring for options."""
  return _load("csv", input_path, on_error=on_error, **options)


def load_jsonl(input_path: str, *, on_error: str = "raise",
               **options) -> RecDataset:
  """A JSON-lines interaction log; see the module docstring for options."""
  return _load("jsonl", input_path, on_error=on_error, **options)
