"""Last.fm HetRec 2011 (hetrec2011-lastfm-2k): who listened to which artist.

  user_artists.dat                   header; userID<TAB>artistID<TAB>weight
                                     (play count, kept as `rating`)
  artists.dat                        header; id<TAB>name<TAB>url<TAB>pictureURL
  user_taggedartists-timestamps.dat  optional; header;
                                     userID<TAB>artistID<TAB>tagID<TAB>timestamp (ms)

The listening log has no time. A (user, artist) pair gets the time the user
first tagged that artist (earliest tag, in seconds). Pairs the user never
tagged, with `untagged='after'` (default), come after all of that user's
tagged pairs, most played first (ties: file order), at one-second steps
after the user's last tag time (from 0 for users who never tagged); with
`untagged='drop'` they are dropped and counted `no_timestamp`.

The files are UTF-8 with a few Latin-1 lines; a line that is not UTF-8 is
read as Latin-1 (not an error).
"""
from __future__ import annotations

import pathlib

import numpy as np

from recjax.data.dataset import DatasetBuilder, RecDataset
from recjax.data.errors import ErrorPolicy
from recjax.data.loaders import _io

UNTAGGED = ("after", "drop")


def _rows(path, policy, ncols: int, names: tuple[str, ...]):
  first = True
  for lineno, text in _io.iter_lines(path, policy, header=True,
                                     fallback_encoding="latin-1"):
    if first:
      first = False
      continue
    parts = text.split("\t")
    if len(parts) < ncols:
      policy.error(path, lineno, None, f"expected {ncols} tab-separated "
                   f"fields, got {len(parts)}", "malformed_line")
      continue
    parts = [p.strip() for p in parts]
    bad = next((n for n, p in zip(names, parts) if not p), None)
    if bad:
      policy.error(path, lineno, bad, "missing", f"missing_field:{bad}")
      continue
    yield lineno, parts


def load(input_path: str, *, on_error: str = "raise", untagged: str = "after",
         missing_title: str = "skip") -> RecDataset:
  if untagged not in UNTAGGED:
    raise ValueError(f"lastfm: untagged must be one of {UNTAGGED}")
  directory = pathlib.Path(input_path)
  if directory.is_file():
    directory = directory.parent
  policy = ErrorPolicy(on_error)
  b = DatasetBuilder("lastfm", policy, missing_title=missing_title)
  artists = directory / "artists.dat"
  for _, (aid, name, *_rest) in _rows(artists, policy, 2, ("id", "name")):
    b.add_item(aid, name)

  first_tag: dict[tuple[str, str], float] = {}
  tags = directory / "user_taggedartists-timestamps.dat"
  b.meta["timestamps"] = str(tags) if tags.is_file() else None
  if tags.is_file():
    for lineno, parts in _rows(tags, policy, 4,
                               ("userID", "artistID", "tagID", "timestamp")):
      try:
        ts = _io.parse_timestamp(parts[3]) / 1000.0
      except ValueError:
        policy.error(tags, lineno, "timestamp", f"not a time: {parts[3]!r}",
                     "bad_timestamp")
        continue
      key = (parts[0], parts[1])
      if ts < first_tag.get(key, np.inf):
        first_tag[key] = ts

  path = directory / "user_artists.dat"
  rows = []  # (user, artist, weight, line)
  for lineno, parts in _rows(path, policy, 3, ("userID", "artistID", "weight")):
    try:
      weight = _io.parse_rating(parts[2])
    except ValueError:
      policy.error(path, lineno, "weight", f"not a number: {parts[2]!r}",
                   "bad_rating")
      continue
    rows.append((parts[0], parts[1], weight, lineno))
  last_tag: dict[str, float] = {}
  for (user, _), ts in first_tag.items():
    last_tag[user] = max(last_tag.get(user, 0.0), ts)
  untimed: dict[str, list] = {}
  for order, (user, artist, weight, lineno) in enumerate(rows):
    ts = first_tag.get((user, artist))
    if ts is not None:
      b.add_interaction(user, artist, ts, weight, path=path, line=lineno)
    elif untagged == "drop":
      policy.count("no_timestamp")
    else:
      untimed.setdefault(user, []).append((-weight, order, artist, weight,
                                           lineno))
  for user, pending in untimed.items():
    start = last_tag.get(user, 0.0)
    for step, (_, _, artist, weight, lineno) in enumerate(sorted(pending), 1):
      b.add_interaction(user, artist, start + step, weight, path=path,
                        line=lineno)
  return b.build(item_field="artistID")
