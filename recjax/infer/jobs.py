"""gin entry points `evaluate()` and `infer()` (T5X's eval.py / infer.py shape).

`evaluate` runs `evaluation.InferenceEvaluator` on a checkpoint and writes
`EVAL_OUTPUT_DIR/{metrics.json, metrics.md, predictions/, infer_eval/}`.
`infer` writes one JSONL line per example of a task/mixture split, sharded
(`shard_id` of `num_shards` takes examples i with i % num_shards ==
shard_id) and resumable: examples are processed in chunks, each chunk is
written to a temporary file and renamed; a restart skips finished chunks and
the final `predictions-{k:05d}-of-{n:05d}.jsonl` is assembled atomically.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Tuple

import gin
import jax
from jax.experimental import multihost_utils
import numpy as np
import optax

from recjax.data.prepared import atomic_write
from recjax.infer import evaluation
from recjax.train import model_api
from recjax.train import partitioning
from recjax.train import trainer

PyTree = Any
MODES = ('predict', 'score')


# ------------------------------------------------------------------ params
def checkpoint_step(path: str) -> Optional[int]:
  """The step of a recjax model dir (latest) or step dir; None otherwise."""
  p = os.path.abspath(path)
  if os.path.isdir(os.path.join(p, 'checkpoints')):
    p = os.path.join(p, 'checkpoints')
  if os.path.isdir(os.path.join(p, 'state')):
    base = os.path.basename(p.rstrip('/'))
    return int(base) if base.isdigit() else None
  if os.path.isdir(p):
    steps = [int(d) for d in os.listdir(p)
             if d.isdigit() and os.path.isdir(os.path.join(p, d, 'state'))]
    return max(steps) if steps else None
  return None


def load_params(model: model_api.BaseModel, checkpoint_path: str,
                partitioner: partitioning.Partitioner,
                task_feature_lengths: Mapping[str, int]) -> PyTree:
  """Sharded params from a recjax model/step dir, HF safetensors or T5X dir
  (`trainer.load_initial_params`), without optimizer state."""
  converter = model.feature_converter_cls(pack=False)
  lengths = converter.get_model_feature_lengths(task_feature_lengths)
  setup = trainer.setup_state(model, partitioner, lambda p: optax.identity(),
                              {k: (1, v) for k, v in lengths.items()},
                              jax.random.PRNGKey(0))
  if not os.path.exists(checkpoint_path):
    raise FileNotFoundError(f'checkpoint {checkpoint_path} does not exist')
  params = trainer.load_initial_params(checkpoint_path, setup, model)
  return jax.tree_util.tree_map(
      lambda x, a, s: jax.device_put(
          x if isinstance(x, jax.Array) else np.asarray(x, a.dtype), s),
      params, setup.abstract_state.params, setup.state_shardings.params)


def _require(**kwargs) -> None:
  for name, value in kwargs.items():
    if not value:
      raise ValueError(f'{name} is required (gin macro {name.upper()}, e.g. '
                       f"--gin.{name.upper()}=\"'/path'\").")


def _prepare(model, mixture_or_task_name, partitioner, auto_vocab_size):
  partitioner = partitioner or partitioning.Partitioner()
  model = trainer.check_vocab_size(model, mixture_or_task_name,
                                   auto_vocab_size)
  return model, partitioner


# ------------------------------------------------------------------ evaluate
@gin.configurable
def evaluate(*,
             model: model_api.BaseModel = gin.REQUIRED,
             checkpoint_path: str = gin.REQUIRED,
             mixture_or_task_name: str = gin.REQUIRED,
             output_dir: str = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             batch_size: int = gin.REQUIRED,
             split: str = 'test',
             partitioner: Optional[partitioning.Partitioner] = None,
             num_beams: int = 20,
             ranking_batch_size: Optional[int] = None,
             num_examples: Optional[int] = None,
             use_cached_tasks: bool = False,
             rating_values=(1, 2, 3, 4, 5),
             alpha: float = 0.6,
             auto_vocab_size: bool = False,
             tensorboard: bool = True) -> dict[str, dict[str, float]]:
  """Evaluates a checkpoint on the rec tasks of a task/mixture; see module doc.

  Returns task -> metric -> value (also in `output_dir/metrics.json`).
  """
  _require(checkpoint_path=checkpoint_path, eval_output_dir=output_dir)
  model, partitioner = _prepare(model, mixture_or_task_name, partitioner,
                                auto_vocab_size)
  params = load_params(model, checkpoint_path, partitioner,
                       task_feature_lengths)
  step = checkpoint_step(checkpoint_path)
  print(f'[recjax] evaluating {checkpoint_path} (step {step}) on '
        f'{mixture_or_task_name}/{split}', file=sys.stderr)
  evaluator = evaluation.InferenceEvaluator(
      mixture_or_task_name, task_feature_lengths, batch_size, model=model,
      partitioner=partitioner, split=split, num_beams=num_beams,
      ranking_batch_size=ranking_batch_size, num_examples=num_examples,
      use_cached_tasks=use_cached_tasks, rating_values=rating_values,
      alpha=alpha)
  results = evaluator.evaluate(params, step=step,
                               checkpoint=os.path.abspath(checkpoint_path),
                               output_dir=os.path.abspath(output_dir),
                               tensorboard=tensorboard)
  if jax.process_index() == 0:
    print(evaluation.markdown_table(results, step, checkpoint_path),
          file=sys.stderr)
  return results


# ------------------------------------------------------------------ infer
def shard_file_name(shard_id: int, num_shards: int) -> str:
  return f'predictions-{shard_id:05d}-of-{num_shards:05d}.jsonl'


def _stream(mixture_or_task_name: str, split: str,
            task_feature_lengths: Mapping[str, int], use_cached: bool,
            num_examples: Optional[int]) -> Iterator[Tuple[int, str, dict]]:
  """(global index, task name, example) over the tasks that have `split`."""
  i = 0
  for task in evaluation.leaf_tasks(mixture_or_task_name):
    if not evaluation.has_split(task, split):
      print(f'[recjax] infer skips {task.name}: no {split!r} split',
            file=sys.stderr)
      continue
    for ex in evaluation.iter_examples(task, split, task_feature_lengths,
                                       use_cached=use_cached,
                                       num_examples=num_examples):
      yield i, task.name, ex
      i += 1


def _row(index: int, task: str, ex: Mapping[str, Any]) -> dict:
  row = {'index': index, 'task': task,
         'inputs': evaluation.as_text(ex.get('inputs_pretokenized', b'')),
         'targets': evaluation.as_text(ex.get('targets_pretokenized', b''))}
  if 'target_item' in ex:
    row['target_item'] = evaluation.as_text(ex['target_item'])
  return row


def _process_0_says(flag: bool) -> bool:
  """Process 0's `flag` on every host. Whether to skip work that needs all
  hosts (a chunk's collectives) must not depend on what each host's file
  system shows (host-local disks, a lagging network file system)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


@gin.configurable
def infer(*,
          model: model_api.BaseModel = gin.REQUIRED,
          checkpoint_path: str = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          output_dir: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          batch_size: int = gin.REQUIRED,
          split: str = 'test',
          mode: str = 'predict',
          shard_id: int = 0,
          num_shards: int = 1,
          partitioner: Optional[partitioning.Partitioner] = None,
          decode_method: str = 'greedy',
          num_decodes: int = 1,
          alpha: float = 0.6,
          temperature: float = 1.0,
          topk: int = 0,
          seed: int = 0,
          chunk_size: int = 1000,
          num_examples: Optional[int] = None,
          use_cached_tasks: bool = False,
          auto_vocab_size: bool = False,
          after_chunk: Optional[Callable[[int], None]] = None) -> str:
  """Writes predictions (or target scores) JSONL for one shard; returns its path.

  Each line: `index` (position in the task/mixture split), `task`, `inputs`,
  `targets`, `target_item`, and for mode 'predict' `prediction` (best
  decode), `predictions` (all, best first) and `scores`; for mode 'score'
  `score` (summed target log-likelihood). `after_chunk(c)` is called after
  chunk c has been computed and written (a hook for tests and monitoring).
  """
  _require(checkpoint_path=checkpoint_path, infer_output_dir=output_dir)
  if mode not in MODES:
    raise ValueError(f'mode {mode!r}; expected one of {MODES}')
  if not 0 <= shard_id < num_shards:
    raise ValueError(f'shard_id {shard_id} not in [0, {num_shards})')
  output_dir = os.path.abspath(output_dir)
  # Every host computes (outputs are replicated); host 0 writes.
  writer = jax.process_index() == 0
  final = os.path.join(output_dir, shard_file_name(shard_id, num_shards))
  if _process_0_says(os.path.exists(final)):
    print(f'[recjax] {final} exists; nothing to do', file=sys.stderr)
    return final
  os.makedirs(output_dir, exist_ok=True)
  chunk_dir = final + '.chunks'
  os.makedirs(chunk_dir, exist_ok=True)
  settings = {'mixture_or_task_name': mixture_or_task_name, 'split': split,
              'mode': mode, 'num_shards': num_shards, 'shard_id': shard_id,
              'chunk_size': chunk_size, 'decode_method': decode_method,
              'num_decodes': num_decodes, 'num_examples': num_examples,
              'task_feature_lengths': dict(task_feature_lengths),
              'checkpoint_path': os.path.abspath(checkpoint_path)}
  settings_path = os.path.join(chunk_dir, 'settings.json')
  if os.path.exists(settings_path):
    with open(settings_path, encoding='utf-8') as f:
      old = json.load(f)
    if old != json.loads(json.dumps(settings)):
      raise ValueError(f'{chunk_dir} holds chunks of a run with other '
                       f'settings ({old}); remove it to start over.')
  elif writer:
    atomic_write(settings_path, json.dumps(settings))

  def chunk_path(c):
    return os.path.join(chunk_dir, f'chunk-{c:06d}.jsonl')

  model, partitioner = _prepare(model, mixture_or_task_name, partitioner,
                                auto_vocab_size)
  params = None  # loaded only if a chunk needs computing
  runner = evaluation.get_runner(model, partitioner, batch_size)
  vocab = model.output_vocabulary
  max_len = task_feature_lengths['targets']

  def compute(items):
    out = []
    for part in evaluation.batched(items, batch_size):
      exs = [ex for _, _, ex in part]
      batch = evaluation.encode_batch(exs, task_feature_lengths, batch_size)
      if mode == 'score':
        scores = runner.score(params, batch)
        for (i, t, ex), s in zip(part, scores):
          out.append(dict(_row(i, t, ex), score=float(s)))
        continue
      rng = None  # greedy and beam search draw nothing
      if decode_method == 'sample':
        # One key per example from its index in the split: its samples do
        # not depend on the shard, the batch or the chunk it lands in.
        index = np.zeros((batch_size,), np.uint32)
        index[:len(part)] = [i for i, _, _ in part]
        rng = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
            jax.random.PRNGKey(seed), index)
      tokens, scores = runner.predict(
          params, batch, decode_method=decode_method, num_decodes=num_decodes,
          max_decode_length=max_len, alpha=alpha, temperature=temperature,
          topk=topk, rng=rng)
      n, k, t_len = tokens.shape
      texts = evaluation.decode_texts(vocab, tokens.reshape(n * k, t_len))
      for r, (i, t, ex) in enumerate(part):
        preds = texts[r * k:(r + 1) * k]
        out.append(dict(_row(i, t, ex), prediction=preds[0], predictions=preds,
                        scores=[float(s) for s in scores[r]]))
    return out

  start = time.time()
  progress = evaluation.Progress(
      f'infer shard {shard_id}/{num_shards}', None)
  local = (x for x in _stream(mixture_or_task_name, split,
                              task_feature_lengths, use_cached_tasks,
                              num_examples) if x[0] % num_shards == shard_id)
  num_chunks = computed = 0
  for c, items in enumerate(evaluation.batched(local, chunk_size)):
    num_chunks = c + 1
    if _process_0_says(os.path.exists(chunk_path(c))):
      progress.update(len(items))
      continue
    if params is None:
      params = load_params(model, checkpoint_path, partitioner,
                           task_feature_lengths)
    rows = compute(items)
    if writer:
      atomic_write(chunk_path(c), ''.join(
          json.dumps(r, ensure_ascii=False) + '\n' for r in rows))
    computed += 1
    progress.update(len(items))
    if after_chunk is not None:
      after_chunk(c)
  progress.update(0, final=True)
  if not writer:
    return final
  tmp = f'{final}.tmp-{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as out:
    for c in range(num_chunks):
      with open(chunk_path(c), encoding='utf-8') as f:
        shutil.copyfileobj(f, out)
  os.replace(tmp, final)
  shutil.rmtree(chunk_dir, ignore_errors=True)
  print(f'[recjax] wrote {final} ({computed} of {num_chunks} chunks computed, '
        f'{time.time() - start:.1f}s)', file=sys.stderr)
  return final


__all__ = ['evaluate', 'infer', 'load_params', 'checkpoint_step',
           'shard_file_name', 'MODES']
