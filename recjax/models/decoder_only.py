"""Decoder-only transformer (Llama / Qwen2 family) in flax.linen, T5X-named.

Architecture as Hugging Face's `LlamaForCausalLM` / `Qwen2ForCausalLM`:
pre-norm RMSNorm (float32 statistics, `scale * x.astype(dtype)`), rotary
position embeddings in HF's rotate-half layout (`rope_theta`, Llama-3
`rope_scaling`), grouped-query attention (`num_kv_heads` <= `num_heads`),
optional q/k/v biases (Qwen2), SwiGLU MLP (`silu(wi_0 x) * wi_1 x`), tied or
untied output embeddings. Attention logits are scaled by 1/sqrt(head_dim) at
run time (HF weights are unscaled; T5 folds the scale into its init instead),
and tied logits are NOT divided by sqrt(emb_dim) (unlike T5).

Names follow T5X's decoder-only layout, so Hugging Face checkpoints map by a
table (`recjax.checkpoints.hf_decoder`):
  token_embedder/embedding                         [vocab, embed]
  decoder/layers_{i}/pre_self_attention_layer_norm/scale
  decoder/layers_{i}/self_attention/{query,key,value,out}/kernel (+ q/k/v bias)
  decoder/layers_{i}/pre_mlp_layer_norm/scale
  decoder/layers_{i}/mlp/{wi_0,wi_1,wo}/kernel
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel                      [embed, vocab] (untied)
Layers are `t5.DenseGeneral` / `t5.LayerNorm` / `t5.MlpBlock`, so LoRA's
interceptor and the partitioning rules treat both families alike.

Masks: causal by array index, keys with segment 0 never attended to (or
target token 0 when no segment ids are given), same-segment only when
packed; `decoder_causal_attention` [B, L] (1 on the prefix) additionally lets
prefix positions of a segment attend to each other (T5X PrefixLM).

KV cache ('cache' collection, per self-attention): cached_key/cached_value
[B, max_len, kv_heads, head_dim] (keys after rotary), cached_segment
[B, max_len] int32 (0 = not a valid key), cache_index scalar int32.

  # 1. allocate: trace decode=True on full-length [B, max_len] inputs.
  shapes = jax.eval_shape(functools.partial(
      model.apply, decode=True, enable_dropout=False, mutable=['cache']),
      {'params': params}, jnp.ones((B, max_len), jnp.int32))[1]['cache']
  cache = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
  # 2. prefill P prompt tokens (segment 0 = left padding) in one call.
  logits, state = model.apply({'params': params, 'cache': cache}, prompt,
                              decoder_segment_ids=seg, decoder_positions=pos,
                              decode=True, prefill=True, enable_dropout=False,
                              mutable=['cache'])
  # 3. one token a step: [B, 1] tokens and their [B, 1] positions.
  logits, state = model.apply({'params': params, 'cache': state['cache']},
                              tok, decoder_positions=pos1, decode=True,
                              enable_dropout=False, mutable=['cache'])
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

import flax.linen as nn
import gin
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from recjax.models import lora
from recjax.models import t5

Array = Any
NEG_INF = t5.NEG_INF

_ROPE_TYPES = ('default', 'llama3')
_LLAMA3_KEYS = ('factor', 'low_freq_factor', 'high_freq_factor',
                'original_max_position_embeddings')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderOnlyConfig:
  """Hyper-parameters of a Llama / Qwen2 decoder (HF config.json names in
  comments); defaults are Llama-2-7B's."""
  vocab_size: int = 32000
  emb_dim: int = 4096            # hidden_size
  num_heads: int = 32            # num_attention_heads
  num_kv_heads: int = 32         # num_key_value_heads (GQA when < num_heads)
  head_dim: int = 128
  num_layers: int = 32           # num_hidden_layers
  mlp_dim: int = 11008           # intermediate_size (SwiGLU)
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  # HF's rope_scaling dict, kept as a sorted tuple of items (hashable);
  # rope_type 'llama3' (Llama-3.1/3.2) or 'default'; others are refused.
  rope_scaling: Optional[tuple] = None
  qkv_bias: bool = False         # Qwen2
  tie_word_embeddings: bool = False
  dropout_rate: float = 0.0
  dtype: str = 'bfloat16'
  param_dtype: str = 'float32'
  remat_policy: str = 'none'     # as T5Config: 'none' | 'full' | 'minimal'
  float32_attention_logits: bool = True
  # Vocabulary id that trades places with id 0 (Llama-3 / Qwen2 use id 0 for
  # a real token, SeqIO pads with 0); the checkpoint importer swaps rows.
  pad_swap_id: Optional[int] = None
  lora: Optional[lora.LoraConfig] = None

  def __post_init__(self):
    rs = self.rope_scaling
    if rs is not None:
      rs = dict(rs.items() if hasattr(rs, 'items') else rs)
      if 'type' in rs and 'rope_type' not in rs:  # HF's older key
        rs['rope_type'] = rs.pop('type')
      rs = tuple(sorted(rs.items()))
      object.__setattr__(self, 'rope_scaling', rs)
    problems = []
    for name in ('vocab_size', 'emb_dim', 'num_heads', 'num_kv_heads',
                 'head_dim', 'num_layers', 'mlp_dim'):
      if int(getattr(self, name)) <= 0:
        problems.append(f'{name}={getattr(self, name)} must be positive')
    if self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads:
      problems.append(f'num_heads={self.num_heads} is not a multiple of '
                      f'num_kv_heads={self.num_kv_heads}')
    if self.head_dim % 2:
      problems.append(f'head_dim={self.head_dim} must be even (rotary)')
    if self.remat_policy not in t5._REMAT_POLICIES:  # pylint: disable=protected-access
      problems.append(f'remat_policy={self.remat_policy!r}: expected one of '
                      f'{sorted(t5._REMAT_POLICIES)}')  # pylint: disable=protected-access
    if rs is not None:
      rs = dict(rs)
      kind = rs.get('rope_type', 'default')
      if kind not in _ROPE_TYPES:
        problems.append(f'rope_scaling rope_type={kind!r} is not supported '
                        f'(supported: {list(_ROPE_TYPES)})')
      elif kind == 'llama3':
        missing = [k for k in _LLAMA3_KEYS if k not in rs]
        if missing:
          problems.append(f'rope_scaling (llama3) lacks {missing}')
    if self.pad_swap_id is not None and not (
        0 < self.pad_swap_id < self.vocab_size):
      problems.append(f'pad_swap_id={self.pad_swap_id} must be in '
                      f'[1, vocab_size={self.vocab_size})')
    if problems:
      raise ValueError('DecoderOnlyConfig: ' + '; '.join(problems))

  @property
  def rope_scaling_dict(self) -> Optional[dict]:
    return None if self.rope_scaling is None else dict(self.rope_scaling)


# ----------------------------------------------------------------------------
# Rotary position embeddings (HF `LlamaRotaryEmbedding`).
# ----------------------------------------------------------------------------
def rope_inv_freq(config: DecoderOnlyConfig) -> np.ndarray:
  """[head_dim // 2] float32 inverse frequencies, computed as HF does.

  float32 throughout (as torch), so `position * inv_freq` rounds the same way
  and angles agree even at large positions.
  """
  d = config.head_dim
  exponents = np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / np.float32(
      d)
  inv_freq = (np.float32(1.0) /
              np.power(np.float32(config.rope_theta), exponents)).astype(
                  np.float32)
  rs = config.rope_scaling_dict
  if rs is None or rs.get('rope_type', 'default') == 'default':
    return inv_freq
  # 'llama3' (HF `_compute_llama3_parameters`).
  factor = np.float32(rs['factor'])
  low, high = np.float32(rs['low_freq_factor']), np.float32(
      rs['high_freq_factor'])
  old_len = np.float32(rs['original_max_position_embeddings'])
  low_freq_wavelen = old_len / low
  high_freq_wavelen = old_len / high
  wavelen = np.float32(2 * math.pi) / inv_freq
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rotary(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
  """x [B, L, H, D] rotated by positions [B, L] (HF rotate_half layout)."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


# ----------------------------------------------------------------------------
# Masks.
# ----------------------------------------------------------------------------
def key_segments(decoder_input_tokens: Array, decoder_target_tokens=None,
                 decoder_segment_ids=None) -> Array:
  """[B, L] int32 key validity/segment: segment ids, else target > 0, else 1."""
  if decoder_segment_ids is not None:
    return decoder_segment_ids.astype(jnp.int32)
  if decoder_target_tokens is not None:
    return (decoder_target_tokens > 0).astype(jnp.int32)
  return jnp.ones(decoder_input_tokens.shape, jnp.int32)


def make_mask(segments: Array, packed: bool,
              causal_attention: Optional[Array] = None) -> Array:
  """[B, L, L] bool: (causal OR prefix-prefix) AND key valid AND same segment."""
  length = segments.shape[-1]
  idx = jnp.arange(length)
  allowed = (idx[None, :] <= idx[:, None])[None]
  if causal_attention is not None:
    prefix = causal_attention.astype(bool)
    allowed = allowed | (prefix[:, :, None] & prefix[:, None, :])
  allowed = allowed & (segments != 0)[:, None, :]
  if packed:
    allowed = allowed & (segments[:, :, None] == segments[:, None, :])
  return allowed


# ----------------------------------------------------------------------------
# Layers.
# ----------------------------------------------------------------------------
_dtypes = t5._dtypes  # pylint: disable=protected-access


class SelfAttention(nn.Module):
  """Grouped-query self-attention with rotary embeddings and a KV cache."""
  config: DecoderOnlyConfig

  @nn.compact
  def __call__(self, x: Array, positions: Optional[Array], mask: Array,
               segments: Array, deterministic: bool = True,
               decode: bool = False, prefill: bool = False) -> Array:
    cfg = self.config
    dtype, param_dtype = _dtypes(cfg)
    heads, kv_heads, head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    dense = functools.partial(t5.DenseGeneral, axis=-1, dtype=dtype,
                              param_dtype=param_dtype)
    query = dense(features=(heads, head_dim), kernel_axes=('embed', 'joined_kv'),
                  use_bias=cfg.qkv_bias, name='query')(x)
    key = dense(features=(kv_heads, head_dim), kernel_axes=('embed', 'kv_heads'),
                use_bias=cfg.qkv_bias, name='key')(x)
    value = dense(features=(kv_heads, head_dim),
                  kernel_axes=('embed', 'kv_heads'), use_bias=cfg.qkv_bias,
                  name='value')(x)
    query = nn.with_logical_constraint(query, ('batch', 'length', 'heads', 'kv'))
    key = nn.with_logical_constraint(key, ('batch', 'length', 'kv_heads', 'kv'))
    value = nn.with_logical_constraint(value,
                                       ('batch', 'length', 'kv_heads', 'kv'))

    batch, length = x.shape[0], x.shape[1]
    is_step = False
    if decode:
      is_initialized = self.has_variable('cache', 'cached_key')
      cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape,
                                 key.dtype)
      cached_value = self.variable('cache', 'cached_value', jnp.zeros,
                                   value.shape, value.dtype)
      cached_segment = self.variable('cache', 'cached_segment', jnp.zeros,
                                     (batch, length), jnp.int32)
      cache_index = self.variable('cache', 'cache_index',
                                  lambda: jnp.array(0, dtype=jnp.int32))
      is_step = is_initialized and not prefill
      max_len = cached_key.value.shape[1]
      if is_initialized and prefill and length > max_len:
        raise ValueError(f'prefill of {length} tokens does not fit a cache of '
                         f'length {max_len}')
      if is_step:
        if length != 1:
          raise ValueError('A cached decoding step takes [B, 1] tokens, got '
                           f'{x.shape[:2]} (use prefill=True for a prompt).')
        if positions is None:
          raise ValueError('decoder_positions [B, 1] is required for a cached '
                           'decoding step.')

    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32),
                                   (batch, length))
    inv_freq = rope_inv_freq(cfg)
    query = apply_rotary(query, positions, inv_freq)
    key = apply_rotary(key, positions, inv_freq)

    if decode and is_initialized:
      if prefill:
        cached_key.value = lax.dynamic_update_slice(cached_key.value, key,
                                                    (0, 0, 0, 0))
        cached_value.value = lax.dynamic_update_slice(cached_value.value,
                                                      value, (0, 0, 0, 0))
        cached_segment.value = lax.dynamic_update_slice(
            cached_segment.value, segments.astype(jnp.int32), (0, 0))
        cache_index.value = jnp.array(length, jnp.int32)
      else:
        cur = cache_index.value
        key = lax.dynamic_update_slice(cached_key.value, key, (0, cur, 0, 0))
        value = lax.dynamic_update_slice(cached_value.value, value,
                                         (0, cur, 0, 0))
        seg = lax.dynamic_update_slice(cached_segment.value,
                                       jnp.ones((batch, 1), jnp.int32),
                                       (0, cur))
        cached_key.value, cached_value.value = key, value
        cached_segment.value = seg
        cache_index.value = cur + 1
        mask = ((seg != 0) & (jnp.arange(max_len) <= cur)[None])[:, None, :]

    out = _attention(query, key, value, mask, cfg, deterministic,
                     self.make_rng('dropout') if (
                         not deterministic and cfg.dropout_rate > 0) else None)
    out = t5.DenseGeneral(features=x.shape[-1], axis=(-2, -1),
                          kernel_axes=('joined_kv', 'embed'), dtype=dtype,
                          param_dtype=param_dtype, name='out')(out)
    return nn.with_logical_constraint(out, ('batch', 'length', 'embed'))


def _attention(query, key, value, mask, cfg: DecoderOnlyConfig,
               deterministic: bool, dropout_rng) -> Array:
  """q [B, Lq, H, D], k/v [B, Lk, K, D], mask [B, Lq, Lk] -> [B, Lq, H, D].

  Query head h reads kv head h // (H / K) (HF's `repeat_kv` order).
  """
  dtype = jnp.dtype(cfg.dtype)
  b, lq, h, d = query.shape
  k_heads = key.shape[2]
  # q as [B, K, G, Lq, D] before the products: their [B, K, G, Lq, Lk]
  # scores then come out of the dots in the layout softmax reads, instead of
  # XLA transposing every score-sized tensor (forward and backward) to it.
  q = query.reshape(b, lq, k_heads, h // k_heads, d).transpose(0, 2, 3, 1, 4)
  k = key
  if cfg.float32_attention_logits:
    q, k = q.astype(jnp.float32), k.astype(jnp.float32)
  logits = jnp.einsum('bkgqd,bskd->bkgqs', q, k)
  logits = logits * jnp.asarray(d**-0.5, logits.dtype)
  bias = jnp.where(mask, 0., NEG_INF).astype(logits.dtype)
  logits = logits + bias[:, None, None, :, :]
  weights = jax.nn.softmax(logits).astype(dtype)
  if not deterministic and cfg.dropout_rate > 0.:
    keep_prob = 1.0 - cfg.dropout_rate
    keep = jax.random.bernoulli(dropout_rng, keep_prob, weights.shape)
    weights = weights * (keep.astype(dtype) / jnp.asarray(keep_prob, dtype))
  out = jnp.einsum('bkgqs,bskd->bkgqd', weights, value.astype(dtype))
  out = out.transpose(0, 3, 1, 2, 4).reshape(b, lq, h, d)
  return nn.with_logical_constraint(out, ('batch', 'length', 'heads', 'kv'))


class DecoderLayer(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.))."""
  config: DecoderOnlyConfig

  @nn.compact
  def __call__(self, inputs, positions, mask, segments, deterministic=True,
               decode=False, prefill=False):
    cfg = self.config
    dtype, param_dtype = _dtypes(cfg)
    norm = functools.partial(t5.LayerNorm, epsilon=cfg.rms_norm_eps,
                             dtype=dtype, param_dtype=param_dtype)
    x = norm(name='pre_self_attention_layer_norm')(inputs)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    x = SelfAttention(config=cfg, name='self_attention')(
        x, positions, mask, segments, deterministic, decode, prefill)
    x = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=deterministic)
    x = x + inputs
    y = norm(name='pre_mlp_layer_norm')(x)
    y = nn.with_logical_constraint(y, ('batch', 'length', 'embed'))
    y = t5.MlpBlock(intermediate_dim=cfg.mlp_dim, activations=('silu', 'linear'),
                    intermediate_dropout_rate=cfg.dropout_rate, dtype=dtype,
                    param_dtype=param_dtype, name='mlp')(
                        y, deterministic=deterministic)
    y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        y, deterministic=deterministic)
    y = y + x
    return nn.with_logical_constraint(y, ('batch', 'length', 'embed'))


class Decoder(nn.Module):
  """Layer stack, final norm and logits."""
  config: DecoderOnlyConfig
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, embedded, positions, mask, segments, deterministic=True,
               decode=False, prefill=False, logits_from=0,
               logit_positions=None):
    cfg = self.config
    dtype, param_dtype = _dtypes(cfg)
    y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        embedded, deterministic=deterministic).astype(dtype)
    layer_cls = t5._maybe_remat(DecoderLayer, cfg, static_argnums=(5, 6, 7))  # pylint: disable=protected-access
    for lyr in range(cfg.num_layers):
      y = layer_cls(config=cfg, name=f'layers_{lyr}')(
          y, positions, mask, segments, deterministic, decode, prefill)
    if logits_from:
      y = y[:, logits_from:]
    y = t5.LayerNorm(epsilon=cfg.rms_norm_eps, dtype=dtype,
                     param_dtype=param_dtype, name='decoder_norm')(y)
    y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        y, deterministic=deterministic)
    if logit_positions is not None:  # only the positions that are read
      y = jnp.take_along_axis(
          y, logit_positions.astype(jnp.int32)[:, :, None], axis=1)
      y = nn.with_logical_constraint(y, ('batch', 'length', 'embed'))
    if cfg.tie_word_embeddings:
      logits = self.shared_embedding.attend(y)  # HF: no 1/sqrt(d) here
    else:
      logits = t5.DenseGeneral(cfg.vocab_size, dtype=jnp.float32,
                               param_dtype=param_dtype,
                               kernel_axes=('embed', 'vocab'),
                               name='logits_dense')(y)
    logits = logits.astype(jnp.float32)
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


def _embedding_init(cfg: DecoderOnlyConfig):
  # Untied: T5X's N(0, 1). Tied: N(0, 1/emb_dim), so logits from an unscaled
  # `attend` start at unit scale (T5X divides tied logits by sqrt(d) instead).
  if cfg.tie_word_embeddings:
    return nn.initializers.normal(stddev=cfg.emb_dim**-0.5)
  return t5.default_embed_init


class DecoderOnlyTransformer(nn.Module):
  """Llama / Qwen2 causal LM; returns float32 logits [B, L, vocab]."""
  config: DecoderOnlyConfig

  def setup(self):
    cfg = self.config
    dtype, param_dtype = _dtypes(cfg)
    self.token_embedder = t5.Embed(
        num_embeddings=cfg.vocab_size, features=cfg.emb_dim, dtype=dtype,
        param_dtype=param_dtype, embedding_init=_embedding_init(cfg))
    self.decoder = Decoder(config=cfg, shared_embedding=self.token_embedder)

  def __call__(self, decoder_input_tokens, decoder_target_tokens=None,
               decoder_segment_ids=None, decoder_positions=None,
               decoder_causal_attention=None, *, input_embeddings=None,
               embedding_mask=None, enable_dropout=True, decode=False,
               prefill=False, max_decode_length=None, logits_from=0,
               logit_positions=None):
    """Logits [B, L, vocab] float32; see the module docstring for decoding.

    decoder_target_tokens is only the key-padding fallback (T5X API parity);
    max_decode_length is unused (rotary needs no table; the cache length is
    the allocation length). `logits_from` (static) returns only the logits of
    positions >= logits_from, [B, L - logits_from, vocab]: inference reads
    the prompt's last position and the targets, and the logits of a long
    prompt over a large vocabulary would dwarf everything else.
    `logit_positions` [B, P] int: the logits of those positions of each row
    only, [B, P, vocab] (training reads the targets alone: the vocabulary
    projection of every prompt position was the step's largest activation).
    """
    del max_decode_length
    with lora.intercept(self.config.lora, deterministic=not enable_dropout):
      return self._forward(decoder_input_tokens, decoder_target_tokens,
                           decoder_segment_ids, decoder_positions,
                           decoder_causal_attention, input_embeddings,
                           embedding_mask, enable_dropout, decode, prefill,
                           logits_from, logit_positions)

  def _forward(self, tokens, targets, segment_ids, positions, causal_attention,
               input_embeddings, embedding_mask, enable_dropout, decode,
               prefill, logits_from=0, logit_positions=None):
    if tokens.ndim != 2:
      raise ValueError(f'decoder_input_tokens must be [batch, length], got '
                       f'shape {tokens.shape}')
    if prefill and not decode:
      raise ValueError('prefill=True needs decode=True')
    x = t5.splice_embeddings(self.token_embedder(tokens.astype(jnp.int32)),
                             input_embeddings, embedding_mask)
    segments = key_segments(tokens, targets, segment_ids)
    mask = make_mask(segments, segment_ids is not None, causal_attention)
    if positions is not None:
      positions = positions.astype(jnp.int32)
    return self.decoder(x, positions, mask, segments,
                        deterministic=not enable_dropout, decode=decode,
                        prefill=prefill, logits_from=int(logits_from),
                        logit_positions=logit_positions)


# ----------------------------------------------------------------------------
# Helpers for the trainer and the checkpoint importers (as t5.py's).
# ----------------------------------------------------------------------------
def init_variables(config: DecoderOnlyConfig, rng: Array, *, batch: int = 1,
                   length: int = 1):
  """Initial variables ({'params': boxed LogicallyPartitioned arrays}), jitted."""
  init = jax.jit(functools.partial(DecoderOnlyTransformer(config).init,
                                   enable_dropout=False))
  return init({'params': rng}, jnp.ones((batch, length), jnp.int32))


def abstract_variables(config: DecoderOnlyConfig):
  """Shapes/dtypes of the variables without allocating them (eval_shape)."""
  return jax.eval_shape(
      functools.partial(init_variables, config), jax.random.PRNGKey(0))


def logical_axes(config: DecoderOnlyConfig):
  """Params pytree of PartitionSpecs of logical names, e.g. ('embed','mlp')."""
  return nn.get_partition_spec(abstract_variables(config))['params']


def param_shapes(config: DecoderOnlyConfig) -> dict:
  """{'decoder/layers_0/self_attention/query/kernel': shape, ...}."""
  params = nn.meta.unbox(abstract_variables(config))['params']
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {'/'.join(k.key for k in path): tuple(leaf.shape)
          for path, leaf in flat}
