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
    read      user ranges of `sequences.npz` (memory-mapped, so a worker
              touches only its range) -> one record per user, keyed by
              shard (user % num_shards)
    group     GroupByKey: a shard's users (item indices and ratings only;
              ~8 bytes per interaction go through the shuffle, never the
              examples)
    write     per shard: the prompt functions over a `ShardView` of its
              users, every (task, split) file of that shard written in
              user order by one worker (item tasks, mlm and ie, take the
              shard's catalogue items); one more key trains the vocabulary
              from the same bounded sample as the single-process path
  A worker holds the catalogue, one shard's users and the open files, so its
  memory does not grow with the log; more shards (`num_shards`) bound it.
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
from recjax.prompts import ALL_TASKS, TASK_SPLITS, TASKS, export
from recjax.prompts.common import PromptConfig

VOCAB_KEY = -1
_COUNTS_DIR = ".beam_counts"
_USERS_PER_READ = 50_000


def _log(msg: str) -> None:
  print(f"[recjax.data.beam_prepare] {msg}", file=sys.stderr, flush=True)


# ---- reading the prepared arrays ------------------------------------------------
def npz_member(path: str | os.PathLike, name: str) -> np.ndarray:
  """A memory map of one array of an uncompressed `.npz` (np.savez's output).

  np.load reads a whole member; a map lets a worker touch only its range.
  """
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
  if not int(np.prod(shape)):
    return np.zeros(shape, dtype)
  return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def read_users(prepared_dir: str, lo: int, hi: int, num_shards: int
               ) -> Iterator[tuple[int, tuple[int, np.ndarray, np.ndarray]]]:
  """(shard, (user, items, ratings)) for users [lo, hi) of a prepared dir."""
  npz = os.path.join(prepared_dir, "sequences.npz")
  ptr = npz_member(npz, "user_ptr")
  start, end = int(ptr[lo]), int(ptr[hi])
  items = np.array(npz_member(npz, "items")[start:end])
  ratings = np.array(npz_member(npz, "ratings")[start:end])
  bounds = np.asarray(ptr[lo:hi + 1], np.int64) - start
  for k, u in enumerate(range(lo, hi)):
    a, b = bounds[k], bounds[k + 1]
    yield u % num_shards, (u, items[a:b], ratings[a:b])


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
               has_ratings: bool, rating_range: tuple[float, float]):
    self.items = items
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


def _write_shard(plan: _Plan, shard: int, records) -> None:
  """Writes every (task, split) file of one shard; counts go to a sidecar."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(plan.directory)
  items = read_items(directory)
  users = {u: (seq, rts) for rec in records if rec is not None
           for u, seq, rts in [rec]}
  view = ShardView(items, plan.num_users, users, plan.has_ratings,
                   plan.rating_range)
  counts = []
  for task, split in plan.pairs:
    start = time.perf_counter()
    path = directory / export.shard_path(task, split, shard, plan.num_shards)
    n = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
      for ex in TASKS[task](view, split, plan.config, plan.seed,
                            shard=(shard, plan.num_shards)):
        writer.write(export.serialize_example(ex))
        n += 1
    counts.append((task, split, n, time.perf_counter() - start))
  _write_counts(directory, f"shard-{shard:05d}", {"counts": counts})


def _train_vocab(plan: _Plan) -> None:
  directory = pathlib.Path(plan.directory)
  data = PreparedData.load(directory)
  start = time.perf_counter()
  size = export.train_vocabulary(
      data, directory / export.VOCAB_PATH, config=plan.config, seed=plan.seed,
      tasks=plan.tasks, vocab_size=plan.vocab_size)
  _write_counts(directory, "vocab", {"vocab_size": size,
                                     "seconds": time.perf_counter() - start})


def _write_counts(directory: pathlib.Path, name: str, obj: Any) -> None:
  path = directory / _COUNTS_DIR / f"{name}.json"
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(obj), encoding="utf-8")
  os.replace(tmp, path)  # a retried bundle overwrites, never duplicates


def _process_group(plan: _Plan, key_records) -> Iterator[int]:
  key, records = key_records
  if key == VOCAB_KEY:
    _train_vocab(plan)
  else:
    _write_shard(plan, key, records)
  yield key


def _pipeline_options(runner: str, num_workers: int,
                      pipeline_args: Sequence[str]):
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  args = [f"--runner={runner}"]
  if runner in ("DirectRunner", "direct"):
    args += [f"--direct_num_workers={int(num_workers)}",
             "--direct_running_mode=" + ("multi_processing" if num_workers > 1
                                         else "in_memory")]
  return PipelineOptions(args + list(pipeline_args))


def build_pipeline(p, plan: _Plan, *, users_per_read: int = _USERS_PER_READ):
  """Adds the read -> group by shard -> write transforms to pipeline `p`."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  ranges = [(lo, min(lo + users_per_read, plan.num_users))
            for lo in range(0, plan.num_users, users_per_read)]
  users = (p | "UserRanges" >> beam.Create(ranges)
           | "ReadUsers" >> beam.FlatMap(
               lambda r, d, s: read_users(d, r[0], r[1], s), plan.directory,
               plan.num_shards))
  # Every shard exists even without users (item tasks, tiny logs); the
  # vocabulary is one more key so it trains beside the shards.
  keys = [(s, None) for s in range(plan.num_shards)]
  if plan.train_vocab:
    keys.append((VOCAB_KEY, None))
  markers = p | "ShardKeys" >> beam.Create(keys)
  return ((users, markers) | "Union" >> beam.Flatten()
          | "GroupByShard" >> beam.GroupByKey()
          | "WriteShards" >> beam.FlatMap(
              lambda kv, pl: _process_group(pl, kv), plan))


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
  tasks = tuple(ALL_TASKS if tasks is None else tasks)
  for t in tasks:
    if t not in TASKS:
      raise ValueError(f"unknown task {t!r}; expected some of {ALL_TASKS}")
  for s in splits:
    if s not in SPLITS:
      raise ValueError(f"unknown split {s!r}; expected some of {SPLITS}")
  if num_workers < 1:
    raise ValueError(f"num_workers must be >= 1, got {num_workers}")
  skipped = []
  if "rating" in tasks and not data.has_ratings:
    skipped.append("rating")
    tasks = tuple(t for t in tasks if t != "rating")
  if num_shards is None:
    num_shards = max(1, min(16, math.ceil(data.num_interactions /
                                          export._EXAMPLES_PER_SHARD)))  # pylint: disable=protected-access
  vocab_size = int(vocab_size or export.DEFAULT_VOCAB_SIZE)
  vocab_path, vocab_options, actual_vocab_size = export.VOCAB_PATH, None, None
  if vocab_model is not None:
    vocab_model = pathlib.Path(vocab_model).expanduser()
    train_vocab = False
    vocab_path, vocab_options, actual_vocab_size = export._copy_vocabulary(  # pylint: disable=protected-access
        vocab_model, directory, pad_swap_id)

  pairs = [(t, s) for t in tasks for s in splits if s in TASK_SPLITS[t]]
  for t, s in pairs:
    (directory / "tasks" / t).mkdir(parents=True, exist_ok=True)
    for stale in (directory / "tasks" / t).glob(f"{s}.tfrecord-*"):
      stale.unlink()
  counts_dir = directory / _COUNTS_DIR
  counts_dir.mkdir(exist_ok=True)
  for stale in counts_dir.glob("*"):
    stale.unlink()
  rating_range = (0.0, 0.0)
  if data.has_ratings:
    rating_range = (float(np.nanmin(data.seq_ratings)),
                    float(np.nanmax(data.seq_ratings)))
  plan = _Plan(directory=str(directory), num_users=data.num_users,
               num_shards=int(num_shards), pairs=pairs, config=config,
               seed=int(seed), tasks=tasks, vocab_size=vocab_size,
               train_vocab=bool(train_vocab), has_ratings=data.has_ratings,
               rating_range=rating_range)
  start = time.perf_counter()
  _log(f"{data.name}: {len(pairs)} task/split pairs x {num_shards} shards on "
       f"{runner}" + (f" ({num_workers} workers)" if runner == "DirectRunner"
                      else "") + (", training vocabulary" if train_vocab
                                  else ""))
  with beam.Pipeline(options=_pipeline_options(runner, num_workers,
                                               pipeline_args)) as p:
    build_pipeline(p, plan)

  counts: dict[str, dict[str, int]] = {t: {} for t, _ in pairs}
  for i in range(num_shards):
    path = counts_dir / f"shard-{i:05d}.json"
    if not path.is_file():
      raise RuntimeError(f"{path}: shard {i} was not written; the pipeline "
                         "did not finish")
    for task, split, n, _ in json.loads(path.read_text())["counts"]:
      counts[task][split] = counts[task].get(split, 0) + n
  if train_vocab:
    actual_vocab_size = json.loads(
        (counts_dir / "vocab.json").read_text())["vocab_size"]
  for stale in counts_dir.glob("*"):
    stale.unlink()
  counts_dir.rmdir()
  manifest = export_manifest(
      data, directory, pairs=pairs, tasks=tasks, counts=counts,
      num_shards=num_shards, config=config, seed=seed,
      vocab_path=vocab_path if train_vocab or vocab_model else None,
      vocab_model=vocab_model, vocab_options=vocab_options,
      vocab_size=actual_vocab_size, skipped=skipped,
      seconds=time.perf_counter() - start)
  _log(f"{sum(sum(c.values()) for c in counts.values()):,} examples in "
       f"{manifest['seconds']:.1f}s")
  return manifest


def export_manifest(data, directory: pathlib.Path, *, pairs, tasks, counts,
                    num_shards, config, seed, vocab_path, vocab_model,
                    vocab_options, vocab_size, skipped,
                    seconds) -> dict[str, Any]:
  """Drops empty (task, split) files and writes `export`'s manifest layout.

  tests/test_beam_prepare.py checks it equals the single-process manifest.
  """
  files: dict[str, dict[str, list[str]]] = {}
  patterns: dict[str, dict[str, str]] = {}
  for t, s in pairs:
    if counts[t].get(s, 0) == 0:
      for i in range(num_shards):
        (directory / export.shard_path(t, s, i, num_shards)).unlink(
            missing_ok=True)
      counts[t].pop(s, None)
      continue
    files.setdefault(t, {})[s] = [export.shard_path(t, s, i, num_shards)
                                  for i in range(num_shards)]
    patterns.setdefault(t, {})[s] = (
        f"tasks/{t}/{s}.tfrecord-*-of-{num_shards:05d}")
  present = [t for t in tasks if files.get(t)]
  manifest = {
      "format": export.MANIFEST_FORMAT,
      "dataset": data.name,
      "tasks": present,
      "splits": {t: list(files[t]) for t in present},
      "counts": {t: counts[t] for t in present},
      "files": files,
      "file_patterns": patterns,
      "num_shards": num_shards,
      "features": {"string": list(export.STRING_FEATURES),
                   "int64": list(export.INT_FEATURES),
                   "float": list(export.FLOAT_FEATURES),
                   "bytes_list": list(export.LIST_FEATURES)},
      "config": config.to_json(),
      "seed": seed,
      "vocabulary": vocab_path,
      "vocabulary_source": str(vocab_model) if vocab_model else "trained",
      **({"vocabulary_options": vocab_options} if vocab_options else {}),
      "vocab_size": vocab_size,
      "has_ratings": data.has_ratings,
      "skipped_tasks": skipped,
      "seconds": round(seconds, 3),
  }
  with open(export.manifest_file(directory), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
    f.write("\n")
  return manifest
