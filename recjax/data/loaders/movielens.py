"""MovieLens from GroupLens' own files; the variant is detected from the files present.

  100K  u.data (user<TAB>item<TAB>rating<TAB>unix time), u.item (latin-1,
        `id|title (year)|release date|video date|url|19 genre flags`), and
        u.genre (`name|index`, optional; else the standard 19 names).
  1M    ratings.dat (`user::item::rating::time`), movies.dat (latin-1,
        `id::title (year)::A|B`). 10M uses the same layout.
  20M/25M/latest  ratings.csv (`userId,movieId,rating,timestamp`, header),
        movies.csv (UTF-8, quoted CSV `movieId,title,genres`).

Titles are kept as GroupLens writes them, year included ("Toy Story (1995)").
The genre "(no genres listed)" becomes no categories.
"""
from __future__ import annotations

import csv
import io
import pathlib

from recjax.data.dataset import DatasetBuilder, RecDataset
from recjax.data.errors import ErrorPolicy
from recjax.data.loaders import _io

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
    "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror",
    "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


def detect(directory: pathlib.Path) -> str:
  if (directory / "u.data").is_file():
    return "100k"
  if (directory / "ratings.dat").is_file():
    return "1m"
  if (directory / "ratings.csv").is_file():
    return "20m"
  raise FileNotFoundError(
      f"{directory}: not a MovieLens directory (expected u.data + u.item "
      "(100K), ratings.dat + movies.dat (1M/10M) or ratings.csv + movies.csv "
      "(20M/25M))")


def load(input_path: str, *, on_error: str = "raise",
         missing_title: str = "skip", **options) -> RecDataset:
  """Loads a MovieLens directory (or a file inside one)."""
  if options:
    raise TypeError(f"movielens: unknown options {sorted(options)}")
  directory = pathlib.Path(input_path)
  if directory.is_file():
    directory = directory.parent
  variant = detect(directory)
  policy = ErrorPolicy(on_error)
  b = DatasetBuilder(f"ml{variant}", policy, missing_title=missing_title)
  b.meta["variant"] = variant
  if variant == "100k":
    _items_100k(directory, b, policy)
    _ratings(directory / "u.data", b, policy, sep="\t", header=False)
  elif variant == "1m":
    _items_dat(directory / "movies.dat", b, policy)
    _ratings(directory / "ratings.dat", b, policy, sep="::", header=False)
  else:
    _items_csv(directory / "movies.csv", b, policy)
    _ratings(directory / "ratings.csv", b, policy, sep=",", header=True)
  return b.build(item_field="item")


def _genres_100k(directory: pathlib.Path, policy: ErrorPolicy) -> tuple:
  path = directory / "u.genre"
  if not path.is_file():
    return ML100K_GENRES
  names = {}
  for lineno, text in _io.iter_lines(path, policy, encoding="latin-1"):
    name, _, index = text.rpartition("|")
    try:
      names[int(index)] = name
    except ValueError:
      policy.error(path, lineno, "index", f"not an integer: {index!r}",
                   "malformed_line")
  return tuple(names.get(i, ML100K_GENRES[i] if i < 19 else str(i))
               for i in range(max(names, default=18) + 1))


def _items_100k(directory, b: DatasetBuilder, policy: ErrorPolicy) -> None:
  genres = _genres_100k(directory, policy)
  path = directory / "u.item"
  for lineno, text in _io.iter_lines(path, policy, encoding="latin-1"):
    parts = text.split("|")
    if len(parts) < 5 + len(genres):
      policy.error(path, lineno, None, f"expected {5 + len(genres)} "
                   f"'|'-separated fields, got {len(parts)}", "malformed_line")
      continue
    if not parts[0].strip():
      _missing(policy, path, lineno, "movie id")
      continue
    flags = parts[5:5 + len(genres)]
    cats = [g for g, f in zip(genres, flags) if f.strip() == "1"]
    b.add_item(parts[0], parts[1], [c for c in cats if c != "unknown"])


def _items_dat(path, b: DatasetBuilder, policy: ErrorPolicy) -> None:
  for lineno, text in _io.iter_lines(path, policy, encoding="latin-1"):
    parts = text.split("::")
    if len(parts) != 3:
      policy.error(path, lineno, None, f"expected 3 '::'-separated fields, "
                   f"got {len(parts)}", "malformed_line")
      continue
    if not parts[0].strip():
      _missing(policy, path, lineno, "movie id")
      continue
    b.add_item(parts[0], parts[1], _split_genres(parts[2]))


def _items_csv(path, b: DatasetBuilder, policy: ErrorPolicy) -> None:
  lines = _io.iter_lines(path, policy, header=True)
  first = True
  for lineno, text in lines:
    row = next(csv.reader(io.StringIO(text)), [])
    if first:
      first = False
      continue
    if len(row) != 3:
      policy.error(path, lineno, None, f"expected 3 CSV fields, got {len(row)}",
                   "malformed_line")
      continue
    if not row[0].strip():
      _missing(policy, path, lineno, "movieId")
      continue
    b.add_item(row[0], row[1], _split_genres(row[2]))


def _split_genres(text: str) -> list[str]:
  return [g for g in text.strip().split("|")
          if g and g != "(no genres listed)"]


_RATING_FIELDS = ("user", "item", "rating", "timestamp")


def _ratings(path, b: DatasetBuilder, policy: ErrorPolicy, *, sep: str,
             header: bool) -> None:
  if _io.add_fast(b, path, sep, 4, 0, 1, 3, 2, header=header,
                  encoding="latin-1", quote_free=False):
    return
  first = header
  for lineno, text in _io.iter_lines(path, policy, encoding="latin-1",
                                     header=header):
    if first:
      first = False
      continue
    parts = text.split(sep) if sep != "\t" else text.split()
    if len(parts) != 4:
      policy.error(path, lineno, None, f"expected 4 fields separated by "
                   f"{sep!r}, got {len(parts)}", "malformed_line")
      continue
    user, item, rating, ts = (p.strip() for p in parts)
    if not user or not item:
      _missing(policy, path, lineno, "user" if not user else "item")
      continue
    try:
      rating = _io.parse_rating(rating)
    except ValueError:
      policy.error(path, lineno, "rating", f"not a number: {rating!r}",
                   "bad_rating")
      continue
    try:
      ts = _io.parse_timestamp(ts)
    except ValueError:
      policy.error(path, lineno, "timestamp", f"not a time: {ts!r}",
                   "bad_timestamp")
      continue
    b.add_interaction(user, item, ts, rating, path=path, line=lineno)


def _missing(policy, path, line, field):
  policy.error(path, line, field, "missing", f"missing_field:{field}")
