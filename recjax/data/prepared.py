"""The prepared directory: the contract between data preparation and prompts.

A prepared directory holds one filtered, re-indexed dataset:

  meta.json       name, source, counts, max_history, kcore, format version
  stats.json      counts before/after each filter, skipped records by reason
  items.jsonl     one item per line, in index order:
                  {"index", "id", "title", "categories", "brand", "description", "price"}
  users.jsonl     one user per line, in index order: {"index", "id"}
  sequences.npz   every user's chronological interactions in CSR layout:
                  user_ptr int64[U+1]; items int32[N]; timestamps float64[N];
                  ratings float32[N] (NaN where the source has no rating)

Item and user indices are dense 0-based ints; `id` keeps the source's own
identifier (the text form used in prompts is `items.jsonl`'s "id"). Arrays are
used for the sequences so a log of millions of interactions loads in
milliseconds. Splits are derived, not stored (see `recjax.data.split`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

FORMAT = "recjax.prepared/1"
DATA_DIR_ENV = "RECJAX_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/recjax"


def data_root() -> pathlib.Path:
  """Where prepared directories live by default: `$RECJAX_DATA_DIR`, else
  `~/.cache/recjax` (the embedded default is `<root>/synthetic`)."""
  return pathlib.Path(os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR)).expanduser()
ITEM_FIELDS = ("id", "title", "categories", "brand", "description", "price")


@dataclasses.dataclass
class PreparedData:
  """A dataset after filtering and re-indexing; immutable by convention."""
  name: str
  items: list[dict[str, Any]]  # index order; keys ITEM_FIELDS
  user_ids: list[str]
  user_ptr: np.ndarray  # int64[U+1]
  seq_items: np.ndarray  # int32[N]
  seq_timestamps: np.ndarray  # float64[N]
  seq_ratings: np.ndarray  # float32[N], NaN = no rating
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  stats: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.user_ptr = np.asarray(self.user_ptr, np.int64)
    self.seq_items = np.asarray(self.seq_items, np.int32)
    self.seq_timestamps = np.asarray(self.seq_timestamps, np.float64)
    self.seq_ratings = np.asarray(self.seq_ratings, np.float32)
    n = len(self.seq_items)
    if (self.user_ptr.shape != (len(self.user_ids) + 1,) or
        self.user_ptr[0] != 0 or self.user_ptr[-1] != n or
        np.any(np.diff(self.user_ptr) < 0)):
      raise ValueError(f"{self.name}: user_ptr is not a CSR index over {n} "
                       f"interactions of {len(self.user_ids)} users")
    if self.seq_timestamps.shape != (n,) or self.seq_ratings.shape != (n,):
      raise ValueError(f"{self.name}: timestamps/ratings must have shape ({n},)")
    if n and (self.seq_items.min() < 0 or self.seq_items.max() >= len(self.items)):
      raise ValueError(f"{self.name}: item index out of range [0, {len(self.items)})")

  # ---- sizes and lookups -------------------------------------------------
  @property
  def num_users(self) -> int:
    return len(self.user_ids)

  @property
  def num_items(self) -> int:
    return len(self.items)

  @property
  def num_interactions(self) -> int:
    return len(self.seq_items)

  @property
  def has_ratings(self) -> bool:
    return bool(len(self.seq_ratings)) and not np.all(np.isnan(self.seq_ratings))

  @property
  def item_ids(self) -> list[str]:
    return [it["id"] for it in self.items]

  @property
  def titles(self) -> list[str]:
    return [it["title"] for it in self.items]

  def sequence(self, user: int) -> np.ndarray:
    """Item indices of `user`, oldest first."""
    return self.seq_items[self.user_ptr[user]:self.user_ptr[user + 1]]

  def ratings(self, user: int) -> np.ndarray:
    return self.seq_ratings[self.user_ptr[user]:self.user_ptr[user + 1]]

  def timestamps(self, user: int) -> np.ndarray:
    return self.seq_timestamps[self.user_ptr[user]:self.user_ptr[user + 1]]

  def sequences(self) -> Iterator[np.ndarray]:
    for u in range(self.num_users):
      yield self.sequence(u)

  # ---- persistence -------------------------------------------------------
  def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Writes atomically: a temporary sibling directory, renamed at the end."""
    directory = pathlib.Path(directory)
    with atomic_directory(directory, overwrite=overwrite) as tmp:
      self.write_into(tmp)

  def write_into(self, directory: pathlib.Path) -> None:
    """Writes the files into an existing (temporary) directory."""
    meta = dict(self.meta)
    meta.update(format=FORMAT, name=self.name, num_users=self.num_users,
                num_items=self.num_items,
                num_interactions=self.num_interactions,
                has_ratings=self.has_ratings)
    _write_json(directory / "meta.json", meta)
    _write_json(directory / "stats.json", self.stats)
    with open(directory / "items.jsonl", "w", encoding="utf-8") as f:
      for i, item in enumerate(self.items):
        rec = {"index": i}
        rec.update({k: item.get(k) for k in ITEM_FIELDS})
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    with open(directory / "users.jsonl", "w", encoding="utf-8") as f:
      for i, uid in enumerate(self.user_ids):
        f.write(json.dumps({"index": i, "id": uid}, ensure_ascii=False) + "\n")
    np.savez(directory / "sequences.npz", user_ptr=self.user_ptr,
             items=self.seq_items, timestamps=self.seq_timestamps,
             ratings=self.seq_ratings)

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "PreparedData":
    directory = pathlib.Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
      raise FileNotFoundError(
          f"{directory} is not a prepared directory (no meta.json); "
          "run `recjax prepare` first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
      raise ValueError(f"{meta_path}: format {meta.get('format')!r}, "
                       f"this recjax reads {FORMAT!r}")
    stats_path = directory / "stats.json"
    stats = (json.loads(stats_path.read_text(encoding="utf-8"))
             if stats_path.is_file() else {})
    items = read_items(directory)
    with open(directory / "users.jsonl", encoding="utf-8") as f:
      user_ids = [json.loads(line)["id"] for line in f]
    with np.load(directory / "sequences.npz") as z:
      arrays = {k: z[k] for k in z.files}
    return cls(name=meta["name"], items=items, user_ids=user_ids,
               user_ptr=arrays["user_ptr"], seq_items=arrays["items"],
               seq_timestamps=arrays["timestamps"],
               seq_ratings=arrays["ratings"], meta=meta, stats=stats)

  @classmethod
  def from_sequences(cls, name: str, items: Sequence[Mapping[str, Any]],
                     user_ids: Sequence[str],
                     sequences: Sequence[Sequence[int]],
                     ratings: Sequence[Sequence[float]] | None = None,
                     timestamps: Sequence[Sequence[float]] | None = None,
                     **kwargs) -> "PreparedData":
    """Builds from per-user lists (tests and small tools)."""
    lengths = [len(s) for s in sequences]
    ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.fromiter((i for s in sequences for i in s), np.int32, ptr[-1])
    if timestamps is None:
      ts = np.concatenate([np.arange(n, dtype=np.float64) for n in lengths]
                          or [np.zeros(0)])
    else:
      ts = np.fromiter((t for s in timestamps for t in s), np.float64, ptr[-1])
    if ratings is None:
      rt = np.full(ptr[-1], np.nan, np.float32)
    else:
      rt = np.fromiter((r for s in ratings for r in s), np.float32, ptr[-1])
    full_items = [{k: dict(it).get(k) for k in ITEM_FIELDS} for it in items]
    for it in full_items:
      it["categories"] = list(it["categories"] or [])
    return cls(name=name, items=full_items, user_ids=list(user_ids),
               user_ptr=ptr, seq_items=flat, seq_timestamps=ts,
               seq_ratings=rt, **kwargs)


def items_file(directory: str | os.PathLike) -> pathlib.Path:
  """The catalogue file of a prepared directory (readers cache on its mtime)."""
  return pathlib.Path(directory) / "items.jsonl"


def read_items(directory: str | os.PathLike) -> list[dict[str, Any]]:
  """The items of a prepared directory, in index order (keys ITEM_FIELDS).

  Evaluation needs only the catalogue, not the interaction arrays, so this
  reads `items.jsonl` alone. A malformed line raises with the file and line.
  """
  path = items_file(directory)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no items; is {directory} a prepared "
                            "directory? (run `recjax prepare` first)")
  items = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not JSON ({e.msg})") from None
      if not isinstance(rec, dict) or rec.get("id") is None:
        raise ValueError(f"{path}:{line_no}: field 'id' missing")
      items.append({k: rec.get(k) for k in ITEM_FIELDS})
  return items


class atomic_directory:  # pylint: disable=invalid-name
  """Context manager: yields a temporary sibling dir, renamed to `target` on success.

  On any exception the temporary directory is removed and `target` is left
  as it was, so a failed job never leaves a half-written output behind.
  """

  def __init__(self, target: str | os.PathLike, *, overwrite: bool = False):
    self.target = pathlib.Path(target)
    self.overwrite = overwrite
    self.tmp: pathlib.Path | None = None

  def __enter__(self) -> pathlib.Path:
    if self.target.exists() and not self.overwrite:
      raise FileExistsError(f"{self.target} exists; pass overwrite to replace it")
    self.target.parent.mkdir(parents=True, exist_ok=True)
    self.tmp = pathlib.Path(tempfile.mkdtemp(
        prefix=f".{self.target.name}.tmp-", dir=self.target.parent))
    return self.tmp

  def __exit__(self, exc_type, exc, tb):
    assert self.tmp is not None
    if exc_type is not None:
      shutil.rmtree(self.tmp, ignore_errors=True)
      return False
    if self.target.exists():
      old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
      os.replace(self.target, old)
      os.replace(self.tmp, self.target)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(self.tmp, self.target)
    return False


def atomic_write(path: str | os.PathLike, content: str | Callable[
    [pathlib.Path], Any]) -> None:
  """Writes a file so that a reader never sees half of it.

  `content` is the text to write, or `write(tmp_path)` for other writers
  (e.g. matplotlib); either way a temporary file beside `path` is renamed
  onto it, and removed if writing fails.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix,
                             dir=path.parent)
  os.close(fd)
  try:
    if callable(content):
      content(pathlib.Path(tmp))
    else:
      pathlib.Path(tmp).write_text(content, encoding="utf-8")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _write_json(path: pathlib.Path, obj: Any) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=True)
    f.write("\n")
