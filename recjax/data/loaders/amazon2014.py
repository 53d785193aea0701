"""Amazon reviews 2014 (McAuley et al.): 5-core reviews + Python-literal metadata.

  reviews_<Category>_5.json.gz  JSON lines: reviewerID, asin, overall,
                                unixReviewTime (other fields ignored)
  meta_<Category>.json.gz       one Python literal per line (not JSON; read
                                with ast.literal_eval): asin, title,
                                categories [[path], ...], brand, description,
                                price (float)

Input: the directory holding both (the single category present, or
`category=`), or the reviews file itself (metadata beside it). Categories are
all paths flattened, first occurrence order. HTML entities in text are
unescaped. Only metadata of reviewed asins is parsed unless `all_meta=True`.
"""
from __future__ import annotations

from recjax.data.dataset import RecDataset
from recjax.data.errors import ErrorPolicy
from recjax.data.loaders import _amazon, _io

REVIEW_GLOB = "reviews_*_5.json*"
REVIEW_RE = r"reviews_(.+)_5\.json(?:\.gz)?"


def _meta_names(category: str) -> list[str]:
  return [f"meta_{category}.json.gz", f"meta_{category}.json"]


def _convert(rec: dict) -> dict:
  cats = []
  paths = rec.get("categories") or ()
  for path in [paths] if isinstance(paths, str) else paths:
    if isinstance(path, str):
      path = [path]
    for c in path:
      c = _amazon.unescape(c)
      if c and c not in cats:
        cats.append(c)
  return {"title": _amazon.unescape(rec.get("title")), "categories": cats,
          "brand": _amazon.unescape(rec.get("brand")),
          "description": _amazon.unescape(rec.get("description")),
          "price": rec.get("price")}


def load(input_path: str, *, on_error: str = "raise", category: str | None = None,
         missing_title: str = "skip", all_meta: bool = False) -> RecDataset:
  reviews, meta, category = _amazon.resolve_files(
      input_path, category, review_glob=REVIEW_GLOB, review_re=REVIEW_RE,
      meta_name=_meta_names)
  return _amazon.load(f"amazon2014_{category}", reviews, meta,
                      ErrorPolicy(on_error), "literal", _convert,
                      missing_title, _io.as_bool(all_meta))
