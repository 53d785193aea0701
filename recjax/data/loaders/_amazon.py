"""What the Amazon 2014 and 2018 review dumps share: reviews, then metadata."""
from __future__ import annotations

import html
import pathlib
import re
from typing import Callable, Optional

from recjax.data.dataset import DatasetBuilder, RecDataset
from recjax.data.errors import ErrorPolicy
from recjax.data.loaders import _io

_ASIN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


def resolve_files(input_path: str, category: Optional[str], *,
                  review_glob: str, review_re: str,
                  meta_name: Callable[[str], list[str]]
                  ) -> tuple[pathlib.Path, pathlib.Path, str]:
  """(reviews file, meta file, category) from a directory or a reviews file."""
  path = pathlib.Path(input_path)
  if path.is_file():
    reviews = path
    m = re.fullmatch(review_re, reviews.name)
    if not m:
      raise ValueError(f"{reviews}: not a reviews file name (expected "
                       f"{review_glob.replace('*', '<Category>')})")
    category = m.group(1)
    directory = reviews.parent
  elif path.is_dir():
    directory = path
    if category:
      reviews = _io.find_one(directory, [review_glob.replace("*", category, 1)],
                             "reviews")
    else:
      hits = sorted(p for p in directory.glob(review_glob)
                    if re.fullmatch(review_re, p.name))
      if len(hits) != 1:
        raise ValueError(
            f"{directory}: {'no' if not hits else 'several'} reviews files "
            f"({review_glob}); {[h.name for h in hits]} - pass category=")
      reviews = hits[0]
      category = re.fullmatch(review_re, reviews.name).group(1)
  else:
    raise FileNotFoundError(f"{path}: no such file or directory")
  meta = _io.find_one(directory, meta_name(category), "metadata")
  return reviews, meta, category


def read_reviews(path, b: DatasetBuilder, policy: ErrorPolicy) -> None:
  """reviewerID, asin, overall, unixReviewTime from JSON lines."""
  for lineno, rec in _io.iter_records(path, policy, "json"):
    user = _io.field_value(policy, path, lineno, rec, "reviewerID")
    if user is _io.SKIP:
      continue
    item = _io.field_value(policy, path, lineno, rec, "asin")
    if item is _io.SKIP:
      continue
    rating = _io.field_value(policy, path, lineno, rec, "overall",
                             _io.parse_rating, "bad_rating")
    if rating is _io.SKIP:
      continue
    ts = _io.field_value(policy, path, lineno, rec, "unixReviewTime",
                         _io.parse_timestamp, "bad_timestamp")
    if ts is _io.SKIP:
      continue
    b.add_interaction(user, item, ts, rating, path=path, line=lineno)


def read_meta(path, b: DatasetBuilder, policy: ErrorPolicy, kind: str,
              convert: Callable[[dict], dict], needed: set[str] | None) -> None:
  """Adds catalogue entries; with `needed`, only those asins are parsed.

  Metadata dumps are far larger than the 5-core review files, and parsing a
  Python literal is slow, so lines whose asin is not reviewed are skipped by
  a cheap regex before parsing (they would be dropped as never interacted).
  """
  def keep_line(text: str) -> bool:
    m = _ASIN.search(text)
    return m is None or m.group(1) in needed

  for lineno, rec in _io.iter_records(
      path, policy, kind, keep_line=None if needed is None else keep_line):
    asin = _io.field_value(policy, path, lineno, rec, "asin")
    if asin is _io.SKIP:
      continue
    fields = convert(rec)
    b.add_item(asin, **fields)


def unescape(text) -> Optional[str]:
  if text is None:
    return None
  if isinstance(text, (list, tuple)):
    text = " ".join(str(t) for t in text if t)
  return html.unescape(str(text)).strip() or None


def load(name: str, reviews, meta, policy: ErrorPolicy, kind: str,
         convert: Callable[[dict], dict], missing_title: str,
         all_meta: bool) -> RecDataset:
  b = DatasetBuilder(name, policy, missing_title=missing_title)
  b.meta.update(reviews=str(reviews), metadata=str(meta))
  read_reviews(reviews, b, policy)
  needed = None if all_meta else set(b.referenced_item_ids())
  read_meta(meta, b, policy, kind, convert, needed)
  return b.build(item_field="asin")
