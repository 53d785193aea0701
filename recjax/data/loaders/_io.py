"""Shared reading helpers for the loaders: lines, records, timestamps, numbers.

Everything here reports bad input through an `ErrorPolicy`, so file, line and
field are named the same way by every loader.
"""
from __future__ import annotations

import ast
import datetime
import gzip
import json
import math
import os
import pathlib
import re
from typing import Any, Callable, Iterator, Optional

import numpy as np

from recjax.data.errors import DataError, ErrorPolicy

SKIP = object()  # sentinel returned by parsers when a record was skipped


def open_binary(path: str | os.PathLike):
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file")
  if path.name.endswith(".gz"):
    return gzip.open(path, "rb")
  return open(path, "rb")


def iter_lines(path: str | os.PathLike, policy: ErrorPolicy, *,
               encoding: str = "utf-8", header: bool = False,
               fallback_encoding: Optional[str] = None
               ) -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, text without newline) for non-blank lines.

  An empty file (no non-blank line, or only a header) is always a DataError.
  Undecodable bytes are `bad_encoding` errors unless `fallback_encoding` is
  given (then the line is decoded with it; for files that mix encodings).
  With `header=True` the first line is yielded too and the caller handles it.
  """
  seen = 0
  with open_binary(path) as f:
    for lineno, raw in enumerate(f, 1):
      try:
        text = raw.decode(encoding)
      except UnicodeDecodeError as e:
        if fallback_encoding:
          text = raw.decode(fallback_encoding)
        else:
          policy.error(path, lineno, None,
                       f"not valid {encoding} (byte {e.start})", "bad_encoding")
          seen += 1
          continue
      text = text.rstrip("\r\n")
      if lineno == 1 and text.startswith("\ufeff"):
        text = text[1:]
      if not text.strip():
        continue
      seen += 1
      yield lineno, text
  if seen <= (1 if header else 0):
    raise DataError(path, None, None, "empty file" if not seen else
                    "no records after the header")


def parse_record(text: str, kind: str) -> Any:
  """One JSON ('json') or Python-literal ('literal') record; raises ValueError."""
  if kind == "json":
    try:
      return json.loads(text)
    except RecursionError as e:
      raise ValueError(str(e)) from None
  if kind == "literal":
    try:
      return ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as e:
      raise ValueError(str(e)) from None
  raise ValueError(f"unknown record kind {kind!r}")


def iter_records(path: str | os.PathLike, policy: ErrorPolicy, kind: str, *,
                 keep_line: Callable[[str], bool] | None = None,
                 **kw) -> Iterator[tuple[int, dict]]:
  """Yields (line, dict) from JSON-lines or Python-literal-lines files.

  `keep_line(text)` False skips a line before parsing (a cheap prefilter).
  """
  for lineno, text in iter_lines(path, policy, **kw):
    if keep_line is not None and not keep_line(text):
      continue
    try:
      rec = parse_record(text, kind)
    except ValueError as e:
      policy.error(path, lineno, None,
                   f"not a {'JSON' if kind == 'json' else 'Python literal'} "
                   f"record ({str(e)[:80]})", "malformed_line")
      continue
    if not isinstance(rec, dict):
      policy.error(path, lineno, None, "not a record (expected an object)",
                   "malformed_line")
      continue
    yield lineno, rec


_ISO_DATE = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})$")


def parse_timestamp(value: Any) -> float:
  """Unix seconds from a number, a numeric string or an ISO date/datetime.

  Dates and naive datetimes are taken as UTC. Raises ValueError otherwise.
  """
  if value is None or isinstance(value, bool):
    raise ValueError("no timestamp")
  if isinstance(value, (int, float)):
    v = float(value)
  else:
    text = str(value).strip()
    try:
      v = float(text)
    except ValueError:
      m = _ISO_DATE.match(text)
      if m:
        dt = datetime.datetime(int(m[1]), int(m[2]), int(m[3]),
                               tzinfo=datetime.timezone.utc)
      else:
        dt = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if dt.tzinfo is None:
          dt = dt.replace(tzinfo=datetime.timezone.utc)
      v = dt.timestamp()
  if not math.isfinite(v):
    raise ValueError(f"not a finite time: {value!r}")
  return v


def parse_rating(value: Any) -> float:
  if value is None or isinstance(value, bool):
    raise ValueError("no rating")
  v = float(value)
  if not math.isfinite(v):
    raise ValueError(f"not a finite rating: {value!r}")
  return v


def field_value(policy: ErrorPolicy, path, line: int, rec: dict, field: str,
                parse: Callable[[Any], Any] | None = None,
                reason: str | None = None, required: bool = True) -> Any:
  """rec[field] parsed; on a missing/bad value reports and returns SKIP.

  Missing -> `missing_field:<field>`; unparseable -> `reason` (for example
  `bad_timestamp`). With required=False a missing value returns None.
  """
  value = rec.get(field)
  if value is None or (isinstance(value, str) and not value.strip()):
    if not required:
      return None
    policy.error(path, line, field, "missing", f"missing_field:{field}")
    return SKIP
  if parse is None:
    return value
  try:
    return parse(value)
  except (ValueError, TypeError, OverflowError):
    policy.error(path, line, field, f"cannot parse {str(value)[:40]!r}",
                 reason or f"bad_field:{field}")
    return SKIP


def find_one(directory: pathlib.Path, patterns: list[str],
             what: str) -> pathlib.Path:
  """The single file in `directory` matching the first pattern that matches."""
  for pattern in patterns:
    hits = sorted(directory.glob(pattern))
    if len(hits) == 1:
      return hits[0]
    if len(hits) > 1:
      raise ValueError(f"{directory}: several {what} files match {pattern!r}: "
                       f"{[h.name for h in hits]}; pass the file itself")
  raise FileNotFoundError(f"{directory}: no {what} file (looked for "
                          f"{', '.join(patterns)})")


def as_bool(value: Any) -> bool:
  if isinstance(value, str):
    return value.strip().lower() in ("1", "true", "yes", "y", "on")
  return bool(value)


def first_line(path: str | os.PathLike, encoding: str = "utf-8") -> str:
  """The first line of a file (for headers), decoded leniently."""
  with open_binary(path) as f:
    return f.readline().decode(encoding, errors="replace").rstrip("\r\n")


def split_clean(raw: bytes, sep: str, ncols: int, *, encoding: str = "utf-8",
                quote_free: bool = True) -> Optional[list[list[str]]]:
  """Columns (lists of str) of newline-terminated data lines, or None if not clean.

  Clean means: decodes, every line has exactly `ncols` fields (so no blank
  lines), no whitespace other than the separator and newlines, no carriage
  returns, and no quotes when `quote_free`.
  """
  if not raw or b"\r" in raw or (quote_free and b'"' in raw):
    return None
  buf = np.frombuffer(raw, np.uint8)
  sep_b = sep.encode("ascii")
  is_sep = buf == sep_b[0]
  for k in range(1, len(sep_b)):
    is_sep[:-k] &= buf[k:] == sep_b[k]
    is_sep[-k:] = False
  newlines = np.flatnonzero(buf == 10)
  per_line = np.diff(np.searchsorted(np.flatnonzero(is_sep), newlines),
                     prepend=0)
  if np.any(per_line != ncols - 1):
    return None
  try:
    text = raw.decode(encoding)
  except UnicodeDecodeError:
    return None
  spaces = "".join(c for c in " \t\v\f" if c != sep)
  if re.search(f"[{re.escape(spaces)}]", text):
    return None
  tokens = text.replace("\n", sep).split(sep)
  tokens.pop()  # after the final newline
  if len(tokens) != ncols * len(newlines):
    return None
  return [tokens[c::ncols] for c in range(ncols)]


def fast_chunks(path: str | os.PathLike, sep: str, ncols: int, *,
                header: bool = False, encoding: str = "utf-8",
                quote_free: bool = True, chunk_bytes: int = 1 << 25
                ) -> Iterator[tuple[int, Optional[list[list[str]]]]]:
  """Yields (first line number, columns or None if that chunk is not clean).

  Chunks are about `chunk_bytes` of whole lines, so memory stays bounded on
  logs of tens of millions of lines. Yields (0, None) for a file without
  data lines.
  """
  with open_binary(path) as f:
    line = 1
    if header:
      f.readline()
      line = 2
    any_data = False
    while True:
      raw = f.read(chunk_bytes)
      if not raw:
        break
      if not raw.endswith(b"\n"):
        raw += f.readline()
        if not raw.endswith(b"\n"):
          raw += b"\n"
      if line <= 2 and raw.startswith(b"\xef\xbb\xbf"):
        yield line, None
        return
      any_data = True
      cols = split_clean(raw, sep, ncols, encoding=encoding,
                         quote_free=quote_free)
      yield line, cols
      if cols is None:
        return
      line += len(cols[0])
    if not any_data:
      yield 0, None


def floats_or_none(values: list[str]) -> Optional[np.ndarray]:
  """float64 array if every value parses as a finite number, else None."""
  try:
    arr = np.asarray(values, dtype=np.float64)
  except (ValueError, TypeError):
    return None
  return arr if np.all(np.isfinite(arr)) else None


def ids_or_none(values: list[str]) -> Optional[list[str]]:
  """The ids if none is empty, else None (`fast_columns` rules out spaces)."""
  return values if all(values) else None


def add_fast(b, path, sep: str, ncols: int, user: int, item: int,
             time: Optional[int], rating: Optional[int], *, header: bool,
             encoding: str = "utf-8", quote_free: bool = True,
             chunk_bytes: int = 1 << 25) -> bool:
  """Bulk-adds a clean delimited log to `b`; False (nothing added) if not clean.

  The fast path for big logs: whole columns are parsed with numpy, in
  chunks. `time`/`rating` are column numbers or None (no time: file order,
  i.e. the line number; no rating: NaN). If any chunk is not clean the
  builder is rolled back and the caller reads the file line by line, which
  names each bad record's line and field under the error policy.
  """
  if not sep or not sep.isascii() or "\n" in sep:
    return False
  mark = b.checkpoint()
  for line, columns in fast_chunks(path, sep, ncols, header=header,
                                   encoding=encoding, quote_free=quote_free,
                                   chunk_bytes=chunk_bytes):
    ok = columns is not None
    if ok:
      users, items = ids_or_none(columns[user]), ids_or_none(columns[item])
      n = len(columns[user])
      ts = (np.arange(line, line + n, dtype=np.float64) if time is None
            else floats_or_none(columns[time]))
      ratings = None if rating is None else floats_or_none(columns[rating])
      ok = (users is not None and items is not None and ts is not None and
            (rating is None or ratings is not None))
    if not ok:
      b.rollback(mark)
      return False
    b.add_interactions(users, items, ts, ratings, path=path, first_line=line)
  return True
