"""Registers a prepared directory's task files as SeqIO Tasks and Mixtures.

One call, `register_prepared(dir)`, registers `<dataset>_<task>` for every
task and the mixtures `<dataset>_rec` (recommendation tasks),
`<dataset>_rec_aux` (plus the auxiliary tasks) and `<dataset>_rec_conv` (plus
the conversational task). The directory may not exist yet: splits, example
counts and mixing rates are read from `tasks/manifest.json` when a dataset is
first requested, so modules can register the default locations at import time.
"""
from __future__ import annotations

import functools
import os
import pathlib
import re
from typing import Mapping, Sequence

import seqio
import tensorflow as tf

from recjax import slots as slots_lib
from recjax import vocabularies
from recjax.prompts import (ALL_TASKS, AUX_TASKS, CONVERSATION_TASKS,
                            REC_TASKS, TASK_SPLITS)
from recjax.prompts.export import read_manifest
# Layering exception: recjax.infer.metrics is pure numpy (no recjax.train, no
# JAX), so seqio_tasks may attach its metric fns to the tasks it registers.
from recjax.infer import metrics as rec_metrics
from seqio_tasks import slots as slot_preprocessors

EXTRA_IDS = 100
# seqio metric fns by task kind, for `seqio.Evaluator` on text predictions:
# retrieval predictions are ranked item texts joined by "; "; ranking
# predictions one item (hit@1); rating predictions the decoded number.
# recjax.infer.evaluation computes the full set (beam search, likelihoods).
METRIC_FNS = {
    "retrieval": [rec_metrics.retrieval_metric_fn],
    "ranking": [rec_metrics.retrieval_metric_fn],
    "rating": [rec_metrics.rating_metrics],
    "conversation": [rec_metrics.retrieval_metric_fn],
}
ABSENT_SPLIT = "absent_from_manifest"
AUX_WEIGHT = 0.5  # default downweighting of auxiliary tasks in `_rec_aux`
METADATA_FEATURES = ("task", "template_id", "target_item", "candidates",
                     "rating")
FEATURE_DESCRIPTION = {
    "inputs": tf.io.FixedLenFeature([], tf.string),
    "targets": tf.io.FixedLenFeature([], tf.string),
    "task": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "target_item": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "template_id": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "rating": tf.io.FixedLenFeature([], tf.float32,
                                    default_value=float("nan")),
    "candidates": tf.io.VarLenFeature(tf.string),
}
# Records of a directory prepared with slots (`--prompt item_slots=...`).
SLOT_FEATURE_DESCRIPTION = dict(
    FEATURE_DESCRIPTION,
    **{slots_lib.SLOT_FEATURE: tf.io.VarLenFeature(tf.int64)})


class PreparedTaskSource(seqio.TFExampleDataSource):
  """TFExampleDataSource whose splits and sizes come from the manifest, lazily."""

  def __init__(self, prepared_dir: pathlib.Path, task: str,
               feature_description: Mapping[str, tf.io.VarLenFeature] = (
                   FEATURE_DESCRIPTION)):
    self._prepared_dir = prepared_dir
    self._task = task
    patterns = {s: str(prepared_dir / "tasks" / task / f"{s}.tfrecord-*")
                for s in TASK_SPLITS[task]}
    super().__init__(patterns, dict(feature_description))

  @property
  def prepared_dir(self) -> pathlib.Path:
    """The prepared directory (evaluation reads its item catalogue)."""
    return self._prepared_dir

  @property
  def splits(self) -> Sequence[str]:
    manifest = read_manifest(self._prepared_dir)
    if manifest is None:
      return tuple(TASK_SPLITS[self._task])
    # seqio requires a non-empty list; a task the data lacks (e.g. rating on a
    # log without ratings) gets a placeholder so mixtures skip it.
    return tuple(manifest.get("splits", {}).get(self._task, ())) or (
        ABSENT_SPLIT,)

  def num_input_examples(self, split: str) -> int | None:
    manifest = read_manifest(self._prepared_dir)
    if manifest is None:
      return None
    return manifest.get("counts", {}).get(self._task, {}).get(split)


def densify_candidates(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """VarLen `candidates` (and `slot_items`) -> dense 1-D tensors."""

  def fn(ex):
    ex = dict(ex)
    if isinstance(ex.get("candidates"), tf.sparse.SparseTensor):
      ex["candidates"] = tf.sparse.to_dense(ex["candidates"], default_value="")
    if isinstance(ex.get(slots_lib.SLOT_FEATURE), tf.sparse.SparseTensor):
      ex[slots_lib.SLOT_FEATURE] = tf.sparse.to_dense(
          ex[slots_lib.SLOT_FEATURE])
    return ex

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def default_vocabulary(prepared_dir: str | os.PathLike) -> seqio.Vocabulary:
  """The vocabulary the prepared directory's manifest names.

  The embedded default (and any directory without `vocabulary_options` in its
  manifest, or not yet prepared) is `vocab/spiece.model` + 100 extra ids,
  loaded lazily. A vocabulary given to `recjax prepare --vocab` (e.g. a
  Hugging Face `vocab/tokenizer.json`) is loaded now through
  `recjax.vocabularies.load_vocabulary` with the recorded options.
  """
  prepared_dir = pathlib.Path(prepared_dir).expanduser()
  return _manifest_vocabulary(prepared_dir, read_manifest(prepared_dir))


def _manifest_vocabulary(prepared_dir: pathlib.Path,
                         manifest: dict | None) -> seqio.Vocabulary:
  manifest = manifest or {}
  options = manifest.get("vocabulary_options")
  if options is None:
    return seqio.SentencePieceVocabulary(
        str(prepared_dir / "vocab" / "spiece.model"), extra_ids=EXTRA_IDS)
  return vocabularies.load_vocabulary(
      prepared_dir / manifest.get("vocabulary", "vocab/spiece.model"),
      **options)


ITEM_TEXT_TASK = "item_text"  # ILM phase 1; generated from the catalogue


class ItemTextSource(seqio.FunctionDataSource):
  """`recjax.prompts.item_text` records of a prepared directory, made on read.

  One record per item (a catalogue is small), so prepare writes no files
  for it; the item-item positives come from the whole log, which a Beam
  shard of the log could not give.
  """

  def __init__(self, prepared_dir: pathlib.Path):
    self._prepared_dir = prepared_dir
    super().__init__(item_text_dataset_fn(prepared_dir), splits=("train",))

  @property
  def prepared_dir(self) -> pathlib.Path:
    return self._prepared_dir


def register_item_text(prepared_dir: str | os.PathLike, name: str,
                       vocabulary: seqio.Vocabulary) -> str:
  """Registers (or replaces) the ILM phase-1 task `name` of a prepared dir.

  `register_prepared` registers `<dataset>_item_text` in the directory's
  vocabulary; an item encoder initialised from BERT reads the texts in BERT's
  WordPiece vocabulary instead (`recjax.train.ilm_model.item_text_task`).
  """
  features = {
      key: seqio.Feature(vocabulary, add_eos=vocabulary.eos_id is not None,
                         required=key == "inputs")
      for key in ("inputs", "targets")}
  features[slots_lib.SLOT_FEATURE] = seqio.Feature(
      seqio.PassThroughVocabulary(1), add_eos=False, required=False,
      dtype=tf.int32)
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=ItemTextSource(pathlib.Path(prepared_dir).expanduser()),
      preprocessors=[slot_preprocessors.tokenize_with_slots,
                     seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      output_features=features)
  return name


def item_text_dataset_fn(prepared_dir: pathlib.Path):
  """The dataset_fn of `ItemTextSource`."""
  from recjax.data.prepared import PreparedData  # pylint: disable=g-import-not-at-top
  from recjax.prompts import PromptConfig, item_text  # pylint: disable=g-import-not-at-top

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed  # one deterministic record per item
    manifest = read_manifest(prepared_dir) or {}
    data = PreparedData.load(prepared_dir)
    examples = list(item_text.generate(data, split, PromptConfig(),
                                       int(manifest.get("seed", 0))))
    return tf.data.Dataset.from_tensor_slices({
        "inputs": [ex["inputs"] for ex in examples],
        "targets": [ex["targets"] for ex in examples],
        "target_item": [ex["target_item"] for ex in examples],
        slots_lib.SLOT_FEATURE: tf.constant(
            [ex[slots_lib.SLOT_FEATURE] for ex in examples], tf.int64),
    })

  return dataset_fn


def has_slots(manifest: Mapping | None) -> bool:
  """Whether the directory was prepared with item slots (`recjax.slots`)."""
  config = (manifest or {}).get("config") or {}
  return config.get("item_slots", "none") != "none"


def dataset_name_for(prepared_dir: str | os.PathLike) -> str:
  manifest = read_manifest(prepared_dir)
  name = (manifest or {}).get("dataset") or pathlib.Path(
      prepared_dir).expanduser().name
  return sanitize(name)


def sanitize(name: str) -> str:
  return re.sub(r"[^0-9a-zA-Z_]+", "_", name).strip("_").lower() or "dataset"


def _count_rate(task: seqio.Task, *, prepared_dir: pathlib.Path, short: str,
                weight: float) -> float:
  """Rate = training examples (from the manifest) x weight; 1 x weight if unknown."""
  manifest = read_manifest(prepared_dir)
  if manifest is None:
    return weight
  return weight * float(manifest.get("counts", {}).get(short, {}).get(
      "train", 0))


def register_prepared(prepared_dir: str | os.PathLike, *,
                      dataset_name: str | None = None,
                      vocabulary: seqio.Vocabulary | None = None,
                      rec_aux_rates: Mapping[str, float] | None = None,
                      overwrite: bool = True) -> list[str]:
  """Registers `<dataset>_<task>` Tasks and the `_rec`/`_rec_aux`/`_rec_conv`
  Mixtures.

  Args:
    prepared_dir: a prepared directory with `tasks/` written by
      `recjax.prompts.export.write_task_files` (may be created later).
    dataset_name: prefix of the names (default: the manifest's dataset name,
      else the directory name), lower-cased, non-word characters -> '_'.
    vocabulary: vocabulary of inputs and targets (default:
      `default_vocabulary(prepared_dir)`: the directory's `vocab/spiece.model`
      with 100 extra ids, or the vocabulary `recjax prepare --vocab` recorded,
      e.g. a Hugging Face tokenizer.json); e.g. FLAN-T5's spiece.model.
    rec_aux_rates: mixing rates of `<dataset>_rec_aux` by task (short or full
      name); missing tasks get the default, training-example count (x0.5 for
      auxiliary tasks).
    overwrite: replace providers of the same name (re-registration is then
      idempotent); if False, existing names are kept and skipped.

  Returns:
    The registered names, tasks first, then the mixtures: `_rec`, `_rec_aux`
    and, when the data has the conversation task, `_rec_conv` (the rec tasks
    plus conversation, rates by training-example count as in `_rec`).
  """
  prepared_dir = pathlib.Path(prepared_dir).expanduser()
  name = sanitize(dataset_name) if dataset_name else dataset_name_for(
      prepared_dir)
  manifest = read_manifest(prepared_dir)
  vocab = vocabulary or _manifest_vocabulary(prepared_dir, manifest)
  output_features = {
      "inputs": seqio.Feature(vocab, add_eos=True, required=True),
      "targets": seqio.Feature(vocab, add_eos=True),
  }
  with_slots = has_slots(manifest)
  slot_output_features = dict(output_features, **{
      slots_lib.SLOT_FEATURE: seqio.Feature(
          seqio.PassThroughVocabulary(1), add_eos=False, required=False,
          dtype=tf.int32)})
  tasks = [t for t in ALL_TASKS
           if manifest is None or t in manifest.get("tasks", ())]
  registered = []

  def _add(registry, full: str, **kwargs) -> None:
    if full in registry.names():
      if not overwrite:
        return
      registry.remove(full)
    registry.add(full, **kwargs)
    registered.append(full)

  for t in tasks:
    task_slots = with_slots
    if task_slots:
      source = PreparedTaskSource(prepared_dir, t, SLOT_FEATURE_DESCRIPTION)
      preprocessors = [
          densify_candidates,
          slot_preprocessors.tokenize_with_slots,
          seqio.CacheDatasetPlaceholder(),
          slot_preprocessors.expand_slots,
          seqio.preprocessors.append_eos_after_trim,
      ]
    else:
      source = PreparedTaskSource(prepared_dir, t)
      preprocessors = [
          densify_candidates,
          seqio.preprocessors.tokenize,
          seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim,
      ]
    _add(seqio.TaskRegistry, f"{name}_{t}",
         source=source,
         preprocessors=preprocessors,
         output_features=(slot_output_features if task_slots
                          else output_features),
         metric_fns=list(METRIC_FNS.get(t, ())))

  item_text = f"{name}_{ITEM_TEXT_TASK}"
  if manifest is not None and (
      overwrite or item_text not in seqio.TaskRegistry.names()):
    registered.append(register_item_text(prepared_dir, item_text, vocab))

  rates = {}
  for t in tasks:
    weight = 1.0 if t in REC_TASKS else AUX_WEIGHT
    given = None
    if rec_aux_rates:
      given = rec_aux_rates.get(t, rec_aux_rates.get(f"{name}_{t}"))
    rates[t] = float(given) if given is not None else functools.partial(
        _count_rate, prepared_dir=prepared_dir, short=t, weight=weight)

  rec = [t for t in tasks if t in REC_TASKS]
  if rec:
    _add(seqio.MixtureRegistry, f"{name}_rec",
         tasks=[(f"{name}_{t}", functools.partial(
             _count_rate, prepared_dir=prepared_dir, short=t, weight=1.0))
                for t in rec])
    _add(seqio.MixtureRegistry, f"{name}_rec_aux",
         tasks=[(f"{name}_{t}", rates[t]) for t in tasks
                if t in REC_TASKS + AUX_TASKS])
  conv = [t for t in tasks if t in CONVERSATION_TASKS]
  if conv:
    _add(seqio.MixtureRegistry, f"{name}_rec_conv",
         tasks=[(f"{name}_{t}", functools.partial(
             _count_rate, prepared_dir=prepared_dir, short=t, weight=1.0))
                for t in rec + conv])
  return registered


__all__ = ["register_prepared", "default_vocabulary", "read_manifest",
           "PreparedTaskSource", "FEATURE_DESCRIPTION", "METADATA_FEATURES",
           "AUX_TASKS"]


# ---- the prepared directory behind a task -----------------------------------
def leaf_tasks(mixture_or_task_name: str) -> list[seqio.Task]:
  """The tasks of a mixture (sub-mixtures expanded), or the task itself."""
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  if isinstance(provider, seqio.Mixture):
    return list(provider.tasks)
  return [provider]


def prepared_dir_of(task: seqio.Task) -> pathlib.Path | None:
  """The prepared directory a registered task reads (None: not recjax's)."""
  src = task.source
  d = getattr(src, "prepared_dir", None) or getattr(src, "_prepared_dir", None)
  return pathlib.Path(d) if d is not None else None


def prepared_dir_of_task(mixture_or_task_name: str) -> pathlib.Path:
  """The prepared directory behind a registered task or mixture (its first
  task that has one); models sized by the catalogue read it."""
  for task in leaf_tasks(mixture_or_task_name):
    d = prepared_dir_of(task)
    if d is not None:
      return d
  raise ValueError(f"{mixture_or_task_name!r} has no prepared directory "
                   "(a model that reads the catalogue needs one).")

