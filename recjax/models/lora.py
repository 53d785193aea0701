"""Low-rank adapters (LoRA) on the kernels of any recjax model, by path pattern.

  cfg = LoraConfig(rank=8, alpha=16.0, dropout_rate=0.05,
                   targets=('attention/(query|value)$',))
  # inside a top-level module method (t5.Transformer, decoder_only.*):
  with lora.intercept(self.config.lora, deterministic=not enable_dropout):
    ...  # every DenseGeneral whose path matches a target gains lora_a/lora_b

Why an interceptor: the adapters attach to `recjax.models.t5.DenseGeneral`
wherever a model uses it, so T5 and the decoder-only family get LoRA without
a LoRA argument threaded through every layer. `flax.linen.intercept_methods`
runs the interceptor inside the intercepted `@nn.compact` call (flax sets
`in_compact_method` before running interceptors), so `lora_a` / `lora_b` are
created in the DenseGeneral's own scope, beside `kernel`:

  .../self_attention/query/{kernel, lora_a [in, rank], lora_b [rank, out]}

y = x @ W + (alpha / rank) * dropout(x) @ lora_a @ lora_b. lora_b starts at
zero (a fresh adapter leaves the model unchanged) and lora_a as PEFT's
kaiming-uniform(a=sqrt(5)), i.e. U(+-1/sqrt(in)). The trainer freezes every
other parameter (`FROZEN_BASE_PATTERNS`); `merge_lora` folds trained adapters
into the kernels for export.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
from typing import Any, Mapping, Optional

import flax.linen as nn
from flax import traverse_util
import gin
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

LORA_A = 'lora_a'
LORA_B = 'lora_b'
LORA_PARAM_PATTERN = r'/lora_[ab]$'
# Frozen-parameter regexes (trainer `frozen_patterns`): everything that is not
# an adapter matrix.
FROZEN_BASE_PATTERNS = (rf'^(?!.*{LORA_PARAM_PATTERN})',)


def frozen_base_patterns(keep_trainable: str | None = None) -> tuple:
  """FROZEN_BASE_PATTERNS, leaving the top-level subtree `keep_trainable`
  (e.g. a slot module beside the LM: RSLLM's projector) trainable too."""
  if keep_trainable is None:
    return FROZEN_BASE_PATTERNS
  return (rf'^(?!{keep_trainable}/)(?!.*{LORA_PARAM_PATTERN})',)
# PEFT: kaiming_uniform_(a=sqrt(5)) -> bound 1/sqrt(fan_in).
lora_a_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Rank, scale (alpha / rank), dropout on the adapter input, and regexes
  (searched in the '/'-joined module path, e.g.
  'decoder/layers_0/self_attention/query') of the dense layers to adapt."""
  rank: int = 8
  alpha: float = 16.0
  dropout_rate: float = 0.0
  targets: tuple = ('attention/(query|value)$',)

  def __post_init__(self):
    targets = self.targets
    if isinstance(targets, str):
      targets = (targets,)
    object.__setattr__(self, 'targets', tuple(targets))
    if int(self.rank) != self.rank or self.rank < 1:
      raise ValueError(f'LoraConfig.rank={self.rank!r}: expected an int >= 1')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'LoraConfig.dropout_rate={self.dropout_rate!r}: '
                       'expected 0 <= rate < 1')
    if not self.targets:
      raise ValueError('LoraConfig.targets is empty: give regexes of the dense '
                       "layers to adapt, e.g. ('attention/(query|value)$',)")
    for t in self.targets:
      try:
        re.compile(t)
      except re.error as e:
        raise ValueError(f'LoraConfig.targets: {t!r} is not a valid regex: '
                         f'{e}') from e

  @property
  def scale(self) -> float:
    return float(self.alpha) / float(self.rank)


# ------------------------------------------------------------- the adapter
def _dense_cls():
  from recjax.models import t5  # pylint: disable=g-import-not-at-top
  return t5.DenseGeneral


def _kernel_axes(module) -> tuple:
  """(input axis, output axis) logical names of a DenseGeneral's 2-D kernel."""
  axes = tuple(getattr(module, 'kernel_axes', ()) or ())
  if len(axes) >= 2:
    return axes[0], axes[-1]
  return None, None


def _adapter(module, inputs, y, config: LoraConfig, deterministic: bool):
  """y + scale * dropout(x) @ lora_a @ lora_b, params in `module`'s scope."""
  features = tuple(module.features) if isinstance(
      module.features, (tuple, list)) else (module.features,)
  axis = module.axis if isinstance(module.axis, (tuple, list)) else (
      module.axis,)
  x = jnp.asarray(inputs, module.dtype)
  axis = tuple(a % x.ndim for a in axis)
  in_shape = tuple(x.shape[a] for a in axis)
  n_in, n_out = int(np.prod(in_shape)), int(np.prod(features))
  in_axis, out_axis = _kernel_axes(module)
  a = module.param(LORA_A, nn.with_logical_partitioning(
      lora_a_init, (in_axis, 'lora_rank')), (n_in, config.rank),
                   module.param_dtype)
  b = module.param(LORA_B, nn.with_logical_partitioning(
      nn.initializers.zeros, ('lora_rank', out_axis)), (config.rank, n_out),
                   module.param_dtype)
  if not deterministic and config.dropout_rate > 0.0:
    keep_prob = 1.0 - config.dropout_rate
    keep = jax.random.bernoulli(module.make_rng('dropout'), keep_prob, x.shape)
    x = jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype),
                  jnp.zeros_like(x))
  a = jnp.asarray(a, module.dtype).reshape(in_shape + (config.rank,))
  b = jnp.asarray(b, module.dtype).reshape((config.rank,) + features)
  h = lax.dot_general(x, a, ((axis, tuple(range(len(axis)))), ((), ())))
  delta = lax.dot_general(h, b, (((h.ndim - 1,), (0,)), ((), ())))
  return y + (delta * jnp.asarray(config.scale, delta.dtype)).astype(y.dtype)


class _Tracker(threading.local):
  """Per-thread record of the outermost `intercept` (nested ones share it)."""

  def __init__(self):
    self.depth = 0
    self.seen: list = []        # paths of the dense layers called
    self.matched: set = set()   # target patterns that matched a path
    self.initializing = False


_TRACKER = _Tracker()


def _no_match_error(config: LoraConfig, unmatched, paths) -> ValueError:
  uniq = sorted(set(paths))
  shown = ', '.join(uniq[:12]) + (' ...' if len(uniq) > 12 else '')
  return ValueError(
      f'LoRA targets {list(unmatched)} match no dense layer of the model '
      f'(targets: {list(config.targets)}). Dense layer paths look like: '
      f'{shown or "(none)"}')


@contextlib.contextmanager
def intercept(config: Optional[LoraConfig], deterministic: bool = True):
  """Adds the adapters of `config` to matching DenseGeneral calls (no-op if None).

  Nested uses (a model method calling another) install one interceptor, the
  outermost's. At initialisation, a target regex that matched none of the dense layers
  called inside the outermost `intercept` is an error naming it.
  """
  if config is None:
    yield
    return
  dense_cls = _dense_cls()

  def interceptor(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != '__call__' or not isinstance(module, dense_cls):
      return y
    path = '/'.join(module.path)
    _TRACKER.seen.append(path)
    if module.is_initializing():
      _TRACKER.initializing = True
    hit = [t for t in config.targets if re.search(t, path)]
    if not hit:
      return y
    _TRACKER.matched.update(hit)
    inputs = args[0] if args else kwargs['inputs']
    return _adapter(module, inputs, y, config, deterministic)

  outermost = _TRACKER.depth == 0
  if outermost:
    _TRACKER.seen, _TRACKER.matched, _TRACKER.initializing = [], set(), False
  _TRACKER.depth += 1
  try:
    if outermost:
      with nn.intercept_methods(interceptor):
        yield
    else:  # e.g. Transformer.encode inside __call__: the outer one applies
      yield
  finally:
    _TRACKER.depth -= 1
  if outermost and _TRACKER.initializing:
    unmatched = [t for t in config.targets if t not in _TRACKER.matched]
    if unmatched:
      raise _no_match_error(config, unmatched, _TRACKER.seen)


# ------------------------------------------------------------- param trees
def _flatten(tree: Any) -> dict:
  """{'a/b/kernel': leaf} of a (boxed) nested params dict."""
  return traverse_util.flatten_dict(nn.meta.unbox(tree), sep='/')


def _unflatten(flat: Mapping[str, Any]) -> dict:
  return traverse_util.unflatten_dict(dict(flat), sep='/')


def is_lora_path(path: str) -> bool:
  return re.search(LORA_PARAM_PATTERN, '/' + path) is not None


def has_lora(params: Any) -> bool:
  """Whether a params tree holds any adapter matrix."""
  return any(is_lora_path(k) for k in _flatten(params))


def lora_param_count(params: Any) -> int:
  """Number of adapter parameters (elements of every lora_a / lora_b)."""
  return int(sum(int(np.prod(v.shape)) for k, v in _flatten(params).items()
                 if is_lora_path(k)))


def split_lora(params: Any) -> tuple[dict, dict]:
  """(base params, adapter params) as two nested dicts of the same paths."""
  flat = _flatten(params)
  base = {k: v for k, v in flat.items() if not is_lora_path(k)}
  adapters = {k: v for k, v in flat.items() if is_lora_path(k)}
  return _unflatten(base), _unflatten(adapters)


def merge_trees(base: Any, adapters: Any) -> dict:
  """`split_lora` inverted: one nested dict holding both (disjoint) trees."""
  flat = _flatten(base)
  for k, v in _flatten(adapters).items():
    if k in flat:
      raise ValueError(f'merge_trees: {k} is in both trees')
    flat[k] = v
  return _unflatten(flat)


def merge_lora(params: Any, config: LoraConfig) -> dict:
  """Params with every adapter folded into its kernel, lora leaves removed.

  kernel' = kernel + (alpha / rank) * lora_a @ lora_b, computed in float32
  (float64 for float64 kernels) and cast back to the kernel's dtype; the
  result is a plain nested dict that the model without LoRA applies to.
  """
  flat = _flatten(params)
  out = {k: v for k, v in flat.items() if not is_lora_path(k)}
  for key in flat:
    if not key.endswith('/' + LORA_A):
      continue
    scope = key[:-len(LORA_A) - 1]
    a, b = flat[key], flat.get(f'{scope}/{LORA_B}')
    kernel = flat.get(f'{scope}/kernel')
    if b is None or kernel is None:
      raise ValueError(f'{scope}: has lora_a but no '
                       f'{"lora_b" if b is None else "kernel"}')
    if kernel.ndim != 2 or kernel.shape != (a.shape[0], b.shape[1]):
      raise ValueError(f'{scope}: kernel {kernel.shape} does not match '
                       f'lora_a {a.shape} @ lora_b {b.shape}')
    if a.shape[1] != config.rank:
      raise ValueError(f'{scope}: lora_a has rank {a.shape[1]} but '
                       f'LoraConfig.rank={config.rank}')
    dtype = kernel.dtype
    acc = np.float64 if dtype == np.float64 else np.float32
    if isinstance(kernel, jax.Array):
      delta = jnp.matmul(jnp.asarray(a, acc), jnp.asarray(b, acc),
                         precision=lax.Precision.HIGHEST)
      out[f'{scope}/kernel'] = (jnp.asarray(kernel, acc) +
                                config.scale * delta).astype(dtype)
    else:
      delta = np.asarray(a, acc) @ np.asarray(b, acc)
      out[f'{scope}/kernel'] = (np.asarray(kernel, acc) +
                                acc(config.scale) * delta).astype(dtype)
  return _unflatten(out)
