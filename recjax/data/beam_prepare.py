"""`recjax prepare --beam`: the prompt and shard writing step as a Beam pipeline.

It writes the same files as `recjax.prompts.export.write_task_files`, byte
for byte for the same seed and shard count: the same prompt functions
(`recjax.prompts.TASKS`) run on the same users in the same order, and every
random choice comes from the (seed, task, split, user) generator of
`recjax.prompts.common.Rngs`, so it does not matter which worker runs a user.

What runs where:
  launcher (global, numpy over whole columns; `recjax.data.prepare`):
    loading, dedup, iterative k-core, user/item id maps, the prepared files
    (`sequences.npz`, ...) and the manifest. The loaders read a raw log in
    memory, so these steps need the log's columns to fit one machine (a few
    tens of bytes per interaction). Splits need no global step: leave-one-out
    is a function of one user's sequence.
  pipeline:
    keys      one element per shard, plus one for the vocabulary, spread
              over the workers (Reshuffle); no user data goes through the
              runner, so its memory does not grow with the log
    write     per shard: the worker reads its own users (user % num_shards
              == shard) from `sequences.npz` in bounded windows (plain file
              reads, not a memory map, so the rest of the file never becomes
              part of its resident memory), runs the prompt functions over a
              `ShardView` of them and writes every (task, split) file of the
              shard in user order (item tasks, mlm and ie, take the shard's
              catalogue items). The vocabulary key trains the vocabulary from
              the same bounded sample as the single-process path, reading the
              sampled users one by one.
  A worker holds the catalogue, one shard's users (~8 bytes per interaction
  of its shard) and the open files; more shards (`num_shards`) bound it.
  Output paths must be visible to every worker (a shared filesystem; for
  Dataflow, e.g. a GCS FUSE mount).
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import struct
import sys
import time
import zipfile
from typing import Any, Iterator, Sequence

import numpy as np

from recjax.data.prepared import PreparedData, read_items
from recjax.data.split import SPLITS
from recjax.prompts import export
from recjax.prompts.common import PromptConfig

VOCAB_KEY = -1
_COUNTS_DIR = ".beam_counts"
_USERS_PER_READ = 50_000


def _log(msg: str) -> None:
  print(f"[recjax.data.beam_prepare] {msg}", file=sys.stderr, flush=True)


# ---- reading the prepared arrays ------------------------------------------------
def npz_member_location(path: str | os.PathLike, name: str
                        ) -> tuple[int, np.dtype, tuple[int, ...]]:
  """(byte offset, dtype, shape) of one array of an uncompressed `.npz`
  (np.savez's output), so that a worker can read a range of it."""
  with zipfile.ZipFile(path) as z:
    info = z.getinfo(f"{name}.npy")
  if info.compress_type != zipfile.ZIP_STORED:
    raise ValueError(f"{path}: {name} is compressed; expected np.savez output")
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    local = f.read(30)
    if local[:4] != b"PK\x03\x04":
      raise ValueError(f"{path}: bad zip local header for {name}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(f)
    offset = f.tell()
  if fortran:
    raise ValueError(f"{path}: {name} is Fortran-ordered")
  return offset, np.dtype(dtype), tuple(shape)


class NpzRanges:
  """Reads ranges of the members of an uncompressed `.npz` with plain file
  reads: memory holds what was read, never a mapping of the whole file."""

  def __init__(self, path: str | os.PathLike, names: Sequence[str]):
    self.path = str(path)
    self._where = {n: npz_member_location(path, n) for n in names}

  def shape(self, name: str) -> tuple[int, ...]:
    return self._where[name][2]

  def read(self, name: str, start: int, stop: int) -> np.ndarray:
    offset, dtype, shape = self._where[name]
    start, stop = max(0, int(start)), min(int(stop), int(shape[0]))
    if stop <= start:
      return np.zeros((0,) + shape[1:], dtype)
    row = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    out = np.fromfile(self.path, dtype=dtype, count=(stop - start) * row //
                      dtype.itemsize, offset=offset + start * row)
    return out.reshape((stop - start,) + shape[1:])


def _sequences(prepared_dir: str | os.PathLike) -> NpzRanges:
  return NpzRanges(os.path.join(prepared_dir, "sequences.npz"),
                   ("user_ptr", "items", "ratings"))


def read_shard_users(prepared_dir: str | os.PathLike, shard: int,
                     num_shards: int, *, users_per_read: int = _USERS_PER_READ
                     ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """{user: (items, ratings)} for the users u % num_shards == shard.

  Reads `users_per_read` users' interactions at a time and keeps only the
  shard's, packed into one array per field (views into it are returned).
  """
  seqs = _sequences(prepared_dir)
  num_users = seqs.shape("user_ptr")[0] - 1
  parts_items, parts_ratings, spans = [], [], []
  kept = 0
  for lo in range(0, num_users, users_per_read):
    hi = min(lo + users_per_read, num_users)
    ptr = seqs.read("user_ptr", lo, hi + 1).astype(np.int64)
    first = lo + (shard - lo) % num_shards
    users = np.arange(first, hi, num_shards)
    if not len(users):
      continue
    begin, end = ptr[users - lo], ptr[users - lo + 1]
    lengths = end - begin
    # Positions of the kept users' interactions inside this window.
    pos = (np.repeat(begin - ptr[0] - np.cumsum(lengths) + lengths, lengths)
           + np.arange(int(lengths.sum())))
    parts_items.append(seqs.read("items", ptr[0], ptr[-1])[pos])
    parts_ratings.append(seqs.read("ratings", ptr[0], ptr[-1])[pos])
    for u, n in zip(users.tolist(), lengths.tolist()):
      spans.append((u, kept, kept + n))
      kept += n
  items = (np.concatenate(parts_items) if parts_items else
           np.zeros(0, np.int32))
  ratings = (np.concatenate(parts_ratings) if parts_ratings else
             np.zeros(0, np.float32))
  return {u: (items[a:b], ratings[a:b]) for u, a, b in spans}


class UsersOnDemand:
  """{user: (items, ratings)} read from `sequences.npz` per lookup, for a
  sparse sample of users (the vocabulary's); holds nothing between reads."""

  def __init__(self, prepared_dir: str | os.PathLike):
    self._seqs = _sequences(prepared_dir)
    self._num_users = self._seqs.shape("user_ptr")[0] - 1

  def get(self, user: int, default=None):
    if not 0 <= user < self._num_users:
      return default
    a, b = self._seqs.read("user_ptr", user, user + 2).tolist()
    return (self._seqs.read("items", a, b), self._seqs.read("ratings", a, b))


# ---- the prompt functions' view of one shard ---------------------------------------
class ShardView:
  """The part of `PreparedData` the prompt functions read, for some users.

  User indices stay global (they key the per-user generators); users absent
  from the view have empty sequences. `seq_ratings` holds only the global
  rating extremes, which is all `recjax.prompts.common.Context` reads of it
  (the rating scale of the whole log, not of the shard).
  """

  def __init__(self, items: list[dict[str, Any]], num_users: int,
               users: dict[int, tuple[np.ndarray, np.ndarray]],
               has_ratings: bool, rating_range: tuple[float, float],
               context_key: Any = None):
    self.items = items
    # What the prompts' per-catalogue context is cached by: one object for
    # every shard a worker writes of the same catalogue (`_catalogue`), so
    # the context (every item's mention, title and target text) is built
    # once per worker, not once per shard.
    self.context_key = context_key
    self.num_users = int(num_users)
    self.has_ratings = bool(has_ratings)
    self.seq_ratings = np.asarray(rating_range if has_ratings else
                                  (math.nan, math.nan), np.float32)
    self._users = users
    self._empty = (np.zeros(0, np.int32), np.zeros(0, np.float32))

  @property
  def num_items(self) -> int:
    return len(self.items)

  def sequence(self, user: int) -> np.ndarray:
    return self._users.get(user, self._empty)[0]

  def ratings(self, user: int) -> np.ndarray:
    return self._users.get(user, self._empty)[1]


# ---- pipeline steps ----------------------------------------------------------------
class _Plan:
  """What every worker needs to know; small and picklable."""

  def __init__(self, **kwargs):
    self.__dict__.update(kwargs)


class _Catalogue:
  """One worker's copy of a prepared directory's items (weak-referenceable:
  the prompts' context cache keys on it)."""

  def __init__(self, items: list[dict[str, Any]]):
    self.items = items


_LAST_CATALOGUE: list = [None, None]  # [key, _Catalogue]: one per worker


def _catalogue(plan: _Plan) -> _Catalogue:
  """The items of `plan.directory`, read once per worker process (per file
  version and rating scale: another run over a rewritten directory, or
  another log in the same worker, reads again)."""
  path = pathlib.Path(plan.directory) / "items.jsonl"
  stat = path.stat() if path.exists() else None
  key = (str(path.resolve()), stat and stat.st_mtime_ns, stat and stat.st_size,
         plan.has_ratings, tuple(plan.rating_range))
  if _LAST_CATALOGUE[0] != key:
    _LAST_CATALOGUE[:] = [key, _Catalogue(read_items(pathlib.Path(
        plan.directory)))]
  return _LAST_CATALOGUE[1]


def _view(plan: _Plan, users) -> "ShardView":
  cat = _catalogue(plan)
  return ShardView(cat.items, plan.num_users, users, plan.has_ratings,
                   plan.rating_range, context_key=cat)


def _write_shard(plan: _Plan, shard: int) -> None:
  """Writes every (task, split) file of one shard; counts go to a sidecar."""
  directory = pathlib.Path(plan.directory)
  view = _view(plan, read_shard_users(directory, shard, plan.num_shards))
  counts = []
  for task, split in plan.pairs:
    n = export.write_shard_file(view, directory, task, split, shard,
                                plan.num_shards, config=plan.config,
                                seed=plan.seed)
    counts.append((task, split, n))
  _write_counts(directory, f"shard-{shard:05d}", {"counts": counts})


def _train_vocab(plan: _Plan) -> None:
  directory = pathlib.Path(plan.directory)
  size = export.train_vocabulary(
      _view(plan, UsersOnDemand(directory)), directory / export.VOCAB_PATH,
      config=plan.config, seed=plan.seed, tasks=plan.tasks,
      vocab_size=plan.vocab_size)
  _write_counts(directory, "vocab", {"vocab_size": size})


def _write_counts(directory: pathlib.Path, name: str, obj: Any) -> None:
  path = directory / _COUNTS_DIR / f"{name}.json"
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(obj), encoding="utf-8")
  os.replace(tmp, path)  # a retried bundle overwrites, never duplicates


def _process_key(plan: _Plan, key: int) -> Iterator[int]:
  if key == VOCAB_KEY:
    _train_vocab(plan)
  else:
    _write_shard(plan, key)
  yield key


def pipeline_options(runner: str, num_workers: int,
                     pipeline_args: Sequence[str]):
  """Beam `PipelineOptions`: the runner (DirectRunner: `num_workers`
  processes) and `pipeline_args` as given. `seqio_tasks.cache` uses it too."""
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  args = [f"--runner={runner}"]
  if runner in ("DirectRunner", "direct"):
    args += [f"--direct_num_workers={int(num_workers)}",
             "--direct_running_mode=" + ("multi_processing" if num_workers > 1
                                         else "in_memory")]
  return PipelineOptions(args + list(pipeline_args))


def build_pipeline(p, plan: _Plan):
  """Adds the keys -> write transforms to pipeline `p`."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  # Every shard exists even without users (item tasks, tiny logs); the
  # vocabulary is one more key so it trains beside the shards. The
  # vocabulary goes first: it is the longest single unit.
  keys = ([VOCAB_KEY] if plan.train_vocab else []) + list(
      range(plan.num_shards))
  return (p | "ShardKeys" >> beam.Create(keys)
          | "SpreadOverWorkers" >> beam.Reshuffle()
          | "WriteShards" >> beam.FlatMap(
              lambda key, pl: _process_key(pl, key), plan))


# ---- the entry point ---------------------------------------------------------------
def write_task_files(data: PreparedData, directory: str | os.PathLike, *,
                     config: PromptConfig, seed: int = 0,
                     tasks: Sequence[str] | None = None,
                     splits: Sequence[str] = SPLITS,
                     num_shards: int | None = None,
                     vocab_size: int | None = None, train_vocab: bool = True,
                     vocab_model: str | os.PathLike | None = None,
                     pad_swap_id: int | str | None = "auto",
                     runner: str = "DirectRunner", num_workers: int = 2,
                     pipeline_args: Sequence[str] = ()) -> dict[str, Any]:
  """`recjax.prompts.export.write_task_files` run as a Beam pipeline.

  `data` must already be written into `directory` (`data.write_into`): the
  workers read `sequences.npz` and `items.jsonl` from there. Arguments are
  `export.write_task_files`'s, plus the runner (`DirectRunner` with
  `num_workers` processes; `DataflowRunner`, `FlinkRunner`, `SparkRunner`
  ...) and `pipeline_args`, passed to Beam's `PipelineOptions` as given.
  Returns the manifest, equal to the single-process one but for `seconds`.
  """
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  for name in ("sequences.npz", "items.jsonl", "meta.json"):
    if not (directory / name).is_file():
      raise FileNotFoundError(f"{directory / name}: missing; write the "
                              "prepared data first (PreparedData.write_into)")
  if num_workers < 1:
    raise ValueError(f"num_workers must be >= 1, got {num_workers}")
  task_plan = export.plan_task_files(
      data, directory, tasks=tasks, splits=splits, num_shards=num_shards,
      vocab_size=vocab_size, train_vocab=train_vocab, vocab_model=vocab_model,
      pad_swap_id=pad_swap_id, config=config)
  num_shards = task_plan.num_shards
  counts_dir = directory / _COUNTS_DIR
  counts_dir.mkdir(exist_ok=True)
  for stale in counts_dir.glob("*"):
    stale.unlink()
  rating_range = (0.0, 0.0)
  if data.has_ratings:
    rating_range = (float(np.nanmin(data.seq_ratings)),
                    float(np.nanmax(data.seq_ratings)))
  plan = _Plan(directory=str(directory), num_users=data.num_users,
               num_shards=num_shards, pairs=task_plan.pairs, config=config,
               seed=int(seed), tasks=task_plan.tasks,
               vocab_size=task_plan.vocab_size,
               train_vocab=task_plan.train_vocab, has_ratings=data.has_ratings,
               rating_range=rating_range)
  start = time.perf_counter()
  _log(f"{data.name}: {len(plan.pairs)} task/split pairs x {num_shards} "
       f"shards on {runner}" + (f" ({num_workers} workers)" if runner ==
                                "DirectRunner" else "") + (
           ", training vocabulary" if plan.train_vocab else ""))
  with beam.Pipeline(options=pipeline_options(runner, num_workers,
                                              pipeline_args)) as p:
    build_pipeline(p, plan)

  counts: dict[str, dict[str, int]] = {t: {} for t, _ in plan.pairs}
  for i in range(num_shards):
    path = counts_dir / f"shard-{i:05d}.json"
    if not path.is_file():
      raise RuntimeError(f"{path}: shard {i} was not written; the pipeline "
                         "did not finish")
    for task, split, n in json.loads(path.read_text())["counts"]:
      counts[task][split] = counts[task].get(split, 0) + n
  trained_vocab_size = None
  if plan.train_vocab:
    trained_vocab_size = json.loads(
        (counts_dir / "vocab.json").read_text())["vocab_size"]
  for stale in counts_dir.glob("*"):
    stale.unlink()
  counts_dir.rmdir()
  manifest = export.write_manifest(
      data, directory, task_plan, config=config, seed=seed, counts=counts,
      trained_vocab_size=trained_vocab_size,
      seconds=time.perf_counter() - start)
  _log(f"{sum(sum(c.values()) for c in counts.values()):,} examples in "
       f"{manifest['seconds']:.1f}s")
  return manifest
