"""Writes prompt examples as sharded TFRecord files plus the default vocabulary.

Layout, inside an existing (usually temporary, see
`recjax.data.prepared.atomic_directory`) prepared directory:

  tasks/<task>/<split>.tfrecord-0000i-of-0000N   tf.train.Example records
  tasks/manifest.json                            tasks, splits, counts, files,
                                                 config, seed, vocabulary
  vocab/spiece.model                             SentencePiece (unigram,
                                                 byte fallback, pad=0 eos=1
                                                 unk=2; seqio adds 100 extra ids)
  vocab/tokenizer.json (+ config files)          instead, for a given Hugging
                                                 Face tokenizer (decoder-only
                                                 models); the manifest names it

Every record has string features `inputs`, `targets`, `task`, `target_item`,
bytes list `candidates`, int64 `template_id` and float `rating` (NaN if none).

Records are serialized by hand (the tf.train.Example wire format is five
nested length-delimited messages), which is several times faster than building
protos, and the work is split into (task, split, shard) units run by a pool
of worker processes (children of a fork server, not of the caller). Shards
hold every `num_shards`-th user (or item); because every example draws from
its own (seed, task, split, unit) generator, the union of the shards does
not depend on the shard count or on the number of processes.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import json
import math
import multiprocessing
import os
import pathlib
import shutil
import struct
import sys
import time
from typing import Any, Iterable, Sequence

from recjax.data.prepared import PreparedData
from recjax.data.split import SPLITS
from recjax.prompts import (ALL_TASKS, AUX_TASKS, REC_TASKS, TASK_SPLITS, TASKS,
                            mlm)
from recjax.prompts import common
from recjax.prompts.common import PromptConfig

MANIFEST_FORMAT = "recjax.tasks/1"
DEFAULT_VOCAB_SIZE = 4000
VOCAB_PATH = "vocab/spiece.model"
# Feature spec of the records (also used by seqio_tasks to parse them).
STRING_FEATURES = ("inputs", "targets", "task", "target_item")
INT_FEATURES = ("template_id",)
FLOAT_FEATURES = ("rating",)
LIST_FEATURES = ("candidates",)
INT_LIST_FEATURES = ("slot_items",)  # only in records with slots (recjax.slots)
_EXAMPLES_PER_SHARD = 250_000


# ---- tf.train.Example wire format -----------------------------------------------
# Example{features=1: Features{feature=1: map<string, Feature>}}; a map entry is
# {key=1, value=2}; Feature{bytes_list=1 | float_list=2 | int64_list=3}; each
# list has its values in field 1 (packed for numbers). All fields here are
# length-delimited (wire type 2), so every tag byte is (field << 3) | 2.
def _encode_varint(n: int) -> bytes:
  out = bytearray()
  while n > 0x7f:
    out.append((n & 0x7f) | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


_VARINTS = [_encode_varint(n) for n in range(1 << 16)]  # ~3 MB; lengths < 64 KiB


def _varint(n: int) -> bytes:
  return _VARINTS[n] if n < 65536 else _encode_varint(n)


def _ld(payload: bytes) -> bytes:
  """Field 1 or 2 length prefix without the tag: varint(len) + payload."""
  return _varint(len(payload)) + payload


def _entry(key: str, feature: bytes) -> bytes:
  """One Features.feature map entry, tag included: {key=1, value=2}."""
  body = _KEY_PREFIX[key] + _ld(feature)
  return b"\n" + _ld(body)


class _BytesValues(dict):
  """str -> one encoded BytesList value, tag included.

  Candidates repeat the catalogue's item ids, so each is encoded once;
  `map(cache.__getitem__, ...)` stays in C except on a miss.
  """

  def __missing__(self, text: str) -> bytes:
    value = b"\n" + _ld(text.encode())
    self[text] = value
    return value


_BYTES_VALUES = _BytesValues()


_KEY_PREFIX = {k: b"\n" + _ld(k.encode()) + b"\x12"
               for k in (STRING_FEATURES + INT_FEATURES + FLOAT_FEATURES +
                         LIST_FEATURES + INT_LIST_FEATURES)}


@functools.lru_cache(maxsize=None)
def _int_entry(key: str, value: int) -> bytes:
  return _entry(key, b"\x1a" + _ld(b"\n" + _ld(_varint(value & (2**64 - 1)))))


@functools.lru_cache(maxsize=4096)
def _float_entry(key: str, value: float) -> bytes:
  return _entry(key, b"\x12" + _ld(b"\n" + _ld(struct.pack("<f", value))))


_NAN_RATING = _float_entry("rating", math.nan)


def _int_list_entry(key: str, values: Sequence[int]) -> bytes:
  """entry{key, value=Feature{int64_list=Int64List{value=[...] packed}}}."""
  packed = b"".join(_varint(int(v)) for v in values)
  return _entry(key, b"\x1a" + _ld(b"\n" + _ld(packed)))


def _string_entry(prefix: bytes, v: bytes) -> bytes:
  """entry{key, value=Feature{bytes_list=BytesList{value=[v]}}}, tag included.

  Lengths are computed instead of nesting messages, so `v` is copied once.
  """
  l1 = _varint(len(v))
  bl = 1 + len(l1) + len(v)
  l2 = _varint(bl)
  fl = 1 + len(l2) + bl
  l3 = _varint(fl)
  return b"".join((b"\n", _varint(len(prefix) + len(l3) + fl), prefix, l3,
                   b"\n", l2, b"\n", l1, v))


class _TaskEntries(dict):
  """Task name -> its encoded `task` entry (the same for a whole file)."""

  def __missing__(self, task: str) -> bytes:
    value = _string_entry(_KEY_PREFIX["task"], task.encode())
    self[task] = value
    return value


_TASK_ENTRIES = _TaskEntries()
_P_INPUTS, _P_TARGETS, _P_TARGET_ITEM = (
    _KEY_PREFIX["inputs"], _KEY_PREFIX["targets"], _KEY_PREFIX["target_item"])


def serialize_example(ex: dict[str, Any]) -> bytes:
  """tf.train.Example bytes for one prompt example (see module docstring)."""
  rating = float(ex.get("rating", math.nan))
  cands = b"".join(map(_BYTES_VALUES.__getitem__, ex.get("candidates", ())))
  body = b"".join((
      _string_entry(_P_INPUTS, ex["inputs"].encode()),
      _string_entry(_P_TARGETS, ex["targets"].encode()),
      _TASK_ENTRIES[ex.get("task", "")],
      _string_entry(_P_TARGET_ITEM, ex.get("target_item", "").encode()),
      _entry("candidates", b"\n" + _ld(cands)),
      _int_entry("template_id", int(ex.get("template_id", 0))),
      _NAN_RATING if math.isnan(rating) else _float_entry("rating", rating),
      _int_list_entry("slot_items", ex["slot_items"]) if ex.get("slot_items")
      else b"",
  ))
  return b"\n" + _varint(len(body)) + body


# ---- work units -----------------------------------------------------------------
_STATE: dict[str, Any] = {}  # what a unit reads: set here, and in workers

# Workers start from a fork server that has imported this module and
# TensorFlow and nothing else (no JAX, no threads): forking the caller, which
# may have started JAX's or TensorFlow's threads, can deadlock a child.
_PRELOAD = ["tensorflow", __name__]


def _init_worker(state: dict[str, Any]) -> None:
  _STATE.clear()
  _STATE.update(state)


def _log(msg: str) -> None:
  print(f"[recjax.prompts.export] {msg}", file=sys.stderr, flush=True)


def shard_path(task: str, split: str, index: int, count: int) -> str:
  return f"tasks/{task}/{split}.tfrecord-{index:05d}-of-{count:05d}"


def write_shard_file(data, directory: pathlib.Path, task: str, split: str,
                     index: int, count: int, *, config: PromptConfig,
                     seed: int) -> int:
  """Writes shard `index` of `count` of one (task, split); returns its size.

  `data` is a `PreparedData` or anything the prompt functions read the same
  way (`recjax.data.beam_prepare.ShardView`); both writers call this, so their
  shards are the same bytes.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  n = 0
  path = pathlib.Path(directory) / shard_path(task, split, index, count)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for ex in TASKS[task](data, split, config, seed, shard=(index, count)):
      writer.write(serialize_example(ex))
      n += 1
  return n


def _write_unit(unit: tuple[str, str, int, int]) -> tuple[str, str, int, int,
                                                          float]:
  task, split, index, count = unit
  start = time.perf_counter()
  n = write_shard_file(_STATE["data"], _STATE["directory"], task, split, index,
                       count, config=_STATE["config"], seed=_STATE["seed"])
  return task, split, index, n, time.perf_counter() - start


def _vocab_sentences(data: PreparedData, config: PromptConfig, seed: int,
                     tasks: Sequence[str], max_prompts_per_task: int,
                     max_items: int) -> Iterable[str]:
  """Item texts (an even sample of at most `max_items`), then prompt samples."""
  for item in data.items[::max(1, math.ceil(data.num_items / max_items))]:
    text = mlm.item_text(item)
    if text:
      yield text
  for task in tasks:
    # The vocabulary learns the words of the alignment prompts; the other
    # families (conversation, item_text) reuse them, and the vocabulary of a
    # directory does not change when a family is added.
    if task == "mlm" or task not in REC_TASKS + AUX_TASKS:
      continue
    n_units = data.num_items if task == "ie" else data.num_users
    stride = max(1, n_units // max(1, max_prompts_per_task // 4))
    for ex in itertools.islice(
        TASKS[task](data, "train", config, seed, shard=(0, stride)),
        max_prompts_per_task):
      # Long prompts (100 candidates) are cut at item boundaries so that
      # SentencePiece does not drop them as over-long sentences.
      yield from ex["inputs"].split("; ")
      yield ex["targets"]


def item_token_pieces(data: PreparedData, config: PromptConfig) -> list[str]:
  """The vocabulary pieces of the items' own tokens (none unless the config's
  item format is a token format); an id that cannot be one piece (it holds
  whitespace) is refused, naming it."""
  if config.item_format not in common.TOKEN_FORMATS:
    return []
  pieces = []
  for item in data.items:
    item_id = str(item["id"])
    if not item_id or any(c.isspace() for c in item_id):
      raise ValueError(
          f"item_format={config.item_format!r}: item id {item_id!r} cannot "
          "be one vocabulary token (it is empty or holds whitespace); use "
          "--item_format=title_id")
    pieces.append(common.item_token_piece(item_id))
  return pieces


def check_item_tokens(vocab: Any, data: PreparedData, config: PromptConfig,
                      source: str) -> None:
  """A given vocabulary must hold every item token as one piece (it is one
  that prepare trained with the same token format), else refused."""
  if config.item_format not in common.TOKEN_FORMATS:
    return
  for item in data.items:
    token = common.item_token(str(item["id"]))
    ids = list(vocab.encode(token))
    if len(ids) != 1:
      raise ValueError(
          f"--vocab {source}: item_format={config.item_format!r} needs each "
          f"item as one token, but {token!r} encodes to {len(ids)} tokens; "
          "give the vocabulary that prepare trained on this catalogue with "
          "the same --item_format (its vocab/spiece.model), or use "
          "--item_format=title_id")


def train_vocabulary(data: PreparedData, path: pathlib.Path, *,
                     config: PromptConfig, seed: int = 0,
                     tasks: Sequence[str] = ALL_TASKS,
                     vocab_size: int = DEFAULT_VOCAB_SIZE,
                     max_prompts_per_task: int = 2000,
                     input_sentence_size: int = 300_000) -> int:
  """Trains the T5-style SentencePiece model; returns its vocabulary size.

  With a token item format (`common.TOKEN_FORMATS`) every item's token is a
  user-defined piece, added on top of `vocab_size` text pieces."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  item_pieces = item_token_pieces(data, config)
  sentences = list(itertools.islice(
      _vocab_sentences(data, config, seed, tasks, max_prompts_per_task,
                       max_items=int(input_sentence_size) // 2),
      int(input_sentence_size)))
  # Byte fallback needs 256 byte pieces besides the characters and specials.
  chars = len(set().union(*map(set, sentences))) if sentences else 0
  vocab_size = max(int(vocab_size), 256 + 4 + chars + 8) + len(item_pieces)
  model = io.BytesIO()
  spm.set_random_generator_seed(int(seed) + 1)  # sentence sampling/shuffling
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences),
      model_writer=model, model_type="unigram", vocab_size=vocab_size,
      hard_vocab_limit=False, byte_fallback=True, character_coverage=0.9995,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
      eos_piece="</s>", unk_piece="<unk>",
      user_defined_symbols=["[MASK]"] + item_pieces,
      input_sentence_size=int(input_sentence_size),
      shuffle_input_sentence=True, num_threads=1,
      minloglevel=2)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(model.getvalue())
  sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
  return sp.get_piece_size()


def _vocab_unit(args) -> tuple[str, str, int, int, float]:
  tasks, vocab_size = args
  start = time.perf_counter()
  size = train_vocabulary(_STATE["data"], _STATE["directory"] / VOCAB_PATH,
                          config=_STATE["config"], seed=_STATE["seed"],
                          tasks=tasks, vocab_size=vocab_size)
  return "<vocab>", "", 0, size, time.perf_counter() - start


def _run(unit):
  if unit[0] == "<vocab>":
    return _vocab_unit(unit[1])
  return _write_unit(unit)


def _run_in_processes(work: Sequence[Any], num_workers: int):
  """`_run(unit)` for every unit, in completion order, from worker processes
  (a fork server's children, given `_STATE` once each).

  A worker that dies (a segfault, the OOM killer) breaks the pool; the units
  not yet returned are then written again in this process (a unit rewrites
  its whole shard), so the run neither hangs, as `multiprocessing.Pool`
  does on a task its dead worker held, nor loses a shard.
  """
  from concurrent import futures  # pylint: disable=g-import-not-at-top
  done = set()
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload(_PRELOAD)
  pool = futures.ProcessPoolExecutor(
      num_workers, mp_context=context, initializer=_init_worker,
      initargs=(dict(_STATE),))
  try:
    pending = {pool.submit(_run, unit): k for k, unit in enumerate(work)}
    for future in futures.as_completed(pending):
      result = future.result()
      done.add(pending[future])
      yield result
  except futures.process.BrokenProcessPool as e:
    lost = [unit for k, unit in enumerate(work) if k not in done]
    _log(f"a worker process died ({e}); writing the {len(lost)} unit(s) it "
         "left unfinished in this process")
    for unit in lost:
      yield _run(unit)
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def _unit_cost(unit, data: PreparedData) -> float:
  task, split = unit[0], unit[1]
  if task == "<vocab>":
    return 1e18
  per_user = {"retrieval": 10, "rating": 10, "ranking": 6, "bpr": 3,
              "mim": 2}.get(task, 1)
  size = (data.num_items if task in ("mlm", "ie") else
          data.num_interactions * per_user / 10)
  return size * (3 if split == "train" else 1) / unit[3]


# ---- the entry point ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TaskPlan:
  """What a task-file writer decides before writing (`plan_task_files`)."""
  tasks: tuple[str, ...]  # to write: `rating` dropped when data has no ratings
  skipped: list[str]
  pairs: list[tuple[str, str]]  # (task, split) files to write
  num_shards: int
  train_vocab: bool
  vocab_size: int  # of the vocabulary to train
  vocabulary: dict[str, Any]  # the manifest's vocabulary* entries
  given_vocab_size: int | None  # tokens of a given vocabulary


def plan_task_files(data: PreparedData, directory: pathlib.Path, *,
                    tasks: Sequence[str] | None, splits: Sequence[str],
                    num_shards: int | None, vocab_size: int | None,
                    train_vocab: bool,
                    vocab_model: str | os.PathLike | None,
                    pad_swap_id: int | str | None,
                    config: PromptConfig) -> TaskPlan:
  """Checks the arguments, copies a given vocabulary, clears stale shards.

  The first step of `write_task_files` and of its Beam twin
  (`recjax.data.beam_prepare`); arguments as `write_task_files` takes them.
  """
  if not directory.is_dir():
    raise FileNotFoundError(f"{directory} does not exist")
  tasks = tuple(ALL_TASKS if tasks is None else tasks)
  for t in tasks:
    if t not in TASKS:
      raise ValueError(f"unknown task {t!r}; expected some of {ALL_TASKS}")
  for s in splits:
    if s not in SPLITS:
      raise ValueError(f"unknown split {s!r}; expected some of {SPLITS}")
  skipped = []
  if "rating" in tasks and not data.has_ratings:
    skipped.append("rating")
    tasks = tuple(t for t in tasks if t != "rating")
  if num_shards is None:
    num_shards = max(1, min(16, math.ceil(data.num_interactions /
                                          _EXAMPLES_PER_SHARD)))
  vocabulary: dict[str, Any] = {
      "vocabulary": VOCAB_PATH if train_vocab else None,
      "vocabulary_source": "trained"}
  given_vocab_size = None
  if vocab_model is not None:
    vocab_model = pathlib.Path(vocab_model).expanduser()
    train_vocab = False
    path, options, given_vocab_size = _copy_vocabulary(
        vocab_model, directory, pad_swap_id,
        check=lambda vocab: check_item_tokens(vocab, data, config,
                                              str(vocab_model)))
    vocabulary = {"vocabulary": path, "vocabulary_source": str(vocab_model),
                  "vocabulary_options": options}
  elif train_vocab:
    item_token_pieces(data, config)  # refuses unusable ids before any work

  pairs = [(t, s) for t in tasks for s in splits if s in TASK_SPLITS[t]]
  for t, s in pairs:
    (directory / "tasks" / t).mkdir(parents=True, exist_ok=True)
    for stale in (directory / "tasks" / t).glob(f"{s}.tfrecord-*"):
      stale.unlink()  # a previous run's shards would match the file pattern
  return TaskPlan(tasks=tasks, skipped=skipped, pairs=pairs,
                  num_shards=int(num_shards), train_vocab=bool(train_vocab),
                  vocab_size=int(vocab_size or DEFAULT_VOCAB_SIZE),
                  vocabulary=vocabulary, given_vocab_size=given_vocab_size)


def write_manifest(data: PreparedData, directory: pathlib.Path,
                   plan: TaskPlan, *, config: PromptConfig, seed: int,
                   counts: dict[str, dict[str, int]],
                   trained_vocab_size: int | None,
                   seconds: float) -> dict[str, Any]:
  """Drops empty (task, split) files, writes and returns the manifest.

  The last step of `write_task_files` and of its Beam twin; `counts` holds
  examples per task and split (absent: none).
  """
  num_shards = plan.num_shards
  counts = {t: dict(counts.get(t, {})) for t, _ in plan.pairs}
  files: dict[str, dict[str, list[str]]] = {}
  patterns: dict[str, dict[str, str]] = {}
  for t, s in plan.pairs:
    if counts[t].get(s, 0) == 0:  # e.g. no user long enough for held-out items
      for i in range(num_shards):
        (directory / shard_path(t, s, i, num_shards)).unlink(missing_ok=True)
      counts[t].pop(s, None)
      continue
    files.setdefault(t, {})[s] = [shard_path(t, s, i, num_shards)
                                  for i in range(num_shards)]
    patterns.setdefault(t, {})[s] = f"tasks/{t}/{s}.tfrecord-*-of-{num_shards:05d}"
  present = [t for t in plan.tasks if files.get(t)]
  manifest = {
      "format": MANIFEST_FORMAT,
      "dataset": data.name,
      "tasks": present,
      "splits": {t: list(files[t]) for t in present},
      "counts": {t: counts[t] for t in present},
      "files": files,
      "file_patterns": patterns,
      "num_shards": num_shards,
      "features": {"string": list(STRING_FEATURES), "int64": list(INT_FEATURES),
                   "float": list(FLOAT_FEATURES),
                   "bytes_list": list(LIST_FEATURES),
                   "int64_list": list(INT_LIST_FEATURES)},
      "config": config.to_json(),
      "seed": seed,
      **plan.vocabulary,
      "vocab_size": (plan.given_vocab_size if trained_vocab_size is None
                     else trained_vocab_size),
      "has_ratings": data.has_ratings,
      "skipped_tasks": plan.skipped,
      "seconds": round(seconds, 3),
  }
  with open(manifest_file(directory), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
    f.write("\n")
  return manifest


def write_task_files(data: PreparedData, directory: pathlib.Path, *,
                     config: PromptConfig, seed: int = 0,
                     tasks: Sequence[str] | None = None,
                     splits: Sequence[str] = SPLITS,
                     num_shards: int | None = None,
                     vocab_size: int | None = None, train_vocab: bool = True,
                     vocab_model: str | os.PathLike | None = None,
                     pad_swap_id: int | str | None = "auto",
                     num_workers: int | None = None) -> dict[str, Any]:
  """Writes every (task, split) of `data` under `directory`; returns the manifest.

  Args:
    data: the prepared dataset.
    directory: an existing directory (the prepared dir or its temporary twin).
    config: how prompts are written.
    seed: seed of every random choice.
    tasks: task names (default: all; `rating` only when the data has ratings).
    splits: splits to write; auxiliary tasks have no test split.
    num_shards: files per (task, split); default grows with the log size
      (one per ~250k interactions, at most 16).
    vocab_size: SentencePiece vocabulary size (default 4000).
    train_vocab: train `vocab/spiece.model` from the catalogue and a sample of
      prompts (runs in parallel with the task files).
    vocab_model: a user-given vocabulary instead of training one: a
      SentencePiece model (FLAN-T5's `spiece.model`, Llama-2's
      `tokenizer.model`), copied to `vocab/spiece.model`; or a Hugging Face
      `tokenizer.json` or checkpoint directory holding one, copied with its
      config files to `vocab/` (see `recjax.vocabularies.load_vocabulary`).
    pad_swap_id: for a Hugging Face tokenizer: `HfTokenizerVocabulary`'s
      option; the resolved value is recorded in the manifest
      (`vocabulary_options`) and must equal the model's
      `DecoderOnlyConfig.pad_swap_id`.
    num_workers: processes (default: up to 2 for logs of 50k+ interactions).
  """
  directory = pathlib.Path(directory)
  plan = plan_task_files(
      data, directory, tasks=tasks, splits=splits, num_shards=num_shards,
      vocab_size=vocab_size, train_vocab=train_vocab, vocab_model=vocab_model,
      pad_swap_id=pad_swap_id, config=config)
  if num_workers is None:
    num_workers = min(2, os.cpu_count() or 1) if (
        data.num_interactions >= 50_000) else 1
  num_shards = plan.num_shards
  work: list[Any] = [(t, s, i, num_shards) for t, s in plan.pairs
                     for i in range(num_shards)]
  if plan.train_vocab:
    work.append(("<vocab>", (plan.tasks, plan.vocab_size), 0, 1))
  work.sort(key=lambda u: -_unit_cost(u, data))

  _STATE.update(data=data, config=config, seed=seed, directory=directory)
  counts: dict[str, dict[str, int]] = {t: {} for t, _ in plan.pairs}
  seconds: dict[str, float] = {}
  trained_vocab_size = None
  start = time.perf_counter()
  _log(f"{data.name}: {len(plan.pairs)} task/split pairs x {num_shards} "
       f"shards, {num_workers} process(es)" + (
           ", training vocabulary" if plan.train_vocab else ""))
  try:
    if num_workers > 1:
      results = list(_report(_run_in_processes(work, num_workers), work))
    else:
      results = list(_report(map(_run, work), work))
  finally:
    _STATE.clear()
  for task, split, _, n, secs in results:
    if task == "<vocab>":
      trained_vocab_size = n
      continue
    counts[task][split] = counts[task].get(split, 0) + n
    seconds[task] = seconds.get(task, 0.0) + secs
  for task in counts:
    total = sum(counts[task].values())
    _log(f"{task}: {total:,} examples "
         f"({total / max(seconds[task], 1e-9):,.0f}/s per process)")
  return write_manifest(data, directory, plan, config=config, seed=seed,
                        counts=counts, trained_vocab_size=trained_vocab_size,
                        seconds=time.perf_counter() - start)


def _copy_vocabulary(given: pathlib.Path, directory: pathlib.Path,
                     pad_swap_id: int | str | None, check=None
                     ) -> tuple[str, dict[str, Any], int]:
  """Copies a user-given vocabulary into `directory/vocab/`, checked first
  (and by `check(vocab)`, e.g. for the item tokens).

  Returns its path relative to `directory`, the options that load it
  (`recjax.vocabularies.load_vocabulary`), and its number of tokens.
  """
  from recjax import vocabularies  # pylint: disable=g-import-not-at-top
  try:
    vocab = vocabularies.load_vocabulary(given, pad_swap_id=pad_swap_id)
  except (OSError, ValueError) as e:
    raise type(e)(f"--vocab {given}: {e}") from None
  if check is not None:
    check(vocab)
  (directory / VOCAB_PATH).parent.mkdir(parents=True, exist_ok=True)
  if isinstance(vocab, vocabularies.HfTokenizerVocabulary):
    source = pathlib.Path(vocab.tokenizer_file)
    for name in (vocabularies.TOKENIZER_JSON, vocabularies.TOKENIZER_CONFIG,
                 vocabularies.SPECIAL_TOKENS_MAP,
                 vocabularies.GENERATION_CONFIG):
      if (source.parent / name).is_file():
        shutil.copyfile(source.parent / name, directory / "vocab" / name)
    _log(f"vocabulary: {source} ({vocab.vocab_size} tokens, bos "
         f"{vocab.bos_id}, eos {vocab.eos_id}, pad_swap_id "
         f"{vocab.pad_swap_id})")
    return (f"vocab/{vocabularies.TOKENIZER_JSON}",
            {"pad_swap_id": vocab.pad_swap_id}, vocab.vocab_size)
  shutil.copyfile(vocab.sentencepiece_model_file, directory / VOCAB_PATH)
  return VOCAB_PATH, {"extra_ids": vocab.extra_ids}, (
      vocab.vocab_size - vocab.extra_ids)


def manifest_file(prepared_dir: str | os.PathLike) -> pathlib.Path:
  """Where `write_task_files` records what it wrote (readers cache on it)."""
  return pathlib.Path(prepared_dir).expanduser() / "tasks" / "manifest.json"


def read_manifest(prepared_dir: str | os.PathLike) -> dict[str, Any] | None:
  """The task manifest of a prepared directory; None if none was written."""
  path = manifest_file(prepared_dir)
  if not path.is_file():
    return None
  try:
    manifest = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
  if manifest.get("format") != MANIFEST_FORMAT:
    raise ValueError(f"{path}: format {manifest.get('format')!r}, this "
                     f"recjax reads {MANIFEST_FORMAT!r}; re-run `recjax "
                     "prepare`")
  return manifest


def _report(results, work):
  total = len(work)
  start = time.perf_counter()
  for k, r in enumerate(results, 1):
    task, split, index, n, secs = r
    if task == "<vocab>":
      _log(f"[{k}/{total}] vocabulary: {n} pieces in {secs:.1f}s")
    else:
      _log(f"[{k}/{total}] {task}/{split} shard {index}: {n:,} examples in "
           f"{secs:.1f}s ({n / max(secs, 1e-9):,.0f}/s); "
           f"{time.perf_counter() - start:.1f}s elapsed")
    yield r
