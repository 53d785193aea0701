"""T5.1.1 / FLAN-T5 encoder-decoder in flax.linen, named and built as T5X's.

This mirrors `t5x/examples/t5/network.py` + `t5x/examples/t5/layers.py`:
RMS layer norm (no bias, no mean subtraction), one bucketed relative position
bias per stack, gated-GELU MLP, untied `decoder/logits_dense`, no biases, no
1/sqrt(head_dim) in attention (folded into the query initializer), float32
attention logits, packed inputs via segment ids and a T5X-style KV cache.
The parameter tree is T5X's, so T5X and Hugging Face checkpoints map onto it
by a table (`recjax.checkpoints`).

Every parameter is created with `nn.with_logical_partitioning`, so
`nn.get_partition_spec(variables)` (or `logical_axes(config)`) gives the
logical axis names the trainer maps onto its mesh; main activations carry
`nn.with_logical_constraint` (a no-op outside a mesh/rules context).

Autoregressive decoding (as T5X's `Decoder`, cache in the 'cache' collection,
T5X layout: cached_key/cached_value [batch, heads, head_dim, length] and a
scalar cache_index per self-attention):

  # 1. allocate: trace decode=True with full-length [B, L] decoder inputs; the
  #    cache is zeros, so only its shapes are needed (T5X initialize_cache).
  shapes = jax.eval_shape(functools.partial(
      model.apply, decode=True, enable_dropout=False, mutable=['cache'],
      method=Transformer.decode), {'params': params}, encoded, enc_tokens,
      dec_tokens_full, dec_tokens_full)[1]['cache']
  cache = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
  # 2. one token a step: [B, 1] inputs, max_decode_length=L.
  logits, state = model.apply({'params': params, 'cache': cache}, encoded,
                              enc_tokens, tok, tok, decode=True,
                              max_decode_length=L, enable_dropout=False,
                              mutable=['cache'], method=Transformer.decode)
  cache = state['cache']

T5X's `prefill` (filling the cache from a prompt in one call) is not
implemented: feed prompt tokens one step at a time.
"""
from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import flax.linen as nn
import gin
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from recjax.models import lora as lora_lib

Array = Any
DType = Any
Initializer = Callable[..., Array]

# T5X's defaults (layers.py / network.py).
default_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in',
                                                       'truncated_normal')
default_embed_init = nn.initializers.normal(stddev=1.0)
relpos_embed_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
NEG_INF = -1e10


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5.1.1 / FLAN-T5 model (T5X's `T5Config`)."""
  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  head_dim: int = 64
  mlp_dim: int = 1024
  mlp_activations: tuple = ('gelu', 'linear')
  dropout_rate: float = 0.0
  dtype: str = 'bfloat16'
  param_dtype: str = 'float32'
  logits_via_embedding: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  float32_attention_logits: bool = True
  # 'none' | 'full' (recompute each layer) | 'minimal' (save weight matmuls).
  remat_policy: str = 'none'
  # Low-rank adapters on the DenseGeneral kernels its targets match.
  lora: Optional[lora_lib.LoraConfig] = None

  def __post_init__(self):
    # gin and JSON hand lists over; keep the config hashable.
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    if self.remat_policy not in _REMAT_POLICIES:
      raise ValueError(f'T5Config.remat_policy={self.remat_policy!r}: expected '
                       f'one of {sorted(_REMAT_POLICIES)}')


_REMAT_POLICIES = {
    'none': None,
    'full': None,
    'minimal': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _canonicalize_tuple(x: Union[int, Sequence[int]]) -> tuple:
  return tuple(x) if isinstance(x, Iterable) else (x,)


def _activation(fn_or_string: Union[str, Callable[..., Array]]):
  """'linear' -> identity, names -> flax.linen functions ('gelu' is tanh-approx).

  T5X's 'gelu' is `nn.gelu(approximate=True)`, i.e. Hugging Face's `gelu_new`,
  which is what HF's `feed_forward_proj="gated-gelu"` uses.
  """
  if fn_or_string == 'linear':
    return lambda x: x
  if isinstance(fn_or_string, str):
    return getattr(nn, fn_or_string)
  return fn_or_string


# ----------------------------------------------------------------------------
# Masks (T5X layers.py).
# ----------------------------------------------------------------------------
def make_attention_mask(query_input: Array, key_input: Array,
                        pairwise_fn: Callable[..., Any] = jnp.multiply,
                        extra_batch_dims: int = 0,
                        dtype: DType = jnp.float32) -> Array:
  """[B..., Lq] x [B..., Lk] -> [B..., 1, Lq, Lk] mask."""
  mask = pairwise_fn(jnp.expand_dims(query_input, axis=-1),
                     jnp.expand_dims(key_input, axis=-2))
  mask = jnp.expand_dims(mask, axis=-3)
  mask = jnp.expand_dims(mask, axis=tuple(range(extra_batch_dims)))
  return mask.astype(dtype)


def make_causal_mask(x: Array, extra_batch_dims: int = 0,
                     dtype: DType = jnp.float32) -> Array:
  idxs = jnp.broadcast_to(jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape)
  return make_attention_mask(idxs, idxs, jnp.greater_equal,
                             extra_batch_dims=extra_batch_dims, dtype=dtype)


def combine_masks(*masks: Optional[Array], dtype: DType = jnp.float32):
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  mask = masks[0]
  for other in masks[1:]:
    mask = jnp.logical_and(mask, other)
  return mask.astype(dtype)


def broadcast_over_batch(bias: Array, batch: int) -> Array:
  """[1, ...] -> [batch, ...] as an outer product with ones.

  Adding a [1, ...] bias to a [batch, ...] array makes its gradient a sum
  over the major (batch) axis, which XLA:CPU runs ~40x slower than the same
  sum as a dot with ones (50 ms vs 1.3 ms per step for FLAN-T5-small's
  encoder bias at batch 8; `benchmarks/reductions.py`). Written as an
  einsum, the gradient is that dot; on any backend it is a tiny matmul.
  """
  if bias.shape[0] != 1 or batch == 1:
    return bias
  ones = jnp.ones((batch,), bias.dtype)
  return jnp.einsum('b,...->b...', ones, bias[0],
                    precision=lax.Precision.HIGHEST)


def combine_biases(*biases: Optional[Array]):
  biases = [b for b in biases if b is not None]
  if not biases:
    return None
  return functools.reduce(operator.add, biases)


def make_decoder_mask(decoder_target_tokens: Array, dtype: DType,
                      decoder_segment_ids: Optional[Array] = None) -> Array:
  """Causal & non-padding (target token > 0) & same-segment mask."""
  masks = [
      make_causal_mask(decoder_target_tokens, dtype=dtype),
      make_attention_mask(decoder_target_tokens > 0, decoder_target_tokens > 0,
                          dtype=dtype),
  ]
  if decoder_segment_ids is not None:
    masks.append(make_attention_mask(decoder_segment_ids, decoder_segment_ids,
                                     jnp.equal, dtype=dtype))
  return combine_masks(*masks, dtype=dtype)


# ----------------------------------------------------------------------------
# Layers (T5X layers.py).
# ----------------------------------------------------------------------------
def dot_product_attention(query: Array, key: Array, value: Array,
                          bias: Optional[Array] = None,
                          dropout_rng: Optional[Array] = None,
                          dropout_rate: float = 0.,
                          deterministic: bool = False,
                          dtype: DType = jnp.float32,
                          float32_logits: bool = False) -> Array:
  """[B, Lq, H, D] x [B, Lk, H, D] -> [B, Lq, H, D]; no 1/sqrt(D) scaling."""
  if float32_logits:
    query = query.astype(jnp.float32)
    key = key.astype(jnp.float32)
  attn_weights = jnp.einsum('bqhd,bkhd->bhqk', query, key)
  if bias is not None:
    attn_weights = attn_weights + bias.astype(attn_weights.dtype)
  attn_weights = jax.nn.softmax(attn_weights).astype(dtype)
  if not deterministic and dropout_rate > 0.:
    keep_prob = 1.0 - dropout_rate
    keep = jax.random.bernoulli(dropout_rng, keep_prob, attn_weights.shape)
    attn_weights = attn_weights * (keep.astype(attn_weights.dtype) /
                                   jnp.asarray(keep_prob, dtype=dtype))
  return jnp.einsum('bhqk,bkhd->bqhd', attn_weights, value.astype(dtype))


class DenseGeneral(nn.Module):
  """Dense layer whose kernel is stored 2-D (in, out) as in T5X.

  The kernel is reshaped to `in_shape + features` for the contraction, so
  attention projections keep T5X's joined `(embed, joined_kv)` layout.
  T5 has no biases; `use_bias` adds a 'bias' [out] (Qwen2's q/k/v) inside the
  same submodule, so anything that intercepts DenseGeneral sees one layer.
  """
  features: Union[int, Sequence[int]]
  axis: Union[int, Sequence[int]] = -1
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  kernel_init: Initializer = default_kernel_init
  kernel_axes: tuple = ()
  use_bias: bool = False
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    features = _canonicalize_tuple(self.features)
    axis = tuple(a % inputs.ndim for a in _canonicalize_tuple(self.axis))
    inputs = jnp.asarray(inputs, self.dtype)
    in_shape = tuple(inputs.shape[a] for a in axis)
    param_shape = (int(np.prod(in_shape)), int(np.prod(features)))
    kernel = self.param(
        'kernel', nn.with_logical_partitioning(self.kernel_init,
                                               self.kernel_axes),
        param_shape, self.param_dtype)
    kernel = jnp.asarray(kernel, self.dtype)
    n = len(axis)
    if axis == tuple(range(inputs.ndim - n, inputs.ndim)):
      # Contracting the trailing dims: run one 2-D [tokens, in] x [in, out]
      # matmul (same contraction, same result). Keeping activations 2-D lets
      # XLA's backward emit the weight-gradient dot without the layout
      # transposes it inserts for >2-D dot_generals.
      batch_shape = inputs.shape[:inputs.ndim - n]
      x2d = inputs.reshape((int(np.prod(batch_shape)), param_shape[0]))
      y = lax.dot_general(x2d, kernel, (((1,), (0,)), ((), ())))
      y = y.reshape(batch_shape + features)
    else:
      kernel = kernel.reshape(in_shape + features)
      contract = (axis, tuple(range(len(axis))))
      y = lax.dot_general(inputs, kernel, (contract, ((), ())))
    if self.use_bias:
      bias = self.param(
          'bias', nn.with_logical_partitioning(self.bias_init,
                                               tuple(self.kernel_axes[-1:])),
          (param_shape[1],), self.param_dtype)
      y = y + jnp.asarray(bias, self.dtype).reshape(features)
    return y


class LayerNorm(nn.Module):
  """T5 RMS norm: no bias, no mean subtraction, computed in float32."""
  epsilon: float = 1e-6
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, jnp.float32)
    mean2 = jnp.mean(lax.square(x), axis=-1, keepdims=True)
    y = jnp.asarray(x * lax.rsqrt(mean2 + self.epsilon), self.dtype)
    scale = self.param(
        'scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
        (x.shape[-1],), self.param_dtype)
    return y * jnp.asarray(scale, self.dtype)


class Embed(nn.Module):
  """Token embedding table `embedding` [vocab, embed]; `attend` for tied logits."""
  num_embeddings: int
  features: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  embedding_init: Initializer = default_embed_init

  def setup(self):
    self.embedding = self.param(
        'embedding', nn.with_logical_partitioning(self.embedding_init,
                                                  ('vocab', 'embed')),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, inputs: Array) -> Array:
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError('Input type must be an integer or unsigned integer.')
    output = jnp.take(jnp.asarray(self.embedding, self.dtype), inputs, axis=0)
    return nn.with_logical_constraint(output, ('batch', 'length', 'embed'))

  def attend(self, query: Array) -> Array:
    query = jnp.asarray(query, self.dtype)
    return jnp.dot(query, jnp.asarray(self.embedding, self.dtype).T)


def relative_position_bucket(relative_position: np.ndarray,
                             bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128) -> np.ndarray:
  """T5's bucketing of (memory - query) positions; numpy, static shapes."""
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps) /
      np.log(max_distance / max_exact) *
      (num_buckets - max_exact)).astype(np.int32)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  ret += np.where(is_small, n, val_if_large)
  return ret


class RelativePositionBiases(nn.Module):
  """`rel_embedding` [heads, buckets] -> attention bias [1, heads, q, k]."""
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  embedding_init: Initializer = relpos_embed_init

  @nn.compact
  def __call__(self, qlen: int, klen: int, bidirectional: bool = True):
    context_position = np.arange(qlen, dtype=np.int32)[:, None]
    memory_position = np.arange(klen, dtype=np.int32)[None, :]
    rp_bucket = relative_position_bucket(
        memory_position - context_position, bidirectional=bidirectional,
        num_buckets=self.num_buckets, max_distance=self.max_distance)
    rel_embedding = self.param(
        'rel_embedding', nn.with_logical_partitioning(
            self.embedding_init, ('heads', 'relpos_buckets')),
        (self.num_heads, self.num_buckets), self.param_dtype)
    rel_embedding = jnp.asarray(rel_embedding, self.dtype)
    values = jnp.take(rel_embedding, jnp.asarray(rp_bucket), axis=1)
    return values[jnp.newaxis, ...]


class MultiHeadDotProductAttention(nn.Module):
  """T5X attention: joined q/k/v/out kernels, T5X-layout KV cache."""
  num_heads: int
  head_dim: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  dropout_rate: float = 0.
  kernel_init: Initializer = default_kernel_init
  float32_logits: bool = False

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array,
               mask: Optional[Array] = None, bias: Optional[Array] = None, *,
               decode: bool = False, deterministic: bool = False) -> Array:
    projection = functools.partial(
        DenseGeneral, axis=-1, features=(self.num_heads, self.head_dim),
        kernel_axes=('embed', 'joined_kv'), dtype=self.dtype,
        param_dtype=self.param_dtype)
    # 1/sqrt(depth) folded into the query initializer (Mesh TF / T5X).
    depth_scaling = float(np.sqrt(self.head_dim))
    query_init = lambda *args: self.kernel_init(*args) / depth_scaling
    query = projection(kernel_init=query_init, name='query')(inputs_q)
    key = projection(kernel_init=self.kernel_init, name='key')(inputs_kv)
    value = projection(kernel_init=self.kernel_init, name='value')(inputs_kv)
    qkv_axes = ('batch', 'length', 'heads', 'kv')
    query = nn.with_logical_constraint(query, qkv_axes)
    key = nn.with_logical_constraint(key, qkv_axes)
    value = nn.with_logical_constraint(value, qkv_axes)

    if decode:
      # Cache layout as T5X: [batch, heads, head_dim, length].
      is_initialized = self.has_variable('cache', 'cached_key')
      swap_dims = lambda x: x[:-3] + tuple(x[i] for i in [-2, -1, -3])
      cached_key = self.variable('cache', 'cached_key', jnp.zeros,
                                 swap_dims(key.shape), key.dtype)
      cached_value = self.variable('cache', 'cached_value', jnp.zeros,
                                   swap_dims(value.shape), value.dtype)
      cache_index = self.variable('cache', 'cache_index',
                                  lambda: jnp.array(0, dtype=jnp.int32))
      if is_initialized:
        batch, num_heads, head_dim, length = cached_key.value.shape
        expected = (batch, 1, num_heads, head_dim)
        if expected != query.shape:
          raise ValueError('Autoregressive cache shape error: expected query '
                           f'shape {expected}, got {query.shape}.')
        cur_index = cache_index.value
        key = lax.dynamic_update_slice(cached_key.value,
                                       jnp.moveaxis(key, -3, -1),
                                       (0, 0, 0, cur_index))
        value = lax.dynamic_update_slice(cached_value.value,
                                         jnp.moveaxis(value, -3, -1),
                                         (0, 0, 0, cur_index))
        cached_key.value = key
        cached_value.value = value
        cache_index.value = cache_index.value + 1
        key = jnp.moveaxis(key, -1, -3)
        value = jnp.moveaxis(value, -1, -3)
        mask = combine_masks(
            mask, jnp.broadcast_to(jnp.arange(length) <= cur_index,
                                   (batch, 1, 1, length)))
        if bias is not None:
          if bias.shape[-1] != length:
            raise ValueError(
                f'Decoding with a cache of length {length} needs a relative '
                f'position bias of that length (got {bias.shape[-1]}): pass '
                'max_decode_length to Transformer.decode.')
          bias = lax.dynamic_slice_in_dim(bias, cur_index, 1, axis=-2)

    attention_bias = None
    if mask is not None:
      attention_bias = lax.select(
          mask > 0, jnp.full(mask.shape, 0.).astype(self.dtype),
          jnp.full(mask.shape, NEG_INF).astype(self.dtype))
    if bias is not None:
      bias = broadcast_over_batch(bias, query.shape[0])
    attention_bias = combine_biases(attention_bias, bias)

    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.:
      dropout_rng = self.make_rng('dropout')
    x = dot_product_attention(
        query, key, value, bias=attention_bias, dropout_rng=dropout_rng,
        dropout_rate=self.dropout_rate, deterministic=deterministic,
        dtype=self.dtype, float32_logits=self.float32_logits)
    out = DenseGeneral(
        features=inputs_q.shape[-1], axis=(-2, -1),
        kernel_axes=('joined_kv', 'embed'), kernel_init=self.kernel_init,
        dtype=self.dtype, param_dtype=self.param_dtype, name='out')(x)
    return nn.with_logical_constraint(out, ('batch', 'length', 'embed'))


class MlpBlock(nn.Module):
  """Gated MLP: prod_i act_i(x @ wi_i) @ wo (`wi` when one activation)."""
  intermediate_dim: int = 2048
  activations: Sequence[Union[str, Callable[..., Any]]] = ('relu',)
  kernel_init: Initializer = default_kernel_init
  intermediate_dropout_rate: float = 0.1
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool = False) -> Array:
    activations = []
    for idx, act_fn in enumerate(self.activations):
      name = 'wi' if len(self.activations) == 1 else f'wi_{idx}'
      x = DenseGeneral(self.intermediate_dim, dtype=self.dtype,
                       param_dtype=self.param_dtype,
                       kernel_init=self.kernel_init,
                       kernel_axes=('embed', 'mlp'), name=name)(inputs)
      activations.append(_activation(act_fn)(x))
    x = functools.reduce(operator.mul, activations)
    x = nn.Dropout(rate=self.intermediate_dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'mlp'))
    out = DenseGeneral(inputs.shape[-1], dtype=self.dtype,
                       param_dtype=self.param_dtype,
                       kernel_init=self.kernel_init,
                       kernel_axes=('mlp', 'embed'), name='wo')(x)
    return out


# ----------------------------------------------------------------------------
# Network (T5X examples/t5/network.py).
# ----------------------------------------------------------------------------
def _dtypes(cfg: T5Config):
  return jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)


def _maybe_remat(cls, cfg: T5Config, static_argnums: tuple):
  if cfg.remat_policy == 'none':
    return cls
  return nn.remat(cls, policy=_REMAT_POLICIES[cfg.remat_policy],
                  static_argnums=static_argnums)


def splice_embeddings(x: Array, input_embeddings: Optional[Array],
                      embedding_mask: Optional[Array]) -> Array:
  """Token embeddings x [B, L, E] with `input_embeddings` where the mask is
  set (all positions when None): the soft-token entry of ILM / RSLLM."""
  if input_embeddings is None:
    return x
  if input_embeddings.shape != x.shape:
    raise ValueError(f'input_embeddings shape {input_embeddings.shape} != '
                     f'token embeddings shape {x.shape}')
  if embedding_mask is None:
    embedding_mask = jnp.ones(x.shape[:-1], dtype=bool)
  x = jnp.where(embedding_mask.astype(bool)[..., None],
                input_embeddings.astype(x.dtype), x)
  return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, inputs, encoder_mask, encoder_bias, deterministic=False):
    cfg = self.config
    dtype, param_dtype = _dtypes(cfg)
    x = LayerNorm(dtype=dtype, param_dtype=param_dtype,
                  name='pre_attention_layer_norm')(inputs)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    x = MultiHeadDotProductAttention(
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=dtype,
        param_dtype=param_dtype, dropout_rate=cfg.dropout_rate,
        float32_logits=cfg.float32_attention_logits, name='attention')(
            x, x, encoder_mask, encoder_bias, deterministic=deterministic)
    x = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=deterministic)
    x = x + inputs
    y = LayerNorm(dtype=dtype, param_dtype=param_dtype,
                  name='pre_mlp_layer_norm')(x)
    y = nn.with_logical_constraint(y, ('batch', 'length', 'embed'))
    y = MlpBlock(intermediate_dim=cfg.mlp_dim, activations=cfg.mlp_activations,
                 intermediate_dropout_rate=cfg.dropout_rate, dtype=dtype,
                 param_dtype=param_dtype, name='mlp')(
                     y, deterministic=deterministic)
    y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        y, deterministic=deterministic)
    y = y + x
    return nn.with_logical_constraint(y, ('batch', 'length', 'embed'))


class DecoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, inputs, encoded, decoder_bias, decoder_mask=None,
               encoder_decoder_mask=None, deterministic=False, decode=False):
    cfg = self.config
    dtype, param_dtype = _dtypes(cfg)
    x = LayerNorm(dtype=dtype, param_dtype=param_dtype,
                  name='pre_self_attention_layer_norm')(inputs)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    x = MultiHeadDotProductAttention(
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=dtype,
        param_dtype=param_dtype, dropout_rate=cfg.dropout_rate,
        float32_logits=cfg.float32_attention_logits, name='self_attention')(
            x, x, decoder_mask, decoder_bias, deterministic=deterministic,
            decode=decode)
    x = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=deterministic)
    x = x + inputs
    y = LayerNorm(dtype=dtype, param_dtype=param_dtype,
                  name='pre_cross_attention_layer_norm')(x)
    y = nn.with_logical_constraint(y, ('batch', 'length', 'embed'))
    y = MultiHeadDotProductAttention(
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=dtype,
        param_dtype=param_dtype, dropout_rate=cfg.dropout_rate,
        float32_logits=cfg.float32_attention_logits,
        name='encoder_decoder_attention')(
            y, encoded, encoder_decoder_mask, deterministic=deterministic)
    y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        y, deterministic=deterministic)
    y = y + x
    z = LayerNorm(dtype=dtype, param_dtype=param_dtype,
                  name='pre_mlp_layer_norm')(y)
    z = nn.with_logical_constraint(z, ('batch', 'length', 'embed'))
    z = MlpBlock(intermediate_dim=cfg.mlp_dim, activations=cfg.mlp_activations,
                 intermediate_dropout_rate=cfg.dropout_rate, dtype=dtype,
                 param_dtype=param_dtype, name='mlp')(
                     z, deterministic=deterministic)
    z = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        z, deterministic=deterministic)
    z = z + y
    return nn.with_logical_constraint(z, ('batch', 'length', 'embed'))


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoder_input_tokens, encoder_mask=None,
               deterministic=False, input_embeddings=None,
               embedding_mask=None):
    cfg = self.config
    dtype, param_dtype = _dtypes(cfg)
    assert encoder_input_tokens.ndim == 2, encoder_input_tokens.shape
    length = encoder_input_tokens.shape[-1]
    rel_emb = RelativePositionBiases(
        num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance,
        num_heads=cfg.num_heads, dtype=dtype, param_dtype=param_dtype,
        name='relpos_bias')
    encoder_bias = rel_emb(length, length, True)

    x = self.shared_embedding(encoder_input_tokens.astype('int32'))
    x = splice_embeddings(x, input_embeddings, embedding_mask)
    x = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=deterministic)
    x = x.astype(dtype)
    layer_cls = _maybe_remat(EncoderLayer, cfg, static_argnums=(4,))
    for lyr in range(cfg.num_encoder_layers):
      x = layer_cls(config=cfg, name=f'layers_{lyr}')(
          x, encoder_mask, encoder_bias, deterministic)
    x = LayerNorm(dtype=dtype, param_dtype=param_dtype,
                  name='encoder_norm')(x)
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded, decoder_input_tokens, decoder_mask=None,
               encoder_decoder_mask=None, deterministic=False, decode=False,
               max_decode_length=None):
    cfg = self.config
    dtype, param_dtype = _dtypes(cfg)
    assert decoder_input_tokens.ndim == 2, decoder_input_tokens.shape
    length = decoder_input_tokens.shape[-1]
    rel_emb = RelativePositionBiases(
        num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance,
        num_heads=cfg.num_heads, dtype=dtype, param_dtype=param_dtype,
        name='relpos_bias')
    relpos_length = max_decode_length if (decode and max_decode_length) else (
        length)
    decoder_bias = rel_emb(relpos_length, relpos_length, False)

    y = self.shared_embedding(decoder_input_tokens.astype('int32'))
    y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        y, deterministic=deterministic)
    y = y.astype(dtype)
    layer_cls = _maybe_remat(DecoderLayer, cfg, static_argnums=(6, 7))
    for lyr in range(cfg.num_decoder_layers):
      y = layer_cls(config=cfg, name=f'layers_{lyr}')(
          y, encoded, decoder_bias, decoder_mask, encoder_decoder_mask,
          deterministic, decode)
    y = LayerNorm(dtype=dtype, param_dtype=param_dtype,
                  name='decoder_norm')(y)
    y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        y, deterministic=deterministic)
    if cfg.logits_via_embedding:
      # Tied logits: divide by sqrt(emb_dim) (T5X; HF's d_model**-0.5).
      logits = self.shared_embedding.attend(y)
      logits = logits / jnp.sqrt(y.shape[-1]).astype(logits.dtype)
    else:
      logits = DenseGeneral(cfg.vocab_size, dtype=jnp.float32,
                            param_dtype=param_dtype,
                            kernel_axes=('embed', 'vocab'),
                            name='logits_dense')(y)
    logits = logits.astype(jnp.float32)
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


class Transformer(nn.Module):
  """T5.1.1 / FLAN-T5 encoder-decoder (T5X `network.Transformer`)."""
  config: T5Config

  def setup(self):
    cfg = self.config
    dtype, param_dtype = _dtypes(cfg)
    self.token_embedder = Embed(
        num_embeddings=cfg.vocab_size, features=cfg.emb_dim, dtype=dtype,
        param_dtype=param_dtype, embedding_init=default_embed_init)
    self.encoder = Encoder(config=cfg, shared_embedding=self.token_embedder)
    self.decoder = Decoder(config=cfg, shared_embedding=self.token_embedder)

  def encode(self, encoder_input_tokens, encoder_segment_ids=None,
             encoder_positions=None, *, input_embeddings=None,
             embedding_mask=None, enable_dropout=True):
    """Encodes [B, L] tokens -> [B, L, emb] (padding = token id 0).

    input_embeddings [B, L, emb] replace the token embeddings where
    embedding_mask [B, L] is true (soft tokens); the tokens still define the
    padding mask, so soft-token slots must hold a non-zero placeholder id.
    encoder_positions is accepted for T5X API parity and unused: T5 has only
    relative positions, which packing leaves intact.
    """
    del encoder_positions
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    encoder_mask = make_attention_mask(encoder_input_tokens > 0,
                                       encoder_input_tokens > 0, dtype=dtype)
    if encoder_segment_ids is not None:
      encoder_mask = combine_masks(
          encoder_mask,
          make_attention_mask(encoder_segment_ids, encoder_segment_ids,
                              jnp.equal, dtype=dtype), dtype=dtype)
    with lora_lib.intercept(cfg.lora, deterministic=not enable_dropout):
      return self.encoder(encoder_input_tokens, encoder_mask,
                          deterministic=not enable_dropout,
                          input_embeddings=input_embeddings,
                          embedding_mask=embedding_mask)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens,
             decoder_target_tokens, encoder_segment_ids=None,
             decoder_segment_ids=None, decoder_positions=None, *,
             enable_dropout=True, decode=False, max_decode_length=None):
    """Decoder logits [B, T, vocab] float32 (teacher-forced or one cached step)."""
    del decoder_positions  # relative positions only (see `encode`).
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    if decode:
      decoder_mask = None
      encoder_decoder_mask = make_attention_mask(
          jnp.ones_like(decoder_target_tokens), encoder_input_tokens > 0,
          dtype=dtype)
    else:
      decoder_mask = make_decoder_mask(decoder_target_tokens, dtype=dtype,
                                       decoder_segment_ids=decoder_segment_ids)
      encoder_decoder_mask = make_attention_mask(
          decoder_target_tokens > 0, encoder_input_tokens > 0, dtype=dtype)
    if encoder_segment_ids is not None:
      if decode:
        raise ValueError('During decoding, packing should not be used but '
                         '`encoder_segment_ids` was passed to '
                         '`Transformer.decode`.')
      if decoder_segment_ids is None:
        raise ValueError('encoder_segment_ids needs decoder_segment_ids.')
      encoder_decoder_mask = combine_masks(
          encoder_decoder_mask,
          make_attention_mask(decoder_segment_ids, encoder_segment_ids,
                              jnp.equal, dtype=dtype), dtype=dtype)
    with lora_lib.intercept(cfg.lora, deterministic=not enable_dropout):
      return self.decoder(encoded, decoder_input_tokens, decoder_mask,
                          encoder_decoder_mask,
                          deterministic=not enable_dropout, decode=decode,
                          max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens, decoder_input_tokens,
               decoder_target_tokens, encoder_segment_ids=None,
               decoder_segment_ids=None, encoder_positions=None,
               decoder_positions=None, *, input_embeddings=None,
               embedding_mask=None, enable_dropout=True, decode=False,
               max_decode_length=None):
    """Teacher-forced forward: logits [B, T, vocab] float32."""
    # One outermost LoRA scope, so targets are checked over both stacks.
    with lora_lib.intercept(self.config.lora,
                            deterministic=not enable_dropout):
      encoded = self.encode(encoder_input_tokens,
                            encoder_segment_ids=encoder_segment_ids,
                            encoder_positions=encoder_positions,
                            input_embeddings=input_embeddings,
                            embedding_mask=embedding_mask,
                            enable_dropout=enable_dropout)
      return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                         decoder_target_tokens,
                         encoder_segment_ids=encoder_segment_ids,
                         decoder_segment_ids=decoder_segment_ids,
                         decoder_positions=decoder_positions,
                         enable_dropout=enable_dropout, decode=decode,
                         max_decode_length=max_decode_length)


# ----------------------------------------------------------------------------
# Helpers for the trainer and the checkpoint importers.
# ----------------------------------------------------------------------------
def _dummy_inputs(batch: int = 1, enc_len: int = 1, dec_len: int = 1):
  return (jnp.ones((batch, enc_len), jnp.int32),
          jnp.ones((batch, dec_len), jnp.int32),
          jnp.ones((batch, dec_len), jnp.int32))


def init_variables(config: T5Config, rng: Array, *, batch: int = 1,
                   enc_len: int = 1, dec_len: int = 1):
  """Initial variables ({'params': boxed LogicallyPartitioned arrays}), jitted."""
  init = jax.jit(functools.partial(Transformer(config).init,
                                   enable_dropout=False))
  return init({'params': rng}, *_dummy_inputs(batch, enc_len, dec_len))


def abstract_variables(config: T5Config):
  """Shapes/dtypes of the variables without allocating them (eval_shape)."""
  return jax.eval_shape(
      functools.partial(init_variables, config), jax.random.PRNGKey(0))


def logical_axes(config: T5Config):
  """Params pytree of PartitionSpecs of logical names, e.g. ('embed','mlp').

  Equivalent to `nn.get_partition_spec(jax.eval_shape(init))['params']`; map
  to mesh shardings with `nn.logical_to_mesh_sharding(axes, mesh, rules)`.
  """
  return nn.get_partition_spec(abstract_variables(config))['params']


def param_shapes(config: T5Config) -> dict:
  """{'encoder/layers_0/attention/query/kernel': shape, ...} for the config."""
  params = nn.meta.unbox(abstract_variables(config))['params']
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {'/'.join(k.key for k in path): tuple(leaf.shape)
          for path, leaf in flat}
