"""SeqIO's offline task cache for recjax tasks, written by an Apache Beam pipeline.

`recjax cache_tasks --tasks=NAME,... --output=DIR` runs, per task and split,
the transforms of seqio's own `seqio/scripts/cache_tasks_main.py`
(`seqio.beam_utils.PreprocessTask`, a global Reshuffle,
`WriteExampleTfRecord`, `GetInfo`, `GetStats`), so DIR holds exactly the
layout seqio reads: `<task>/{split}.tfrecord-*`, `info.{split}.json`,
`stats.{split}.json` and `COMPLETED`. Tasks are preprocessed up to their
`seqio.CacheDatasetPlaceholder` (tokenized; EOS is appended after reading).

Training reads the cache when SeqIO knows the directory and the run asks for
it: `RECJAX_SEQIO_CACHE_DIRS=DIR recjax train ... --gin.USE_CACHED_TASKS=True`
(importing `seqio_tasks` adds `$RECJAX_SEQIO_CACHE_DIRS` to
`seqio.add_global_cache_dirs`).

seqio's `cache_tasks_main` works too (`python -m
seqio.scripts.cache_tasks_main --module_import=seqio_tasks --tasks=...
--output_cache_dir=DIR`); this wrapper exists because absl flags of that
script clash with recjax's, and because Beam workers are fresh processes:
the prepared directories to register are passed to them through
`$RECJAX_PREPARED_DIRS`, which `seqio_tasks` reads on import.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

import seqio

PREPARED_DIRS_ENV = "RECJAX_PREPARED_DIRS"
CACHE_DIRS_ENV = "RECJAX_SEQIO_CACHE_DIRS"


def _log(msg: str) -> None:
  print(f"[seqio_tasks.cache] {msg}", file=sys.stderr, flush=True)


def resolve_tasks(names: Sequence[str]) -> list[str]:
  """Task names, mixtures expanded to their tasks, in order, once each."""
  out: list[str] = []
  for name in names:
    if name in seqio.MixtureRegistry.names():
      subs = [t.name for t in seqio.get_mixture_or_task(name).tasks]
    elif name in seqio.TaskRegistry.names():
      subs = [name]
    else:
      known = sorted(n for n in seqio.TaskRegistry.names() if "_test" not in n)
      raise ValueError(f"unknown task or mixture {name!r}; registered: "
                       f"{', '.join(sorted(seqio.MixtureRegistry.names()) + known)}")
    out.extend(t for t in subs if t not in out)
  return out


def export_prepared_dirs(prepared_dirs: Sequence[str | os.PathLike]) -> None:
  """Registers `prepared_dirs` here and in Beam workers started after this."""
  from seqio_tasks import registry  # pylint: disable=g-import-not-at-top
  paths = [os.path.abspath(os.path.expanduser(os.fspath(d)))
           for d in prepared_dirs]
  old = [p for p in os.environ.get(PREPARED_DIRS_ENV, "").split(os.pathsep)
         if p]
  os.environ[PREPARED_DIRS_ENV] = os.pathsep.join(
      old + [p for p in paths if p not in old])
  for p in paths:
    registry.register_prepared(p)


def cache_tasks(task_names: Sequence[str], output_dir: str | os.PathLike, *,
                prepared_dirs: Sequence[str | os.PathLike] = (),
                runner: str = "DirectRunner", num_workers: int = 2,
                pipeline_args: Sequence[str] = (),
                overwrite: bool = False) -> list[str]:
  """Caches the tasks (mixtures: their tasks) under `output_dir`.

  Returns the task cache directories written. A task already cached there is
  skipped unless `overwrite`.
  """
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from seqio import beam_utils  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from recjax.data import beam_prepare  # pylint: disable=g-import-not-at-top
  from seqio_tasks import registry  # pylint: disable=g-import-not-at-top

  export_prepared_dirs(prepared_dirs)
  output_dir = os.path.abspath(os.path.expanduser(os.fspath(output_dir)))
  written = []
  with beam.Pipeline(options=beam_prepare.pipeline_options(
      runner, num_workers, pipeline_args)) as p:
    for name in resolve_tasks(task_names):
      task = seqio.get_mixture_or_task(name)
      if not task.supports_caching:
        raise ValueError(f"task {name!r} has no CacheDatasetPlaceholder")
      task_dir = os.path.join(output_dir, seqio.get_task_dir_from_name(name))
      if not overwrite and tf.io.gfile.exists(
          os.path.join(task_dir, "COMPLETED")):
        _log(f"{name}: already cached in {task_dir}; skipped")
        continue
      if tf.io.gfile.exists(task_dir):
        tf.io.gfile.rmtree(task_dir)
      splits = [s for s in task.splits if s != registry.ABSENT_SPLIT]
      for split in splits:
        label = f"{name}_{split}"
        pat = beam_utils.PreprocessTask(task, split,
                                        modules_to_import=["seqio_tasks"])
        num_shards = len(pat.shards)
        examples = (p | f"{label}_pat" >> pat
                    | f"{label}_shuffle" >> beam.Reshuffle())
        _ = examples | f"{label}_write" >> beam_utils.WriteExampleTfRecord(
            seqio.get_cached_tfrecord_prefix(task_dir, split),
            num_shards=num_shards)
        _ = (examples | f"{label}_info" >> beam_utils.GetInfo(num_shards)
             | f"{label}_write_info" >> beam_utils.WriteJson(
                 seqio.get_cached_info_path(task_dir, split)))
        _ = (examples | f"{label}_stats" >> beam_utils.GetStats(
            task.output_features)
             | f"{label}_write_stats" >> beam_utils.WriteJson(
                 seqio.get_cached_stats_path(task_dir, split)))
      written.append(task_dir)
      _log(f"{name}: caching {', '.join(splits)} -> {task_dir}")
  for task_dir in written:  # only once every split is on disk
    with tf.io.gfile.GFile(os.path.join(task_dir, "COMPLETED"), "w") as f:
      f.write("")
  return written


def add_cache_dirs_from_env() -> list[str]:
  """`seqio.add_global_cache_dirs($RECJAX_SEQIO_CACHE_DIRS)`; returns them."""
  dirs = [d for d in os.environ.get(CACHE_DIRS_ENV, "").split(os.pathsep) if d]
  if dirs:
    seqio.add_global_cache_dirs(dirs)
  return dirs
