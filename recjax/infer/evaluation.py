"""Inference evaluation of recommendation tasks, shared by `recjax eval` and the
trainer's periodic inference evaluation (`train(inference_evaluator=...)`).

Per task of a mixture (or one task) on a split, by the task's kind (the
suffix of `<dataset>_<kind>`; auxiliary tasks are skipped with a note):

* retrieval: constrained beam search over the catalogue trie of every item's
  target text -> ranked item ids -> Recall/HitRate@{1,5,10,20},
  NDCG@{5,10,20}, MRR; unconstrained greedy generation -> `valid_ratio`.
* ranking: log-likelihood of each example's candidates (`score_candidates`)
  -> hit@{1,5,10}, ndcg@{5,10}, mrr; greedy generation -> LLaRA metrics
  (`llara_hit_ratio@1` over valid outputs, `llara_valid_ratio`).
* rating: greedy decoding -> RMSE/MAE of the decoded number; the
  likelihoods of the rating strings ("1".."5") -> `expected_rmse/mae`.

Batches are sharded over the partitioner's mesh (the global batch is padded
to its size and the padded rows dropped); outputs are replicated, so every
host of a multi-host run sees all predictions (each host reads the whole
split and feeds its slice of every global batch).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

from absl import logging
import gin
import jax
import numpy as np
import seqio

from recjax import slots
from recjax.data import prepared as prepared_lib
from recjax.data.prepared import atomic_write
from recjax.infer import metrics as rec_metrics
from recjax.infer import predict as predict_lib
from recjax.infer import trie as trie_lib
from recjax.prompts import common as prompt_common
from recjax.prompts import export
from recjax.train import metrics_writer as metrics_writer_lib
from recjax.train import model_api
from recjax.train import partitioning

PyTree = Any
REC_KINDS = ('retrieval', 'ranking', 'rating')
INFER_EVAL_SPLIT = 'infer_eval'   # TensorBoard/metrics.jsonl split name
RANKING_KS = (1, 5, 10)
LENGTH_BUCKET = 128  # encoder inputs are padded to a multiple of this
_SEP = '\x1f'  # never in decoded text: one generation = one item


# ------------------------------------------------------------------ tasks
def task_kind(task_name: str) -> Optional[str]:
  """'retrieval' | 'ranking' | 'rating' from `<dataset>_<kind>`, else None.

  `<dataset>_conversation` is 'retrieval': its target is an item decoded over
  the whole catalogue, like retrieval's.
  """
  kind = task_name.rsplit('_', 1)[-1]
  if kind == 'conversation':
    return 'retrieval'
  return kind if kind in REC_KINDS else None


def leaf_tasks(mixture_or_task_name: str) -> list[seqio.Task]:
  """`seqio_tasks.registry.leaf_tasks` (imported when called: importing the
  package registers every dataset)."""
  from seqio_tasks import registry  # pylint: disable=g-import-not-at-top
  return registry.leaf_tasks(mixture_or_task_name)


def prepared_dir_of(task: seqio.Task) -> Optional[pathlib.Path]:
  """`seqio_tasks.registry.prepared_dir_of`."""
  from seqio_tasks import registry  # pylint: disable=g-import-not-at-top
  return registry.prepared_dir_of(task)


def as_text(x: Any) -> str:
  if isinstance(x, bytes):
    return x.decode('utf-8', 'replace')
  return str(x)


def iter_examples(task: seqio.Task, split: str,
                  task_feature_lengths: Mapping[str, int], *,
                  use_cached: bool = False,
                  num_examples: Optional[int] = None) -> Iterator[dict]:
  """Tokenized, trimmed examples in file order with their text metadata."""
  ds = task.get_dataset(sequence_length=dict(task_feature_lengths),
                        split=split, use_cached=use_cached, shuffle=False,
                        num_epochs=1, trim_output_features=True)
  if num_examples is not None:
    ds = ds.take(num_examples)
  for ex in ds.as_numpy_iterator():
    yield ex


def has_split(task: seqio.Task, split: str) -> bool:
  try:
    return split in task.splits
  except Exception:  # pylint: disable=broad-except
    return False


# ------------------------------------------------------------------ catalogue
@dataclasses.dataclass
class Catalogue:
  """Item ids in index order and their target texts (as prompts write them)."""
  key: str
  ids: list[str]
  texts: list[str]
  item_format: str

  def __post_init__(self):
    self.index = {i: n for n, i in enumerate(self.ids)}
    self.text_set = frozenset(self.texts)

  def text_of(self, item_id: str) -> str:
    return self.texts[self.index[item_id]]


_CATALOGUES: dict[tuple, Catalogue] = {}


def load_catalogue(prepared_dir: os.PathLike | str) -> Catalogue:
  """Items of a prepared dir with the manifest's `item_format` (cached)."""
  d = pathlib.Path(prepared_dir).expanduser().resolve()
  items_path = prepared_lib.items_file(d)
  manifest_path = export.manifest_file(d)
  if not items_path.is_file():
    raise FileNotFoundError(f'{items_path}: no items (evaluation needs the '
                            'catalogue of the prepared directory)')
  key = (str(d), items_path.stat().st_mtime_ns,
         manifest_path.stat().st_mtime_ns if manifest_path.is_file() else 0)
  if key in _CATALOGUES:
    return _CATALOGUES[key]
  manifest = export.read_manifest(d) or {}
  fmt = manifest.get('config', {}).get('item_format', 'title_id')
  ids, texts = [], []
  for item in prepared_lib.read_items(d):
    ids.append(str(item['id']))
    texts.append(prompt_common.target_text(
        str(item['id']), prompt_common.clean_text(item.get('title')), fmt))
  cat = Catalogue(key=f'{d}:{fmt}', ids=ids, texts=texts, item_format=fmt)
  _CATALOGUES[key] = cat
  return cat


def _vocab_key(vocab: seqio.Vocabulary) -> tuple:
  return (type(vocab).__name__,
          getattr(vocab, 'sentencepiece_model_file', None) or id(vocab),
          vocab.vocab_size)


_TRIES: dict[tuple, Any] = {}
_ITEM_TOKENS: dict[tuple, list] = {}


def catalogue_trie(vocab: seqio.Vocabulary, catalogue: Catalogue):
  """`build_catalogue_trie` once per (catalogue, vocabulary), kept in memory."""
  key = (catalogue.key, _vocab_key(vocab))
  if key not in _TRIES:
    _TRIES[key] = trie_lib.build_catalogue_trie(vocab, catalogue.texts)
  return _TRIES[key]


def item_tokens(vocab: seqio.Vocabulary, catalogue: Catalogue) -> list:
  """Target token ids (+ EOS) of every item, cached."""
  key = (catalogue.key, _vocab_key(vocab))
  if key not in _ITEM_TOKENS:
    eos = vocab.eos_id
    _ITEM_TOKENS[key] = [np.asarray(list(vocab.encode(t)) + [eos], np.int32)
                         for t in catalogue.texts]
  return _ITEM_TOKENS[key]


# ------------------------------------------------------------------ batches
def encode_batch(examples: Sequence[Mapping[str, Any]],
                 task_feature_lengths: Mapping[str, int],
                 batch_size: int) -> dict[str, np.ndarray]:
  """EncDec arrays of `batch_size` rows (extra rows are all padding).

  Inputs are padded only to the batch's longest example rounded up to a
  multiple of LENGTH_BUCKET (at most the feature length): padding is masked,
  so outputs are unchanged, and short prompts (retrieval, rating) skip most of
  the encoder work. Each bucket compiles once.
  """
  length, t_len = task_feature_lengths['inputs'], task_feature_lengths['targets']
  longest = max((len(ex['inputs']) for ex in examples), default=1)
  length = min(length, -(-longest // LENGTH_BUCKET) * LENGTH_BUCKET)
  enc = np.zeros((batch_size, length), np.int32)
  tgt = np.zeros((batch_size, t_len), np.int32)
  for r, ex in enumerate(examples):
    x = np.asarray(ex['inputs'])[:length]
    enc[r, :len(x)] = x
    y = np.asarray(ex.get('targets', ()), np.int32)[:t_len]
    tgt[r, :len(y)] = y
  dec_in = np.zeros_like(tgt)
  dec_in[:, 1:] = tgt[:, :-1]
  batch = {'encoder_input_tokens': enc, 'decoder_input_tokens': dec_in,
           'decoder_target_tokens': tgt,
           'decoder_loss_weights': (tgt > 0).astype(np.int32)}
  if examples and slots.SLOT_FEATURE in examples[0]:  # prompts with slots
    batch[slots.SLOT_FEATURE] = pad_rows(
        [np.asarray(ex[slots.SLOT_FEATURE]) for ex in examples],
        (batch_size, task_feature_lengths[slots.SLOT_FEATURE]))
  return batch


def pad_rows(token_lists: Sequence[np.ndarray], shape: tuple) -> np.ndarray:
  out = np.zeros(shape, np.int32)
  for i, t in enumerate(token_lists):
    out[i, :min(len(t), shape[-1])] = t[:shape[-1]]
  return out


def batched(it: Iterable[Any], n: int) -> Iterator[list]:
  buf = []
  for x in it:
    buf.append(x)
    if len(buf) == n:
      yield buf
      buf = []
  if buf:
    yield buf


class Progress:
  """One line on stderr at most every `every` seconds, and at the end."""

  def __init__(self, label: str, total: Optional[int], every: float = 5.0,
               enabled: bool = True):
    self.label, self.total, self.every = label, total, every
    self.enabled = enabled and jax.process_index() == 0
    self.start = self.last = time.time()
    self.done = 0
    self._shown = -1

  def update(self, n: int, final: bool = False) -> None:
    self.done += n
    now = time.time()
    if not self.enabled or (not final and now - self.last < self.every):
      return
    if final and self.done == self._shown:
      return  # already said
    self.last, self._shown = now, self.done
    total = f'/{self.total}' if self.total else ''
    rate = self.done / max(now - self.start, 1e-9)
    print(f'[recjax] {self.label}: {self.done}{total} examples '
          f'({rate:.1f}/s)', file=sys.stderr, flush=True)


# ------------------------------------------------------------------ runner
class InferenceRunner:
  """Sharded, jitted predict/score calls with compiled functions cached.

  `params` must already carry their shardings (the train state's params, or
  `jobs.load_params`). Each call takes a host batch of exactly `batch_size`
  rows (padding rows included) and returns replicated numpy outputs.
  """

  def __init__(self, model: model_api.BaseModel,
               partitioner: partitioning.Partitioner, batch_size: int):
    if batch_size % partitioner.data_partitions:
      raise ValueError(f'Batch size {batch_size} is not divisible by the '
                       f'data-parallel size {partitioner.data_partitions}.')
    self.model = model
    self.partitioner = partitioner
    self.batch_size = batch_size
    self._fns: dict[tuple, Callable] = {}
    self._constraints: dict[int, Any] = {}

  def _host_slice(self, arrays: Mapping[str, np.ndarray]):
    n, i = jax.process_count(), jax.process_index()
    if n == 1:
      return self.partitioner.shard_batch(arrays)
    hb = self.batch_size // n
    return self.partitioner.shard_batch(
        {k: v[i * hb:(i + 1) * hb] for k, v in arrays.items()})

  def _jit(self, key, make):
    if key not in self._fns:
      self._fns[key] = jax.jit(
          self.partitioner.with_activation_rules(make()),
          out_shardings=self.partitioner.replicated())
    return self._fns[key]

  def constraint(self, trie) -> Any:
    if id(trie) not in self._constraints:
      self._constraints[id(trie)] = (trie, jax.device_put(
          trie.constraint(), self.partitioner.replicated()))
    return self._constraints[id(trie)][1]

  def predict(self, params: PyTree, batch: Mapping[str, np.ndarray], *,
              decode_method: str = 'greedy', num_decodes: int = 1,
              max_decode_length: int = 32, alpha: float = 0.6,
              temperature: float = 1.0, topk: int = 0,
              rng: Optional[jax.Array] = None, trie=None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, num_decodes, T], scores [B, num_decodes]), best first."""
    key = ('predict', decode_method, num_decodes, max_decode_length, alpha,
           temperature, topk)
    fn = self._jit(key, lambda: functools.partial(
        predict_lib.predict_batch, self.model, decode_method=decode_method,
        num_decodes=num_decodes, alpha=alpha, temperature=temperature,
        topk=topk, max_decode_length=max_decode_length))
    arrays = {'encoder_input_tokens': batch['encoder_input_tokens'],
              # zeros: no decoder prompt (T5X forces non-zero prompt tokens)
              'decoder_input_tokens': np.zeros_like(
                  batch['decoder_input_tokens'])}
    if slots.SLOT_FEATURE in batch:
      arrays[slots.SLOT_FEATURE] = batch[slots.SLOT_FEATURE]
    rng = jax.random.PRNGKey(0) if rng is None else rng
    constraint = None if trie is None else self.constraint(trie)
    tokens, scores = fn(params, self._host_slice(arrays), rng=rng,
                        constraint=constraint)
    return np.asarray(jax.device_get(tokens)), np.asarray(
        jax.device_get(scores))

  def score(self, params: PyTree, batch: Mapping[str, np.ndarray]
           ) -> np.ndarray:
    """Summed target log-likelihood [B] (teacher forcing)."""
    fn = self._jit(('score',), lambda: functools.partial(
        predict_lib.score_batch, self.model))
    return np.asarray(jax.device_get(fn(params, self._host_slice(batch))))

  def score_candidates(self, params: PyTree, encoder_input_tokens: np.ndarray,
                       candidate_targets: np.ndarray,
                       slot_items: Optional[np.ndarray] = None) -> np.ndarray:
    """Log-likelihood [B, C] of each row's candidate targets [B, C, T]."""
    fn = self._jit(('candidates',), lambda: functools.partial(
        predict_lib.score_candidates, self.model))
    arrays = {'e': encoder_input_tokens, 'c': candidate_targets}
    if slot_items is not None:
      arrays['s'] = slot_items
    sharded = self._host_slice(arrays)
    return np.asarray(jax.device_get(fn(params, sharded['e'], sharded['c'],
                                        sharded.get('s'))))


_RUNNERS: dict[tuple, InferenceRunner] = {}


def get_runner(model: model_api.BaseModel,
               partitioner: partitioning.Partitioner,
               batch_size: int) -> InferenceRunner:
  """A runner per (model, partitioner, batch size), so repeated evaluations
  and infer calls in one process reuse the compiled functions."""
  key = (id(model), id(partitioner), int(batch_size))
  hit = _RUNNERS.get(key)
  if hit is None or hit.model is not model or hit.partitioner is not partitioner:
    hit = _RUNNERS[key] = InferenceRunner(model, partitioner, batch_size)
  return hit


def decode_texts(vocab: seqio.Vocabulary, tokens: np.ndarray) -> list[str]:
  return list(predict_lib.decode_tokens(vocab, np.asarray(tokens)))


def _finite(x: float) -> Optional[float]:
  x = float(x)
  return x if math.isfinite(x) else None


# ------------------------------------------------------------------ evaluator
@gin.configurable(module='evaluation')
class InferenceEvaluator:
  """Evaluates rec tasks of a mixture/task by inference (see module doc).

  Used directly (`evaluate(params)`), by `jobs.evaluate`, and as the
  trainer's `inference_evaluator` hook: `evaluator(step, params)`. In the
  trainer, `model` and `partitioner` default to the trainer's (`bind`).

  Args:
    mixture_or_task_name: task or mixture; its rec tasks are evaluated.
    task_feature_lengths: {'inputs': L, 'targets': T} (inputs are truncated).
    batch_size: global batch of examples (divisible by the data partitions).
    split: split to evaluate ('test'; 'validation' while training).
    num_beams: constrained beam width for retrieval (the list scored @K).
    ranking_batch_size: examples per candidate-scoring call (each carries
      all its candidates); default `batch_size`.
    num_examples: evaluate only the first N examples of each task.
    rating_values: the rating scale whose strings are scored.
    output_dir: if set, the hook writes `<output_dir>/step_<N>/` outputs.
    alpha: beam search length penalty.
  """

  def __init__(self, mixture_or_task_name: str = gin.REQUIRED,
               task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
               batch_size: int = gin.REQUIRED, *,
               model: Optional[model_api.BaseModel] = None,
               partitioner: Optional[partitioning.Partitioner] = None,
               split: str = 'test', num_beams: int = 20,
               ranking_batch_size: Optional[int] = None,
               num_examples: Optional[int] = None,
               use_cached_tasks: bool = False,
               rating_values: Sequence[float] = (1, 2, 3, 4, 5),
               output_dir: Optional[str] = None, alpha: float = 0.6,
               progress: bool = True):
    self.mixture_or_task_name = mixture_or_task_name
    self.task_feature_lengths = dict(task_feature_lengths)
    self.batch_size = int(batch_size)
    self.model = model
    self.partitioner = partitioner
    self.split = split
    self.num_beams = int(num_beams)
    self.ranking_batch_size = ranking_batch_size
    self.num_examples = num_examples
    self.use_cached_tasks = use_cached_tasks
    self.rating_values = tuple(float(v) for v in rating_values)
    self.output_dir = output_dir
    self.alpha = alpha
    self.progress = progress

  # -- wiring
  def bind(self, *, model: model_api.BaseModel,
           partitioner: partitioning.Partitioner) -> None:
    """Fills in the trainer's model and partitioner where none was given."""
    if self.model is None:
      self.model = model
    if self.partitioner is None:
      self.partitioner = partitioner

  def _runner(self, batch_size: int) -> InferenceRunner:
    if self.model is None:
      raise ValueError('InferenceEvaluator has no model: pass model= or use '
                       'it as train(inference_evaluator=...).')
    self.partitioner = self.partitioner or partitioning.Partitioner()
    return get_runner(self.model, self.partitioner, batch_size)

  @property
  def vocab(self) -> seqio.Vocabulary:
    vocab = self.model.output_vocabulary
    if vocab is None:
      vocab = leaf_tasks(self.mixture_or_task_name)[0].output_features[
          'targets'].vocabulary
      self.model.output_vocabulary = vocab
    return vocab

  def __call__(self, step: int, params: PyTree) -> dict[str, dict[str, float]]:
    out_dir = (os.path.join(self.output_dir, f'step_{int(step)}')
               if self.output_dir else None)
    return self.evaluate(params, step=step, output_dir=out_dir)

  # -- main entry
  def evaluate(self, params: PyTree, *, step: Optional[int] = None,
               checkpoint: Optional[str] = None,
               output_dir: Optional[str] = None,
               tensorboard: bool = True) -> dict[str, dict[str, float]]:
    """task -> metric -> value; writes outputs into `output_dir` if given."""
    results: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    predictions: dict[str, list[dict]] = {}
    start = time.time()
    for task in leaf_tasks(self.mixture_or_task_name):
      kind = task_kind(task.name)
      if kind is None:
        skipped[task.name] = 'auxiliary task (no inference metric)'
      elif not has_split(task, self.split):
        skipped[task.name] = f'no {self.split!r} split'
      if task.name in skipped:
        logging.info('Inference eval skips %s: %s', task.name,
                     skipped[task.name])
        if self.progress and jax.process_index() == 0:
          print(f'[recjax] eval skips {task.name}: {skipped[task.name]}',
                file=sys.stderr)
        continue
      fn = {'retrieval': self._retrieval, 'ranking': self._ranking,
            'rating': self._rating}[kind]
      metrics, rows = fn(task, params)
      results[task.name] = metrics
      predictions[task.name] = rows
    if self.progress and jax.process_index() == 0:
      print(f'[recjax] inference eval of {len(results)} task(s) in '
            f'{time.time() - start:.1f}s', file=sys.stderr)
    if output_dir and jax.process_index() == 0:
      write_outputs(output_dir, results, step=step, checkpoint=checkpoint,
                    split=self.split,
                    mixture_or_task_name=self.mixture_or_task_name,
                    skipped=skipped, predictions=predictions,
                    tensorboard=tensorboard)
    return results

  def _examples(self, task) -> Iterator[dict]:
    return iter_examples(task, self.split, self.task_feature_lengths,
                         use_cached=self.use_cached_tasks,
                         num_examples=self.num_examples)

  def _total(self, task) -> Optional[int]:
    try:
      n = task.num_input_examples(self.split)
    except Exception:  # pylint: disable=broad-except
      n = None
    if n is not None and self.num_examples is not None:
      n = min(n, self.num_examples)
    return n

  def _catalogue(self, task) -> Catalogue:
    d = prepared_dir_of(task)
    if d is None:
      raise ValueError(f'Task {task.name} has no prepared directory; '
                       'inference evaluation needs its item catalogue.')
    return load_catalogue(d)

  def _greedy(self, runner, params, batch) -> list[str]:
    tokens, _ = runner.predict(
        params, batch, decode_method='greedy', num_decodes=1,
        max_decode_length=self.task_feature_lengths['targets'])
    return decode_texts(self.vocab, tokens[:, 0])

  # -- retrieval
  def _retrieval(self, task, params):
    runner = self._runner(self.batch_size)
    vocab = self.vocab
    cat = self._catalogue(task)
    trie = catalogue_trie(vocab, cat)
    max_len = min(self.task_feature_lengths['targets'],
                  max(len(t) for t in item_tokens(vocab, cat)))
    rows = []
    progress = Progress(f'eval {task.name}', self._total(task),
                        enabled=self.progress)
    for exs in batched(self._examples(task), runner.batch_size):
      batch = encode_batch(exs, self.task_feature_lengths, runner.batch_size)
      tokens, scores = runner.predict(
          params, batch, decode_method='beam', num_decodes=self.num_beams,
          max_decode_length=max_len, alpha=self.alpha, trie=trie)
      items = np.asarray(trie.items_of(tokens)).reshape(tokens.shape[:2])
      greedy = self._greedy(runner, params, batch)
      for r, ex in enumerate(exs):
        ranked, beam_scores = [], []
        for b in range(items.shape[1]):
          i = int(items[r, b])
          if i >= 0 and cat.ids[i] not in ranked:
            ranked.append(cat.ids[i])
            beam_scores.append(float(scores[r, b]))
        rows.append({'inputs': as_text(ex['inputs_pretokenized']),
                     'targets': as_text(ex['targets_pretokenized']),
                     'target_item': as_text(ex['target_item']),
                     'predictions': ranked, 'scores': beam_scores,
                     'prediction': greedy[r]})
      progress.update(len(exs))
    progress.update(0, final=True)
    metrics = rec_metrics.ranking_metrics(
        [r['target_item'] for r in rows], [r['predictions'] for r in rows])
    metrics['valid_ratio'] = rec_metrics.valid_ratio(
        [r['prediction'] for r in rows], cat.text_set, sep=_SEP)
    return metrics, rows

  # -- ranking
  def _ranking(self, task, params):
    runner = self._runner(self.ranking_batch_size or self.batch_size)
    vocab = self.vocab
    cat = self._catalogue(task)
    toks = item_tokens(vocab, cat)
    t_len = min(self.task_feature_lengths['targets'], max(len(t) for t in toks))
    rows, ranks = [], []
    progress = Progress(f'eval {task.name}', self._total(task),
                        enabled=self.progress)
    for exs in batched(self._examples(task), runner.batch_size):
      batch = encode_batch(exs, self.task_feature_lengths, runner.batch_size)
      cands = [[as_text(c) for c in ex['candidates'] if len(c)] for ex in exs]
      for c_list in cands:
        unknown = [c for c in c_list if c not in cat.index]
        if unknown:
          raise ValueError(f'{task.name}: candidates {unknown[:3]} are not '
                           f'items of {cat.key}')
      n_c = max(max((len(c) for c in cands), default=1), 1)
      n_c = int(math.ceil(n_c / 4) * 4)  # few distinct shapes -> few compiles
      cand_tokens = np.zeros((runner.batch_size, n_c, t_len), np.int32)
      for r, c_list in enumerate(cands):
        cand_tokens[r, :len(c_list)] = pad_rows(
            [toks[cat.index[c]] for c in c_list], (len(c_list), t_len))
      scores = runner.score_candidates(params, batch['encoder_input_tokens'],
                                       cand_tokens,
                                       batch.get(slots.SLOT_FEATURE))
      greedy = self._greedy(runner, params, batch)
      for r, ex in enumerate(exs):
        s = np.asarray(scores[r, :len(cands[r])], np.float64)
        target = as_text(ex['target_item'])
        if target in cands[r]:
          t_score = s[cands[r].index(target)]
          rank = int(np.sum(s >= t_score))  # pessimistic ties
        else:
          rank = 0
        ranks.append(rank)
        rows.append({'inputs': as_text(ex['inputs_pretokenized']),
                     'targets': as_text(ex['targets_pretokenized']),
                     'target_item': target, 'candidates': cands[r],
                     'candidate_scores': [float(x) for x in s],
                     'rank': rank, 'prediction': greedy[r]})
      progress.update(len(exs))
    progress.update(0, final=True)
    metrics = rec_metrics.metrics_from_ranks(
        np.array(ranks, np.int64), ks=RANKING_KS, ndcg_ks=(5, 10))
    llara = rec_metrics.llara_metrics(
        [cat.text_of(r['target_item']) for r in rows],
        [r['prediction'] for r in rows],
        [[cat.text_of(c) for c in r['candidates']] for r in rows])
    metrics.update({f'llara_{k}': v for k, v in llara.items() if k != 'count'})
    return metrics, rows

  # -- rating
  def _rating(self, task, params):
    runner = self._runner(self.batch_size)
    vocab = self.vocab
    eos = vocab.eos_id
    scale = [prompt_common.format_rating(v) for v in self.rating_values]
    scale_tok = [np.asarray(list(vocab.encode(s)) + [eos], np.int32)
                 for s in scale]
    s_len = max(len(t) for t in scale_tok)
    scale_arr = pad_rows(scale_tok, (len(scale), s_len))
    cand = np.broadcast_to(scale_arr, (runner.batch_size,) + scale_arr.shape)
    rows = []
    progress = Progress(f'eval {task.name}', self._total(task),
                        enabled=self.progress)
    for exs in batched(self._examples(task), runner.batch_size):
      batch = encode_batch(exs, self.task_feature_lengths, runner.batch_size)
      greedy = self._greedy(runner, params, batch)
      scores = runner.score_candidates(params, batch['encoder_input_tokens'],
                                       np.ascontiguousarray(cand),
                                       batch.get(slots.SLOT_FEATURE))
      expected = rec_metrics.expected_rating(scores[:len(exs)],
                                             self.rating_values)
      for r, ex in enumerate(exs):
        rows.append({'inputs': as_text(ex['inputs_pretokenized']),
                     'targets': as_text(ex['targets_pretokenized']),
                     'target_item': as_text(ex['target_item']),
                     'prediction': greedy[r],
                     'scale_scores': [float(x) for x in scores[r]],
                     'expected_rating': float(expected[r])})
      progress.update(len(exs))
    progress.update(0, final=True)
    targets = [r['targets'] for r in rows]
    metrics = rec_metrics.rating_metrics(targets,
                                         [r['prediction'] for r in rows])
    exp = rec_metrics.rating_metrics(targets,
                                     [r['expected_rating'] for r in rows])
    metrics['expected_rmse'] = exp['rmse']
    metrics['expected_mae'] = exp['mae']
    return metrics, rows


# ------------------------------------------------------------------ outputs
def flatten_metrics(results: Mapping[str, Mapping[str, float]]
                   ) -> dict[str, float]:
  """{task: {metric: v}} -> {'task/metric': v} (TensorBoard tags)."""
  return {f'{t}/{k}': float(v) for t, m in results.items()
          for k, v in m.items()}


def markdown_table(results: Mapping[str, Mapping[str, float]],
                   step: Optional[int] = None,
                   checkpoint: Optional[str] = None) -> str:
  lines = ['# Inference evaluation', '']
  if checkpoint or step is not None:
    lines += [f'checkpoint: `{checkpoint}`, step: {step}', '']
  for kind in REC_KINDS:
    tasks = [t for t in results if task_kind(t) == kind]
    if not tasks:
      continue
    keys = [k for k in results[tasks[0]] if k != 'count'] + ['count']
    lines.append(f'## {kind}')
    lines.append('')
    lines.append('| task | ' + ' | '.join(keys) + ' |')
    lines.append('| --- |' + ' ---: |' * len(keys))
    for t in tasks:
      vals = []
      for k in keys:
        v = results[t].get(k)
        vals.append('' if v is None else (
            f'{int(v)}' if k in ('count', 'invalid') else f'{v:.4f}'))
      lines.append(f'| {t} | ' + ' | '.join(vals) + ' |')
    lines.append('')
  return '\n'.join(lines)


def write_outputs(output_dir: str, results: Mapping[str, Mapping[str, float]],
                  *, step: Optional[int], checkpoint: Optional[str],
                  split: str, mixture_or_task_name: str,
                  skipped: Mapping[str, str] = (),
                  predictions: Optional[Mapping[str, list]] = None,
                  tensorboard: bool = True) -> None:
  """metrics.json, metrics.md, predictions/<task>.jsonl, TensorBoard scalars."""
  os.makedirs(output_dir, exist_ok=True)
  doc = {'step': step, 'checkpoint': checkpoint, 'split': split,
         'mixture_or_task_name': mixture_or_task_name,
         'skipped': dict(skipped or {}),
         'metrics': {t: {k: _finite(v) for k, v in m.items()}
                     for t, m in results.items()}}
  if predictions:
    pred_dir = os.path.join(output_dir, 'predictions')
    os.makedirs(pred_dir, exist_ok=True)
    for t, rows in predictions.items():
      atomic_write(os.path.join(pred_dir, f'{t}.jsonl'), ''.join(
          json.dumps(r, ensure_ascii=False) + '\n' for r in rows))
  atomic_write(os.path.join(output_dir, 'metrics.md'),
                markdown_table(results, step, checkpoint) + '\n')
  writer = metrics_writer_lib.MetricsWriter(output_dir,
                                            tensorboard=tensorboard)
  try:
    writer.write_scalars(step or 0, flatten_metrics(results),
                         split=INFER_EVAL_SPLIT)
  finally:
    writer.close()
  # metrics.json last: its presence means the evaluation is complete.
  atomic_write(os.path.join(output_dir, 'metrics.json'),
                json.dumps(doc, indent=2, sort_keys=True) + '\n')


__all__ = ['InferenceEvaluator', 'InferenceRunner', 'Catalogue',
           'load_catalogue', 'catalogue_trie', 'task_kind', 'leaf_tasks',
           'iter_examples', 'encode_batch', 'write_outputs', 'markdown_table',
           'flatten_metrics', 'INFER_EVAL_SPLIT']
