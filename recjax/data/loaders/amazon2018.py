"""Amazon reviews 2018 (Ni et al.): 5-core reviews + JSON metadata.

  <Category>_5.json.gz       JSON lines: reviewerID, asin, overall,
                             unixReviewTime (other fields ignored)
  meta_<Category>.json.gz    JSON lines: asin, title, category (list: one
                             path), brand, description (list of str, joined
                             with spaces), price (a string like "$9.99";
                             ranges take the lower end; unparseable -> None)

Input: the directory holding both (the single category present, or
`category=`), or the reviews file itself (metadata beside it). HTML entities
are unescaped. Only metadata of reviewed asins is parsed unless
`all_meta=True`.
"""
from __future__ import annotations

from recjax.data.dataset import RecDataset
from recjax.data.errors import ErrorPolicy
from recjax.data.loaders import _amazon, _io

REVIEW_GLOB = "*_5.json*"
REVIEW_RE = r"(?!meta_)(.+)_5\.json(?:\.gz)?"


def _meta_names(category: str) -> list[str]:
  return [f"meta_{category}.json.gz", f"meta_{category}.json"]


def _convert(rec: dict) -> dict:
  cats = rec.get("category") or []
  if isinstance(cats, str):
    cats = [cats]
  return {"title": _amazon.unescape(rec.get("title")),
          "categories": [_amazon.unescape(c) for c in cats],
          "brand": _amazon.unescape(rec.get("brand")),
          "description": _amazon.unescape(rec.get("description")),
          "price": rec.get("price")}


def load(input_path: str, *, on_error: str = "raise", category: str | None = None,
         missing_title: str = "skip", all_meta: bool = False) -> RecDataset:
  reviews, meta, category = _amazon.resolve_files(
      input_path, category, review_glob=REVIEW_GLOB, review_re=REVIEW_RE,
      meta_name=_meta_names)
  return _amazon.load(f"amazon2018_{category}", reviews, meta,
                      ErrorPolicy(on_error), "json", _convert,
                      missing_title, _io.as_bool(all_meta))
