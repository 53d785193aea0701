"""The recjax trainer: T5X's `train()` in small (jit + NamedShardings, optax, orbax).

`train()` is the gin entry point (T5X macro names: MODEL_DIR,
MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, TRAIN_STEPS, BATCH_SIZE,
INITIAL_CHECKPOINT_PATH, USE_CACHED_TASKS, EVAL_PERIOD, EVAL_STEPS,
RANDOM_SEED). The per-step work is the pure `make_train_step` function, which
tests call directly on different meshes.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Tuple

from absl import logging
import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio
import tensorflow as tf
from jax.sharding import NamedSharding, PartitionSpec as P

from recjax.models import lora as lora_lib
from recjax.train import checkpointing
from recjax.train import metrics_writer as metrics_lib
from recjax.train import model_api
from recjax.train import optimizers
from recjax.train import partitioning

PyTree = Any


class NonFiniteLossError(RuntimeError):
  """Raised when a step produced a NaN/Inf loss, gradient or update."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  opt_state: PyTree


# ----------------------------------------------------------------- step fns
def _split_microbatches(batch: Mapping[str, jax.Array], n: int):
  """[B, ...] -> [n, B/n, ...] with microbatch i = rows i, i+n, i+2n, ...

  Strided (not contiguous) so each data shard contributes equally to every
  microbatch and no cross-device reshuffle is needed.
  """
  def split(x):
    b = x.shape[0]
    if b % n:
      raise ValueError(f'Batch size {b} is not divisible by num_microbatches={n}')
    x = x.reshape((b // n, n) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return {k: split(v) for k, v in batch.items()}


def make_train_step(model: model_api.BaseModel,
                    tx: optax.GradientTransformation,
                    num_microbatches: Optional[int] = None,
                    data_sharding: Optional[NamedSharding] = None,
                    frozen_patterns: Sequence[str] = (),
                    subtree_norms: bool = False
                   ) -> Callable[[TrainState, Mapping[str, jax.Array], jax.Array],
                                 Tuple[TrainState, Mapping[str, jax.Array]]]:
  """Pure (state, batch, rng) -> (state, metrics).

  Gradients of microbatches are summed with `lax.scan`; every microbatch's
  loss is normalised by the *full* batch's normalizer, so the accumulated
  gradient equals the full-batch gradient. A non-finite loss or gradient
  leaves params and optimizer state unchanged (the step counter still
  advances) and set `metrics['finite'] = 0`.

  Parameters matching `frozen_patterns` (the optimizer's frozen ones) enter
  the loss through `stop_gradient`: their gradients are zeros and their
  weight-gradient matmuls are never computed (LoRA on a 7B model), and
  `grad_norm` is the norm over the trained parameters.

  `subtree_norms` adds `grad_norm/<group>`, `update_norm/<group>` and
  `param_norm/<group>` per trained subtree (`optimizers.norm_group`: the
  adapters, a slot model's projector or encoder, the LM's encoder...): which
  part learns, and how fast relative to its size. Off by default: the update
  norms read every update once more.
  """
  n = num_microbatches or 1
  frozen_patterns = tuple(frozen_patterns)

  def stop_frozen(params):
    if not frozen_patterns:
      return params
    labels = optimizers.frozen_labels(params, frozen_patterns)
    return jax.tree_util.tree_map(
        lambda p, l: jax.lax.stop_gradient(p) if l == optimizers.FROZEN else p,
        params, labels)

  def loss_and_grad(params, mb, rng, normalizer):
    (loss, metrics), grads = jax.value_and_grad(
        lambda p, *a: model.loss_fn(stop_frozen(p), *a),
        has_aux=True)(params, mb, rng, normalizer)
    del loss
    return grads, metrics

  def step_fn(state: TrainState, batch, rng):
    dropout_rng = jax.random.fold_in(rng, state.step)
    normalizer = model.loss_normalizer(batch)
    if n == 1:
      grads, metrics = loss_and_grad(state.params, batch, dropout_rng,
                                     normalizer)
    else:
      mbs = _split_microbatches(batch, n)
      if data_sharding is not None:
        mbs = jax.lax.with_sharding_constraint(
            mbs, NamedSharding(data_sharding.mesh,
                               P(None, *data_sharding.spec)))
      zero_grads = jax.tree_util.tree_map(jnp.zeros_like, state.params)
      zero_metrics = jax.tree_util.tree_map(
          lambda s: jnp.zeros(s.shape, s.dtype),
          jax.eval_shape(lambda p, b: loss_and_grad(p, b, dropout_rng,
                                                    normalizer)[1],
                         state.params, jax.tree_util.tree_map(lambda x: x[0], mbs)))

      def body(carry, xs):
        i, mb = xs
        g_acc, m_acc = carry
        g, m = loss_and_grad(state.params, mb,
                             jax.random.fold_in(dropout_rng, i), normalizer)
        return (jax.tree_util.tree_map(jnp.add, g_acc, g),
                jax.tree_util.tree_map(jnp.add, m_acc, m)), None

      (grads, metrics), _ = jax.lax.scan(
          body, (zero_grads, zero_metrics), (jnp.arange(n), mbs))
    grad_norm = optax.tree.norm(grads)
    # The guard depends only on the loss and the gradients, never on the
    # updates: then XLA fuses each `where` into the parameter update itself
    # (one pass over every parameter). Guarding on the update norm as well
    # forced every update to be materialised and then selected in a second
    # pass over all parameters. Updates can only be non-finite with
    # finite gradients through a corrupted optimizer state, which the next
    # step's loss shows; `train()` also checks the parameters before saving.
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(grad_norm)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree_util.tree_map(
        lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = TrainState(
        step=state.step + 1,
        params=keep(new_params, state.params),
        opt_state=keep(new_opt_state, state.opt_state))
    metrics = dict(metrics)
    metrics['grad_norm'] = grad_norm
    metrics['finite'] = finite.astype(jnp.float32)
    if subtree_norms:
      slot_key = getattr(model, 'params_key', None)
      groups = jax.tree_util.tree_map_with_path(
          lambda path, _: optimizers.norm_group(
              optimizers.param_path(path), slot_key), state.params)
      frozen = jax.tree_util.tree_map(
          lambda label: label == optimizers.FROZEN,
          optimizers.frozen_labels(state.params, frozen_patterns))
      for name, tree in (('grad_norm', grads), ('update_norm', updates),
                         ('param_norm', state.params)):
        for g, v in optimizers.group_norms(tree, groups, frozen).items():
          metrics[f'{name}/{g}'] = v
    return new_state, metrics

  return step_fn


def agreed_eval_batches(it: Iterator[Mapping[str, np.ndarray]],
                        model_lengths: Mapping[str, int], host_batch_size: int
                        ) -> Iterator[Mapping[str, np.ndarray]]:
  """This host's evaluation batches, for as many steps as the host with the
  most: every eval step is a collective, and hosts whose shards hold fewer
  batches (uneven validation files) would otherwise make fewer calls than
  the others and hang them. A host that has run out feeds all-zero batches
  (no loss weight, no tokens: they add nothing to the metrics) until no
  host has data left. One host: `it` unchanged."""
  if jax.process_count() == 1:
    yield from it
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  while True:
    batch = next(it, None)
    anyone = multihost_utils.process_allgather(
        np.asarray(batch is not None, np.int32))
    if not np.any(anyone):
      return
    if batch is None:
      batch = {k: np.zeros((host_batch_size, n), np.int32)
               for k, n in model_lengths.items()}
    yield batch


def make_eval_step(model: model_api.BaseModel):
  def eval_step(params, batch):
    _, metrics = model.eval_fn(params, batch)
    return metrics
  return eval_step


# ----------------------------------------------------------------- state
@dataclasses.dataclass
class StateSetup:
  """Everything sharding-related about a train state."""
  abstract_state: TrainState        # ShapeDtypeStructs (unsharded)
  state_shardings: TrainState
  param_logical_specs: PyTree
  tx: optax.GradientTransformation
  input_shapes: Mapping[str, Tuple[int, ...]]


def setup_state(model: model_api.BaseModel, partitioner: partitioning.Partitioner,
                optimizer_fn: Callable[[Any], optax.GradientTransformation],
                input_shapes: Mapping[str, Tuple[int, ...]],
                rng: jax.Array) -> StateSetup:
  """Abstract state, shardings and the optimizer, without allocating params."""
  boxed = jax.eval_shape(
      lambda r: model.get_initial_variables(r, input_shapes), rng)['params']
  logical_specs = nn.get_partition_spec(boxed)
  abstract_params = nn.unbox(boxed)
  param_shardings = partitioner.param_shardings(abstract_params, logical_specs)
  tx = optimizer_fn(abstract_params)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_shardings = partitioner.opt_state_shardings(abstract_opt, abstract_params,
                                                  param_shardings)
  abstract_state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32),
                              params=abstract_params, opt_state=abstract_opt)
  shardings = TrainState(step=partitioner.replicated(), params=param_shardings,
                         opt_state=opt_shardings)
  return StateSetup(abstract_state, shardings, logical_specs, tx,
                    dict(input_shapes))


def init_state(model, setup: StateSetup, partitioner, input_shapes,
               rng, params: Optional[PyTree] = None) -> TrainState:
  """A sharded initial state (fresh params, or `params` given, e.g. loaded)."""
  def init_fn(r):
    p = nn.unbox(model.get_initial_variables(r, input_shapes)['params'])
    return TrainState(step=jnp.zeros((), jnp.int32), params=p,
                      opt_state=setup.tx.init(p))
  if params is None:
    return jax.jit(init_fn, out_shardings=setup.state_shardings)(rng)
  params = jax.tree_util.tree_map(
      lambda x, a, s: jax.device_put(np.asarray(x, a.dtype), s), params,
      setup.abstract_state.params, setup.state_shardings.params)
  opt_state = jax.jit(setup.tx.init,
                      out_shardings=setup.state_shardings.opt_state)(params)
  return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32),
                                        partitioner.replicated()),
                    params=params, opt_state=opt_state)


def lora_config(model: Any) -> Optional[lora_lib.LoraConfig]:
  """The LoraConfig of the model's module config (None: no adapters)."""
  return getattr(getattr(getattr(model, 'module', None), 'config', None),
                 'lora', None)


def training_frozen_patterns(model: Any,
                             frozen_patterns: Sequence[str] = ()) -> tuple:
  """`frozen_patterns` plus, with LoRA, every parameter but the adapters,
  plus the model's own `frozen_param_patterns`: what `train` (and `recjax
  aot`, sizing the same step) freezes."""
  frozen = tuple(frozen_patterns or ())
  if lora_config(model) is not None:
    # The LM's base; a slot module's subtree (RSLLM's projector) is not
    # part of it and trains beside the adapters.
    frozen += lora_lib.frozen_base_patterns(
        getattr(model, 'params_key', None))
  # Parameters the model itself never trains (e.g. a recommender's item
  # table inside ILM's encoder): frozen, so they cost no optimizer state.
  frozen += tuple(getattr(model, 'frozen_param_patterns', ()) or ())
  return frozen


def is_recjax_dir(path: str) -> bool:
  return (os.path.isdir(os.path.join(path, 'checkpoints')) or
          os.path.isdir(os.path.join(path, checkpointing.STATE)) or
          (os.path.isdir(path) and any(
              d.isdigit() and os.path.isdir(
                  os.path.join(path, d, checkpointing.STATE))
              for d in os.listdir(path))))


def recjax_dir_has_lora(path: str) -> bool:
  """Whether the (latest) recjax checkpoint under `path` holds adapters."""
  tree = checkpointing.state_metadata(checkpointing.latest_state_dir(path))
  return lora_lib.has_lora(dict(tree).get('params', {}))


def fresh_lora_params(model: model_api.BaseModel, setup: StateSetup,
                      rng: jax.Array) -> PyTree:
  """The adapters of a fresh init (sharded), without materialising the base
  params (XLA drops the initialisers whose results are not returned)."""
  def init(r):
    p = nn.unbox(model.get_initial_variables(r, setup.input_shapes)['params'])
    return lora_lib.split_lora(p)[1]
  shardings = lora_lib.split_lora(setup.state_shardings.params)[1]
  return jax.jit(init, out_shardings=shardings)(rng)


def load_initial_params(path: str, setup: StateSetup,
                        model: Optional[model_api.BaseModel] = None,
                        rng: Optional[jax.Array] = None) -> PyTree:
  """Params from a recjax orbax dir, or via `recjax.checkpoints.load_params`
  (HF safetensors / T5X) checked against the model's shapes.

  With LoRA (the module config's `lora`), a checkpoint without adapters (HF,
  T5X, a recjax run without LoRA) gives the base weights, strictly, and the
  adapters come from a fresh init with `rng` (default PRNGKey(0)); a recjax
  checkpoint with adapters restores them too.

  A model with item slots (`SlotModel`) reads its LM from `path` the same
  way; its slot module's subtree comes from `path` when that is a recjax dir
  of the same model (resuming a phase), else from the model's
  `slot_checkpoint_path` (e.g. ILM's phase-1 run), else a fresh init.
  """
  rng = jax.random.PRNGKey(0) if rng is None else rng
  abstract = setup.abstract_state.params
  shardings = setup.state_shardings.params
  key = getattr(model, 'params_key', None)
  if key is None or key not in abstract or (
      is_recjax_dir(path) and recjax_dir_has_subtree(path, key)):
    return _load_lm_params(path, abstract, shardings, model, setup, rng)
  lm_abstract = {k: v for k, v in abstract.items() if k != key}
  lm_shardings = {k: v for k, v in shardings.items() if k != key}
  params = dict(_load_lm_params(path, lm_abstract, lm_shardings, model, setup,
                                rng))
  slot_path = getattr(model, 'slot_checkpoint_path', None)
  if slot_path:
    target = checkpointing.abstract_with_shardings(abstract[key],
                                                   shardings[key])
    params[key] = checkpointing.restore_params_from_recjax_dir(
        slot_path, target, subtree=key)
    print(f'[recjax] {key} params from {slot_path}', file=sys.stderr)
  else:
    params[key] = fresh_subtree(model, setup, rng, key)
  return params


def recjax_dir_has_subtree(path: str, key: str) -> bool:
  """Whether the (latest) recjax checkpoint under `path` has params[key]."""
  tree = checkpointing.state_metadata(checkpointing.latest_state_dir(path))
  return key in dict(dict(tree).get('params', {}))


def fresh_subtree(model: model_api.BaseModel, setup: StateSetup,
                  rng: jax.Array, key: str) -> PyTree:
  """params[key] of a fresh init (sharded), without the rest of the tree."""
  def init(r):
    return nn.unbox(model.get_initial_variables(
        r, setup.input_shapes)['params'])[key]
  return jax.jit(init, out_shardings=setup.state_shardings.params[key])(rng)


def _load_lm_params(path, abstract, shardings, model, setup, rng):
  lora_cfg = lora_config(model)
  fresh_adapters = False
  if lora_cfg is not None and lora_lib.has_lora(abstract):
    fresh_adapters = not (is_recjax_dir(path) and recjax_dir_has_lora(path))
    if fresh_adapters:
      abstract = lora_lib.split_lora(abstract)[0]
      shardings = lora_lib.split_lora(shardings)[0]
  params = _load_base_params(path, abstract, shardings, model)
  if fresh_adapters:
    params = lora_lib.merge_trees(params, fresh_lora_params(model, setup, rng))
  return params


def _load_base_params(path, abstract, shardings, model):
  if is_recjax_dir(path):
    target = checkpointing.abstract_with_shardings(abstract, shardings)
    return checkpointing.restore_params_from_recjax_dir(path, target)
  from recjax import checkpoints  # pylint: disable=g-import-not-at-top
  params = checkpoints.load_params(
      path, expected_shapes=abstract,
      config=getattr(getattr(model, 'module', None), 'config', None))
  params = flax.core.unfreeze(params)
  want = jax.tree_util.tree_structure(abstract)
  got = jax.tree_util.tree_structure(params)
  if want != got:
    want_keys = {optimizers.param_path(p) for p, _ in
                 jax.tree_util.tree_flatten_with_path(abstract)[0]}
    got_keys = {optimizers.param_path(p) for p, _ in
                jax.tree_util.tree_flatten_with_path(params)[0]}
    raise ValueError(
        f'{path}: parameter tree does not match the model. Missing: '
        f'{sorted(want_keys - got_keys)[:10]}; unexpected: '
        f'{sorted(got_keys - want_keys)[:10]}')
  return params


# ----------------------------------------------------------------- data
def get_dataset(
    mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
    feature_converter: seqio.FeatureConverter, split: str, host_batch_size: int,
    *, shuffle: bool, seed: Optional[int], num_epochs: Optional[int],
    use_cached: bool, shard_info: Optional[seqio.ShardInfo],
    pad_last: bool = False) -> tf.data.Dataset:
  """This host's batches from SeqIO, as a tf.data.Dataset.

  With `shuffle` and a seed the stream is deterministic, so a restart can
  skip the batches already consumed (or restore a saved iterator) and
  continue exactly where the uninterrupted run would be.
  """
  ds = seqio.get_dataset(
      mixture_or_task_name, task_feature_lengths=task_feature_lengths,
      feature_converter=feature_converter, dataset_split=split,
      use_cached=use_cached, shuffle=shuffle, num_epochs=num_epochs,
      shard_info=shard_info, seed=seed, verbose=False)
  return ds.batch(host_batch_size, drop_remainder=not pad_last)


def numpy_batches(iterator: Iterator[Mapping[str, Any]], host_batch_size: int,
                  pad_last: bool = False) -> Iterator[dict]:
  """Numpy batches from a tf.data iterator; `pad_last` pads a short final
  batch with zero rows (zero loss weight) instead of dropping it."""
  for tf_batch in iterator:
    batch = {k: v.numpy() for k, v in tf_batch.items()}
    if pad_last:
      b = next(iter(batch.values())).shape[0]
      if b < host_batch_size:
        batch = {k: np.concatenate(
            [v, np.zeros((host_batch_size - b,) + v.shape[1:], v.dtype)])
                 for k, v in batch.items()}
    yield batch


def get_dataset_iterator(
    mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
    feature_converter: seqio.FeatureConverter, split: str, host_batch_size: int,
    *, shuffle: bool, seed: Optional[int], num_epochs: Optional[int],
    use_cached: bool, shard_info: Optional[seqio.ShardInfo],
    skip_batches: int = 0, pad_last: bool = False) -> Iterator[dict]:
  """Host-local numpy batches from SeqIO (`get_dataset`), after skipping
  `skip_batches` already consumed."""
  ds = get_dataset(mixture_or_task_name, task_feature_lengths,
                   feature_converter, split, host_batch_size, shuffle=shuffle,
                   seed=seed, num_epochs=num_epochs, use_cached=use_cached,
                   shard_info=shard_info, pad_last=pad_last)
  if skip_batches:
    ds = ds.skip(skip_batches)
  return numpy_batches(iter(ds), host_batch_size, pad_last)


def tf_errors():
  return tf.errors.NotFoundError


def _task_output_vocab(mixture_or_task_name: str):
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  return provider.output_features['targets'].vocabulary


def _task_input_vocab(mixture_or_task_name: str):
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  feats = provider.output_features
  return feats['inputs'].vocabulary if 'inputs' in feats else None


def check_vocab_size(model: model_api.BaseModel, mixture_or_task_name: str,
                     auto_vocab_size: bool = False) -> model_api.BaseModel:
  """Raises if the module's vocab_size can't represent the task's tokens.

  With `auto_vocab_size` the module is cloned with vocab_size set to the
  task's output vocabulary size rounded up to a multiple of 128 (as T5X's
  vocabularies are padded for TPU-friendly shapes).
  """
  try:
    out_vocab = _task_output_vocab(mixture_or_task_name)
    need = out_vocab.vocab_size
    in_vocab = _task_input_vocab(mixture_or_task_name)
    if in_vocab is not None:
      need = max(need, in_vocab.vocab_size)
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, KeyError) or 'not found' in str(e).lower() or isinstance(
        e, (OSError, tf_errors())):
      raise ValueError(
          f'Cannot load the vocabulary of {mixture_or_task_name!r}: {e}. Is '
          'the task registered (import its module, e.g. via a gin `import` '
          'line) and its data prepared?') from e
    raise
  if model.output_vocabulary is None:
    model.output_vocabulary = out_vocab
  if model.input_vocabulary is None:
    model.input_vocabulary = in_vocab or out_vocab
  config = getattr(model.module, 'config', None)
  have = getattr(config, 'vocab_size', None)
  if have is None or have >= need:
    return model
  rounded = int(math.ceil(need / 128) * 128)
  if not auto_vocab_size:
    from recjax import vocabularies  # pylint: disable=g-import-not-at-top
    big = out_vocab if in_vocab is None or (
        out_vocab.vocab_size >= in_vocab.vocab_size) else in_vocab
    raise ValueError(
        f"The model's vocab_size ({have}) is smaller than tokenizer "
        f"{vocabularies.describe(big)} of task {mixture_or_task_name!r} "
        f"({need} ids): ids >= {have} have no embedding row. Pass "
        f"--gin.VOCAB_SIZE={rounded} (the model gins bind "
        f"{type(config).__name__}.vocab_size = %VOCAB_SIZE), or "
        f"--gin.train.auto_vocab_size=True to round the task's vocabulary up "
        f"to a multiple of 128 automatically (from scratch only: a "
        f"checkpoint's embedding table keeps its size, so use its own "
        f"tokenizer).")
  logging.warning('Setting vocab_size %d -> %d for task %s', have, rounded,
                  mixture_or_task_name)
  model.module = model.module.clone(
      config=dataclasses.replace(config, vocab_size=rounded))
  return model


# ----------------------------------------------------------------- train()
def _fmt(x: float) -> str:
  return f'{x:.4g}'


def _log_trainable(abstract_params: PyTree, frozen_patterns) -> None:
  """Prints how many parameters the optimizer updates."""
  labels = jax.tree_util.tree_leaves(optimizers.frozen_labels(
      abstract_params, frozen_patterns))
  sizes = [int(np.prod(x.shape)) for x in
           jax.tree_util.tree_leaves(abstract_params)]
  total = sum(sizes)
  trainable = sum(n for n, l in zip(sizes, labels) if l != optimizers.FROZEN)
  print(f'[recjax] trainable parameters: {trainable:,} of {total:,} '
        f'({100.0 * trainable / max(total, 1):.3g}%)', file=sys.stderr)


@gin.configurable(denylist=['model_dir_override'])
def train(*,
          model: model_api.BaseModel = gin.REQUIRED,
          model_dir: str = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED,
          partitioner: Optional[partitioning.Partitioner] = None,
          optimizer: Callable[..., optax.GradientTransformation] = (
              optimizers.adafactor),
          learning_rate_fn: Optional[Callable[[Any], Any]] = None,
          frozen_patterns: Sequence[str] = (),
          initial_checkpoint_path: Optional[str] = None,
          use_cached_tasks: bool = False,
          pack: bool = True,
          train_split: str = 'train',
          eval_split: str = 'validation',
          eval_period: Optional[int] = None,
          eval_steps: Optional[int] = None,
          random_seed: Optional[int] = 0,
          checkpoint_period: int = 1000,
          keep_checkpoints: Optional[int] = None,
          checkpoint_dataset: bool = False,
          num_microbatches: Optional[int] = None,
          log_every: int = 100,
          subtree_norms: bool = False,
          auto_vocab_size: bool = False,
          tensorboard: bool = True,
          inference_evaluator: Optional[
              Callable[[int, PyTree], Mapping[str, Any]]] = None,
          inference_eval_period: Optional[int] = None,
          model_dir_override: Optional[str] = None) -> Tuple[int, Mapping]:
  """Trains `model` on a SeqIO task/mixture; resumes from MODEL_DIR.

  `inference_evaluator(step, params) -> metrics` (nested dicts are flattened
  to 'a/b' tags), if given, runs every `inference_eval_period` steps and is
  written under split 'infer_eval'; an evaluator with a `bind(model=,
  partitioner=)` method is first given the trainer's model and partitioner
  (e.g. `recjax.infer.evaluation.InferenceEvaluator`, injected by gin).

  `checkpoint_dataset` saves each process's tf.data iterator state with every
  checkpoint (T5X's `save_dataset`), so a restart restores its input position
  instead of re-running the pipeline over every consumed batch (with another
  number of processes, batch size or seed, or a pipeline TF cannot restore
  into, it falls back to skipping).

  `subtree_norms` logs gradient, update and parameter norms per trained
  subtree every `log_every` steps (`make_train_step`): e.g.
  `update_norm/lora` against `param_norm/lora`.

  Returns (final step, last summarized train metrics). Raises
  NonFiniteLossError if a step produced NaN/Inf (the last checkpoint written
  is the last good one; no checkpoint of a bad state is ever saved).
  """
  model_dir = os.path.abspath(model_dir_override or model_dir)
  os.makedirs(model_dir, exist_ok=True)
  partitioner = partitioner or partitioning.Partitioner()
  learning_rate_fn = learning_rate_fn or optimizers.constant()
  random_seed = 0 if random_seed is None else int(random_seed)
  model = check_vocab_size(model, mixture_or_task_name, auto_vocab_size)
  frozen_patterns = training_frozen_patterns(model, frozen_patterns)

  model = model.for_feature_lengths(task_feature_lengths, pack)
  converter = model.feature_converter_cls(pack=pack)
  model_lengths = converter.get_model_feature_lengths(task_feature_lengths)
  host_bs = partitioner.host_batch_size(batch_size)
  if num_microbatches and batch_size % (num_microbatches *
                                        partitioner.data_partitions):
    raise ValueError(f'BATCH_SIZE {batch_size} must be divisible by '
                     f'num_microbatches * data partitions = '
                     f'{num_microbatches} * {partitioner.data_partitions}.')
  input_shapes = {k: (1, v) for k, v in model_lengths.items()}
  init_rng = jax.random.PRNGKey(random_seed)
  step_rng = jax.random.PRNGKey(random_seed + 1)

  def optimizer_fn(params):
    return optimizers.build_optimizer(optimizer(learning_rate=learning_rate_fn),
                                      frozen_patterns=frozen_patterns,
                                      params=params)

  setup = setup_state(model, partitioner, optimizer_fn, input_shapes, init_rng)
  _log_trainable(setup.abstract_state.params, frozen_patterns)
  ckpt = checkpointing.Checkpointer(model_dir, keep=keep_checkpoints)
  latest = ckpt.latest_step()
  same_stream = True  # the saved data position belongs to this pipeline
  if latest is not None:
    target = checkpointing.abstract_with_shardings(setup.abstract_state,
                                                   setup.state_shardings)
    # An unreadable latest step (a truncated file) falls back to the
    # previous one, with a warning naming it.
    latest, state, data_pos = ckpt.restore_latest(target)
    batches_consumed = int(data_pos['batches_consumed'])
    if data_pos.get('batch_size') not in (None, batch_size) or data_pos.get(
        'seed') not in (None, random_seed):
      same_stream = False
      logging.warning('Resuming with a different batch size or seed (%s); the '
                      'data stream will differ from the original run.',
                      data_pos)
    print(f'[recjax] resumed from {ckpt.directory}/{latest} '
          f'({batches_consumed} batches consumed)', file=sys.stderr)
  else:
    params = None
    if initial_checkpoint_path:
      params = load_initial_params(initial_checkpoint_path, setup, model,
                                   rng=init_rng)
      print(f'[recjax] initial params from {initial_checkpoint_path}',
            file=sys.stderr)
    state = init_state(model, setup, partitioner, input_shapes, init_rng,
                       params)
    pretrained = getattr(model, 'pretrained_params', None)
    if params is None and pretrained is not None:
      # e.g. ILM phase 1: a fresh encoder whose text branch is a BERT's
      state = init_state(model, setup, partitioner, input_shapes, init_rng,
                         pretrained(jax.device_get(state.params)))
    batches_consumed = 0

  step_fn = make_train_step(model, setup.tx, num_microbatches,
                            partitioner.data_sharding(),
                            frozen_patterns=frozen_patterns,
                            subtree_norms=subtree_norms)
  batch_shardings = {k: partitioner.data_sharding() for k in model_lengths}
  p_train_step = partitioner.partition(
      step_fn,
      in_shardings=(setup.state_shardings, batch_shardings,
                    partitioner.replicated()),
      out_shardings=(setup.state_shardings, partitioner.replicated()),
      donate_argnums=(0,))
  p_eval_step = partitioner.partition(
      make_eval_step(model),
      in_shardings=(setup.state_shardings.params, batch_shardings),
      out_shardings=partitioner.replicated())

  train_ds = get_dataset(
      mixture_or_task_name, task_feature_lengths, converter, train_split,
      host_bs, shuffle=True, seed=random_seed, num_epochs=None,
      use_cached=use_cached_tasks, shard_info=partitioner.get_shard_info())
  tf_train_iter = None
  if latest is not None and same_stream and ckpt.has_dataset(latest):
    try:
      tf_train_iter = iter(train_ds)
      ckpt.restore_dataset(tf_train_iter, latest)
      print(f'[recjax] restored the data position of step {latest}',
            file=sys.stderr)
    except (tf.errors.OpError, AssertionError, ValueError) as e:
      # E.g. the task's preprocessing changed since the save: skipping from
      # the start of the (deterministic) stream still finds the position.
      print(f'[recjax] the saved data position of step {latest} does not fit '
            f'this pipeline ({type(e).__name__}: {str(e)[:200]}); skipping '
            'instead', file=sys.stderr)
      tf_train_iter = None
  if tf_train_iter is None:
    if batches_consumed:
      print(f'[recjax] skipping {batches_consumed} consumed batches (no saved '
            'data position; train.checkpoint_dataset=True saves one)',
            file=sys.stderr)
    tf_train_iter = iter(train_ds.skip(batches_consumed))
  train_iter = numpy_batches(tf_train_iter, host_bs)
  writer = metrics_lib.MetricsWriter(model_dir, tensorboard=tensorboard)

  # Checked before every save: the in-step guard sees the loss and gradients,
  # not the updates, so this keeps a bad update out of the checkpoints.
  all_finite = jax.jit(lambda params: jnp.all(jnp.asarray(
      [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(params)])))

  def save(step_now):
    ckpt.save(step_now, state, {'batches_consumed': batches_consumed,
                                'batch_size': batch_size,
                                'seed': random_seed,
                                'mixture_or_task_name': mixture_or_task_name},
              dataset_iterator=tf_train_iter if checkpoint_dataset else None)

  if inference_evaluator is not None and hasattr(inference_evaluator, 'bind'):
    inference_evaluator.bind(model=model, partitioner=partitioner)

  def run_inference_eval(step_now):
    out = inference_evaluator(step_now, state.params)
    flat = {}
    def walk(prefix, m):
      for k, v in m.items():
        if isinstance(v, Mapping):
          walk(f'{prefix}{k}/', v)
        else:
          flat[f'{prefix}{k}'] = float(v)
    walk('', out or {})
    writer.write_scalars(step_now, flat, split='infer_eval')
    print(f'[recjax] step {step_now} infer_eval: ' + ', '.join(
        f'{k} {_fmt(v)}' for k, v in list(flat.items())[:6]), file=sys.stderr)
    return out

  def run_eval(step_now):
    if not eval_period:
      return None
    try:
      it = get_dataset_iterator(
          mixture_or_task_name, task_feature_lengths, converter, eval_split,
          host_bs, shuffle=False, seed=None, num_epochs=1,
          use_cached=use_cached_tasks, shard_info=partitioner.get_shard_info(),
          pad_last=True)
      totals = None
      for i, b in enumerate(agreed_eval_batches(it, model_lengths, host_bs)):
        if eval_steps and i >= eval_steps:
          break
        m = jax.device_get(p_eval_step(state.params, partitioner.shard_batch(b)))
        totals = m if totals is None else jax.tree_util.tree_map(
            np.add, totals, m)
    except (ValueError, KeyError, AssertionError) as e:
      logging.warning('No train-eval on split %r: %s', eval_split, e)
      return None
    if totals is None:
      return None
    s = model_api.summarize_metrics(totals)
    out = {'loss': s['cross_ent_loss_per_token'], 'accuracy': s['accuracy'],
           'z_loss': s['z_loss_per_token'], 'num_tokens': s['num_tokens']}
    writer.write_scalars(step_now, out, split=eval_split)
    print(f'[recjax] step {step_now} {eval_split}: loss {_fmt(out["loss"])} '
          f'acc {_fmt(out["accuracy"])}', file=sys.stderr)
    return out

  step = int(jax.device_get(state.step))
  window = []
  window_start = time.time()
  last_summary = {}
  first_bad = None

  def flush_window(step_now):
    nonlocal window, window_start, last_summary, first_bad
    if not window:
      return
    ms = jax.device_get([m for _, m in window])
    for (s_i, _), m in zip(window, ms):
      if m['finite'] < 1 and first_bad is None:
        first_bad = (s_i, m)
      if m.get(model_api.DROPPED_TARGET_TOKENS, 0) > 0:
        raise ValueError(
            f'Step {s_i}: packed rows held '
            f'{int(m[model_api.DROPPED_TARGET_TOKENS])} target tokens beyond '
            'DecoderOnlyModel.max_target_tokens, which were left out of the '
            'loss; raise it (--gin.DecoderOnlyModel.max_target_tokens=N) or '
            'set it to None (every position).')
    if first_bad is not None:
      return
    totals = {k: sum(float(m[k]) for m in ms) for k in ms[0]}
    dt = max(time.time() - window_start, 1e-9)
    n = len(ms)
    row = {
        'loss': totals['loss'] / n,
        'learning_rate': float(learning_rate_fn(step_now - 1)),
        'grad_norm': totals['grad_norm'] / n,
        'steps_per_sec': n / dt,
        'examples_per_sec': totals.get('num_examples', 0.0) / dt,
    }
    if 'weight_sum' in totals:  # token-loss models (the LMs)
      s = model_api.summarize_metrics(totals)
      row.update({
          'cross_ent_loss_per_token': s['cross_ent_loss_per_token'],
          'accuracy': s['accuracy'],
          'z_loss': totals['z_loss'] / n,
          'tokens_per_sec': totals['num_tokens'] / dt,
      })
    # Each loss term a model logs on its own (e.g. ILM phase 1's), per step.
    parts = {k: totals[k] / n for k in sorted(totals)
             if k.endswith('_loss') and k not in row and k != 'z_loss'}
    row.update(parts)
    row.update({k: totals[k] / n for k in sorted(totals)
                if k.startswith(('grad_norm/', 'update_norm/',
                                 'param_norm/'))})
    writer.write_scalars(step_now, row, split='train')
    if 'accuracy' in row:
      detail = (f'acc {_fmt(row["accuracy"])} lr {_fmt(row["learning_rate"])} '
                f'{row["steps_per_sec"]:.2f} steps/s '
                f'{row["tokens_per_sec"]:.0f} tok/s')
    else:
      detail = ' '.join([f'{k} {_fmt(v)}' for k, v in parts.items()] + [
          f'lr {_fmt(row["learning_rate"])}',
          f'{row["steps_per_sec"]:.2f} steps/s'])
    print(f'[recjax] step {step_now}/{train_steps} loss {_fmt(row["loss"])} '
          f'{detail}', file=sys.stderr)
    groups = sorted(k[len('update_norm/'):] for k in row
                    if k.startswith('update_norm/'))
    if groups:  # train.subtree_norms: what each part's step is, relatively
      print('[recjax]   update/param norm: ' + '; '.join(
          f'{g} {row["update_norm/" + g]:.3g}/{row["param_norm/" + g]:.3g} '
          f'(grad {row["grad_norm/" + g]:.3g})' for g in groups),
            file=sys.stderr)
    last_summary = row
    window = []
    window_start = time.time()

  def fail():
    bad_step, m = first_bad
    writer.close()
    ckpt.close()
    last = ckpt.latest_step()
    what = (f'Non-finite parameters after the update of step {bad_step} '
            '(its loss and gradients were finite)' if m is None else
            f'Non-finite loss/gradient at step {bad_step} (loss={m["loss"]}, '
            f'grad_norm={m["grad_norm"]})')
    raise NonFiniteLossError(
        f'{what}; training stopped. The last good '
        f'checkpoint is step {last} in {ckpt.directory}. Lower the learning '
        'rate, check the data, or use float32 to investigate.')

  try:
    while step < train_steps:
      try:
        host_batch = next(train_iter)
      except StopIteration as e:
        raise RuntimeError(f'{mixture_or_task_name} ran out of data') from e
      batch = partitioner.shard_batch(host_batch)
      state, metrics = p_train_step(state, batch, step_rng)
      batches_consumed += 1
      step += 1
      window.append((step, metrics))
      is_ckpt = step % checkpoint_period == 0 or step == train_steps
      if step % log_every == 0 or is_ckpt:
        flush_window(step)
        if first_bad is not None:
          fail()
      if is_ckpt:
        if not bool(all_finite(state.params)):
          first_bad = (step, None)
          fail()
        save(step)
      if eval_period and step % eval_period == 0:
        run_eval(step)
      is_infer = bool(inference_evaluator is not None and inference_eval_period
                      and step % inference_eval_period == 0)
      if is_infer:
        run_inference_eval(step)
      if not window and (is_ckpt or is_infer or
                         (eval_period and step % eval_period == 0)):
        window_start = time.time()  # steps/s measures training only
    flush_window(step)
    if first_bad is not None:
      fail()
  finally:
    if first_bad is None:
      writer.close()
      ckpt.close()
  return step, last_summary
