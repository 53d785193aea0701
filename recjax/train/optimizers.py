"""Optimizers (T5X-default Adafactor, AdamW), learning-rate schedules, freezing.

Freezing is done in the optimizer: parameters whose '/'-joined path matches a
`frozen_patterns` regex are routed to `optax.set_to_zero()` by
`optax.multi_transform`, so they get exactly-zero updates and the inner
optimizer keeps no state for them.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

Schedule = Callable[[jax.Array], jax.Array]
TRAINABLE = 'trainable'
FROZEN = 'frozen'


# --- schedules ---------------------------------------------------------------
@gin.configurable(module='schedules')
def constant(learning_rate: float = 1e-3, warmup_steps: int = 0) -> Schedule:
  """Constant rate after a linear warm-up from 0 over `warmup_steps`."""
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if warmup_steps:
      return learning_rate * jnp.minimum(1.0, (step + 1.0) / warmup_steps)
    return jnp.full((), learning_rate, jnp.float32)
  return schedule


@gin.configurable(module='schedules')
def rsqrt(learning_rate: float = 1.0, warmup_steps: int = 10_000) -> Schedule:
  """T5X's `rsqrt_decay`: lr / sqrt(max(step, warmup_steps)).

  With learning_rate=1.0 and 10k warm-up this is the T5 pre-training schedule
  (constant 0.01 for 10k steps, then inverse square root).
  """
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    return learning_rate / jnp.sqrt(jnp.maximum(step, float(warmup_steps)))
  return schedule


@gin.configurable(module='schedules')
def cosine(learning_rate: float = 1e-3, decay_steps: int = 10_000,
           warmup_steps: int = 0, alpha: float = 0.0) -> Schedule:
  """Linear warm-up to `learning_rate`, then cosine decay to alpha * lr."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
      decay_steps=max(decay_steps, warmup_steps + 1),
      end_value=alpha * learning_rate)


# --- optimizers --------------------------------------------------------------
@gin.configurable(module='optimizers')
def adafactor(learning_rate: Optional[Schedule] = None,
              decay_rate: float = 0.8,
              step_offset: int = 0,
              multiply_by_parameter_scale: bool = True,
              clipping_threshold: Optional[float] = 1.0,
              momentum: Optional[float] = None,
              weight_decay_rate: Optional[float] = None,
              min_dim_size_to_factor: int = 128,
              epsilon1: float = 1e-30,
              epsilon2: float = 1e-3,
              factored: bool = True) -> optax.GradientTransformation:
  """Adafactor with T5X's defaults (factored second moments, no momentum).

  Defaults follow `t5x.adafactor.Adafactor`: decay_rate 0.8, clipping
  threshold 1.0, parameter-scale multiplication with epsilon2 = 1e-3,
  epsilon1 = 1e-30, factoring dims >= 128, beta1 None.
  """
  # optax.adafactor's chain, with three differences: `epsilon2` reaches the
  # parameter scale (optax.adafactor always uses 1e-3), and the factored
  # second moments and the parameter scale are `scale_by_factored_rms` and
  # `scale_by_param_rms` below (faster, same values to float rounding). The
  # state tree is the same, so checkpoints written with either load.
  tx = [scale_by_factored_rms(factored, decay_rate, step_offset,
                              min_dim_size_to_factor, epsilon1)]
  if clipping_threshold is not None:
    tx.append(optax.clip_by_block_rms(clipping_threshold))
  tx.append(optax.scale_by_learning_rate(
      learning_rate if learning_rate is not None else constant(),
      flip_sign=False))
  if multiply_by_parameter_scale:
    tx.append(scale_by_param_rms(epsilon2))
  if momentum is not None:
    tx.append(optax.ema(momentum, debias=False))
  if weight_decay_rate is not None:
    tx.append(optax.add_decayed_weights(weight_decay_rate))
  tx.append(optax.scale(-1))
  return optax.chain(*tx)


# Kept elements from which a major-axis mean is taken as a dot (see _mean).
_WIDE = 1 << 14


def _mean(x: jax.Array, axis: int) -> jax.Array:
  """Mean over `axis`; over a major axis of a wide array, as a dot with ones.

  XLA:CPU lowers a float32 sum over the major axis to a reduce-window tree
  that keeps up with a matrix-vector product up to ~16k outputs but is ~8x
  slower beyond (60 ms vs 7 ms for the [512, 32128] logits kernel; 3.8 vs
  5.4 ms at [512, 16384]; `benchmarks/reductions.py`), so only wide ones
  take the dot. HIGHEST precision keeps the dot in float32 on TPUs.
  """
  kept = x.size // x.shape[axis]
  if axis in (-1, x.ndim - 1) or kept < _WIDE:
    return jnp.mean(x, axis=axis)
  ones = jnp.ones((x.shape[axis],), x.dtype)
  total = jnp.tensordot(x, ones, axes=([axis], [0]),
                        precision=jax.lax.Precision.HIGHEST)
  return total / x.shape[axis]


def scale_by_factored_rms(factored: bool = True, decay_rate: float = 0.8,
                          step_offset: int = 0,
                          min_dim_size_to_factor: int = 128,
                          epsilon: float = 1e-30
                          ) -> optax.GradientTransformation:
  """optax.scale_by_factored_rms (Adafactor's second moments), same state.

  The row and column means of the squared gradient go through `_mean`, so
  a wide one over a major axis is a matrix-vector product; everything else
  is optax's arithmetic, and `init` is optax's own.
  """
  reference = optax.scale_by_factored_rms(
      factored, decay_rate, step_offset, min_dim_size_to_factor, epsilon)

  def factored_dims(shape):
    # The two largest axes (optax's `_factored_dims`), or None.
    if not factored or len(shape) < 2:
      return None
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim_size_to_factor:
      return None
    return int(order[-2]), int(order[-1])

  def update_fn(grads, state, params=None):
    del params
    step = state.count - step_offset + 1
    decay = 1.0 - jnp.asarray(step, jnp.float32) ** (-decay_rate)

    def update_one(grad, v_row, v_col, v):
      dims = factored_dims(grad.shape)
      grad_sqr = jnp.square(grad) + epsilon
      if dims is None:
        new_v = (decay * v + (1.0 - decay) * grad_sqr).astype(v.dtype)
        return grad * new_v ** -0.5, v_row, v_col, new_v
      d1, d0 = dims
      new_v_row = (decay * v_row + (1.0 - decay) * _mean(grad_sqr, d0)
                   ).astype(v_row.dtype)
      new_v_col = (decay * v_col + (1.0 - decay) * _mean(grad_sqr, d1)
                   ).astype(v_col.dtype)
      reduced_d1 = d1 - 1 if d1 > d0 else d1
      row_factor = (new_v_row / jnp.mean(new_v_row, axis=reduced_d1,
                                         keepdims=True)) ** -0.5
      col_factor = new_v_col ** -0.5
      update = (grad * jnp.expand_dims(row_factor, axis=d0)
                * jnp.expand_dims(col_factor, axis=d1))
      return update, new_v_row, new_v_col, v

    treedef = jax.tree_util.tree_structure(grads)
    flat = [update_one(*leaves) for leaves in zip(
        treedef.flatten_up_to(grads), treedef.flatten_up_to(state.v_row),
        treedef.flatten_up_to(state.v_col), treedef.flatten_up_to(state.v))]
    unflatten = lambda i: treedef.unflatten([f[i] for f in flat])
    return unflatten(0), optax.FactoredState(
        count=optax.safe_increment(state.count), v_row=unflatten(1),
        v_col=unflatten(2), v=unflatten(3))

  return optax.GradientTransformation(reference.init, update_fn)


def scale_by_param_rms(min_scale: float = 1e-3) -> optax.GradientTransformation:
  """Updates times max(rms(param), min_scale), per parameter (T5X Adafactor).

  Same values as optax.scale_by_param_block_rms, which goes through
  `safe_root_mean_squares`: that makes the rms differentiable at zero with a
  `where` over the whole parameter and a second mean, i.e. two extra passes
  over every parameter and a parameter-sized temporary per step (~215 ms of op
  time in a ~2.4 s FLAN-T5-small CPU step, benchmarks/README.md). An
  optimizer is never differentiated, so a plain maximum is exact here.
  """
  def update_fn(updates, state, params):
    if params is None:
      raise ValueError('scale_by_param_rms needs the parameters: '
                       'tx.update(updates, state, params)')
    updates = jax.tree_util.tree_map(
        lambda u, p: u * jnp.maximum(
            jnp.sqrt(jnp.mean(jnp.square(p.astype(jnp.float32)))),
            min_scale).astype(u.dtype), updates, params)
    return updates, state

  return optax.GradientTransformation(
      lambda params: optax.EmptyState(), update_fn)


@gin.configurable(module='optimizers')
def adamw(learning_rate: Optional[Schedule] = None, b1: float = 0.9,
          b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
          grad_clip_norm: Optional[float] = None
          ) -> optax.GradientTransformation:
  """AdamW, optionally preceded by global-norm gradient clipping."""
  tx = optax.adamw(learning_rate if learning_rate is not None else constant(),
                   b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  if grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx


def param_path(path) -> str:
  """'/'-joined names of a params tree path, e.g. 'encoder/layers_0/mlp/wi/kernel'."""
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return '/'.join(parts)


def norm_group(path: str, slot_key: Optional[str] = None) -> str:
  """The subtree a parameter's norms are reported under: 'lora' for every
  adapter, '<slot_key>/<child>' inside a slot model's own subtree (e.g.
  'rsllm/projector'), else the path's first name ('encoder', 'decoder',
  'token_embedder', ...): the groups whose learning rates and scales differ."""
  names = path.split('/')
  if any(n.startswith('lora_') for n in names):
    return 'lora'
  if slot_key and names[0] == slot_key and len(names) > 1:
    return f'{slot_key}/{names[1]}'
  return names[0]


def group_norms(tree: Any, groups: Any, skip: Any = None) -> dict:
  """{group: global norm of the leaves of `tree` in it}; `groups` is a tree of
  group names (`norm_group` per leaf), `skip` a tree of bools (frozen)."""
  sq: dict = {}
  skips = (jax.tree_util.tree_leaves(skip) if skip is not None
           else [False] * len(jax.tree_util.tree_leaves(groups)))
  for leaf, g, s in zip(jax.tree_util.tree_leaves(tree),
                        jax.tree_util.tree_leaves(groups), skips):
    if s:
      continue
    v = jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    sq[g] = sq[g] + v if g in sq else v
  return {g: jnp.sqrt(v) for g, v in sq.items()}


def frozen_labels(params: Any, frozen_patterns: Sequence[str]) -> Any:
  """Tree of 'frozen' / 'trainable' labels (regex search over param paths)."""
  compiled = [re.compile(p) for p in frozen_patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: FROZEN if any(c.search(param_path(path))
                                    for c in compiled) else TRAINABLE, params)


@gin.configurable(module='optimizers')
def build_optimizer(optimizer: Optional[optax.GradientTransformation] = None,
                    frozen_patterns: Sequence[str] = (),
                    params: Any = None) -> optax.GradientTransformation:
  """Wraps `optimizer` so parameters matching `frozen_patterns` stay fixed.

  Args:
    optimizer: the inner transformation (default: T5X-default Adafactor).
    frozen_patterns: regexes over '/'-joined parameter paths.
    params: the parameter tree (needed to check that patterns match something).
  """
  optimizer = optimizer if optimizer is not None else adafactor()
  if not frozen_patterns:
    return optimizer
  if params is not None:
    labels = frozen_labels(params, frozen_patterns)
    if FROZEN not in jax.tree_util.tree_leaves(labels):
      raise ValueError(f'frozen_patterns {list(frozen_patterns)} match no '
                       'parameter; check the paths (e.g. "encoder/.*").')
  return optax.multi_transform(
      {TRAINABLE: optimizer, FROZEN: optax.set_to_zero()},
      lambda p: frozen_labels(p, frozen_patterns))
