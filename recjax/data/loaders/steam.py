"""Steam (Kang & McAuley, SASRec's preprocessing): Python-literal lines, both files.

  steam_reviews.json.gz  username, product_id, date ('YYYY-MM-DD'), ... ;
                         no ratings (NaN)
  steam_games.json.gz    id, app_name (or title), genres (or tags),
                         developer (or publisher) -> brand, price (a number;
                         'Free to Play' and similar -> 0.0; other text -> None)

Input: the directory holding both. Reviews on the same date keep file order.
As in SASRec, the user is `username`. Games without an `id` are malformed
(`missing_field:id`).
"""
from __future__ import annotations

import pathlib

from recjax.data.dataset import DatasetBuilder, RecDataset
from recjax.data.errors import ErrorPolicy
from recjax.data.loaders import _io


def load(input_path: str, *, on_error: str = "raise",
         missing_title: str = "skip") -> RecDataset:
  directory = pathlib.Path(input_path)
  if directory.is_file():
    directory = directory.parent
  reviews = _io.find_one(directory, ["steam_reviews.json.gz",
                                     "steam_reviews.json"], "Steam reviews")
  games = _io.find_one(directory, ["steam_games.json.gz", "steam_games.json"],
                       "Steam games")
  policy = ErrorPolicy(on_error)
  b = DatasetBuilder("steam", policy, missing_title=missing_title)
  b.meta.update(reviews=str(reviews), games=str(games))
  for lineno, rec in _io.iter_records(games, policy, "literal"):
    gid = _io.field_value(policy, games, lineno, rec, "id")
    if gid is _io.SKIP:
      continue
    price = rec.get("price")
    if isinstance(price, str) and "free" in price.lower():
      price = 0.0
    b.add_item(gid, rec.get("app_name") or rec.get("title"),
               rec.get("genres") or rec.get("tags") or [],
               rec.get("developer") or rec.get("publisher"), None, price)
  for lineno, rec in _io.iter_records(reviews, policy, "literal"):
    user = _io.field_value(policy, reviews, lineno, rec, "username")
    if user is _io.SKIP:
      continue
    item = _io.field_value(policy, reviews, lineno, rec, "product_id")
    if item is _io.SKIP:
      continue
    ts = _io.field_value(policy, reviews, lineno, rec, "date",
                         _io.parse_timestamp, "bad_timestamp")
    if ts is _io.SKIP:
      continue
    b.add_interaction(user, item, ts, None, path=reviews, line=lineno)
  return b.build(item_field="product_id")
