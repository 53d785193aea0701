"""ILM item encoder: a BLIP-2 Q-Former over collaborative item features.

K learned query tokens cross-attend to an item's collaborative-filtering (CF)
embedding (a row of `cf_table`, e.g. a saved BPR-MF or SASRec table) and come
out as K soft tokens in the language model's embedding space (`adapter`,
BLIP-2's `language_projection`). The transformer is a BERT (post-LN, exact-erf
GELU, learned absolute positions, biased projections) shared by two branches,
as in BLIP-2's Qformer (LAVIS `Qformer.py`):

  * queries: self-attention, then cross-attention to the CF features (layers
    i % cross_attention_freq == 0), then their own FFN
    (`intermediate_query`, `output_query`);
  * text: self-attention and the BERT FFN (`intermediate`, `output`).

Queries and text share the self-attention weights; the attention mask decides
who sees whom: `encode_queries` (queries only), `encode_text` (text only,
[CLS] first), `itm_logits` (one bidirectional pass over both), `itg_logits`
(queries see queries; text sees every query and earlier text). In a joint pass
query positions only ever attend to queries, so their states equal
`encode_queries`'; BLIP-2 gets the same numbers by reusing the queries' keys and
values (past_key_values).

Parameter names mirror Hugging Face BERT's (`embeddings/word_embeddings`,
`layer_{i}/attention`, `layer_{i}/intermediate/dense`, ...), so
`recjax.checkpoints.hf_bert` maps a BertModel onto the text branch by a table.
Every parameter carries logical axis names from the T5X rules in
`recjax.train.partitioning`, so the encoder shards with the LM on a
('data', 'model') mesh.

Inputs: `items` are 0-based catalogue indices (rows of `cf_table`); `text` is
int [B, T] WITHOUT [CLS]/[DEC] (the module prepends them), 0 = padding.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from recjax import slots
from recjax.models import t5 as t5_lib

Array = Any
NEG_INF = t5_lib.NEG_INF
# BERT's initializer_range: every Linear/Embedding ~ normal(0.02), biases 0.
bert_init = nn.initializers.normal(stddev=0.02)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ItemEncoderConfig:
  """Hyper-parameters of the item encoder (BLIP-2's Qformer, BERT-sized)."""
  num_items: int = 0            # rows of the CF table (set by the run)
  cf_dim: int = 64              # width of an item's collaborative embedding
  num_query_tokens: int = 4     # K learned queries -> K soft tokens
  hidden_dim: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 128
  cross_attention_freq: int = 1  # BLIP-2 uses 2
  text_vocab_size: int = 32128
  max_text_length: int = 64     # learned positions, counting [CLS]/[DEC]
  type_vocab_size: int = 2
  cls_token_id: int = 1         # prepended for ITC / ITM ([CLS]=101 in BERT)
  dec_token_id: int = 1         # prepended for generation (BLIP-2's [DEC])
  contrastive_dim: int = 32     # ITC projection width (BLIP-2: 256)
  lm_emb_dim: int = 64          # adapter output = the LM's embedding width
  layer_norm_eps: float = 1e-12
  dropout_rate: float = 0.0
  dtype: str = 'float32'
  # A table from a trained recommender (BPR-MF, SASRec) is an input, not a
  # parameter to learn: no gradient reaches it.
  freeze_cf_table: bool = False
  # LayerNorm over the CF features before cross-attention (BLIP-2's
  # `ln_vision` over the image features): a BPR / SASRec / fresh table has
  # any scale, and tiny features leave the queries blind to the item.
  normalize_cf_features: bool = True

  def __post_init__(self):
    positive = ('cf_dim', 'num_query_tokens', 'hidden_dim', 'num_layers',
                'num_heads', 'mlp_dim', 'cross_attention_freq',
                'text_vocab_size', 'max_text_length', 'type_vocab_size',
                'contrastive_dim', 'lm_emb_dim')
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f'ItemEncoderConfig.{name}={value!r}: must be a '
                         'positive integer')
    if not isinstance(self.num_items, (int, np.integer)) or self.num_items < 0:
      raise ValueError(f'ItemEncoderConfig.num_items={self.num_items!r}: must '
                       'be the catalogue size (>= 0; 0 = not set yet)')
    if self.hidden_dim % self.num_heads:
      raise ValueError(f'ItemEncoderConfig.hidden_dim={self.hidden_dim} is not '
                       f'divisible by num_heads={self.num_heads}')
    if self.max_text_length < 2:
      raise ValueError(f'ItemEncoderConfig.max_text_length='
                       f'{self.max_text_length}: needs room for [CLS] and at '
                       'least one token')
    for name in ('cls_token_id', 'dec_token_id'):
      value = getattr(self, name)
      if not 0 <= value < self.text_vocab_size:
        raise ValueError(f'ItemEncoderConfig.{name}={value} is outside the '
                         f'text vocabulary [0, {self.text_vocab_size})')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'ItemEncoderConfig.dropout_rate={self.dropout_rate}: '
                       'must be in [0, 1)')
    if self.layer_norm_eps <= 0:
      raise ValueError(f'ItemEncoderConfig.layer_norm_eps='
                       f'{self.layer_norm_eps}: must be > 0')
    try:
      jnp.dtype(self.dtype)
    except TypeError as e:
      raise ValueError(f'ItemEncoderConfig.dtype={self.dtype!r} is not a '
                       'dtype') from e

  @property
  def head_dim(self) -> int:
    return self.hidden_dim // self.num_heads


# ----------------------------------------------------------------------------
# Layers.
# ----------------------------------------------------------------------------
def _dense(features, axes: tuple[str, str], dtype, name: str, axis=-1):
  """A biased BERT Linear: kernel [in, out] ~ normal(0.02), bias zeros."""
  return t5_lib.DenseGeneral(features=features, axis=axis, dtype=dtype,
                             kernel_init=bert_init, kernel_axes=axes,
                             use_bias=True, name=name)


class LayerNorm(nn.Module):
  """BERT LayerNorm (`scale`, `bias`), statistics in float32."""
  epsilon: float = 1e-12
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    scale = self.param('scale', nn.with_logical_partitioning(
        nn.initializers.ones, ('embed',)), (features,), jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(
        nn.initializers.zeros, ('embed',)), (features,), jnp.float32)
    x = jnp.asarray(x, jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return jnp.asarray(y, self.dtype)


class Embed(nn.Module):
  """A lookup table `embedding` [num, features]; `attend` for tied logits."""
  num_embeddings: int
  features: int
  axes: tuple = ('vocab', 'embed')
  dtype: Any = jnp.float32
  embedding_init: Callable[..., Array] = bert_init

  def setup(self):
    self.embedding = self.param(
        'embedding', nn.with_logical_partitioning(self.embedding_init,
                                                  self.axes),
        (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, ids: Array) -> Array:
    return jnp.take(jnp.asarray(self.embedding, self.dtype), ids, axis=0)

  def attend(self, x: Array) -> Array:
    """x [..., features] @ embedding.T, in float32 (logits)."""
    return jnp.dot(jnp.asarray(x, jnp.float32),
                   jnp.asarray(self.embedding, jnp.float32).T)


def _mask_to_bias(mask: Optional[Array], dtype) -> Optional[Array]:
  """Boolean [B|1, 1, Lq, Lk] (True = may attend) -> additive bias."""
  if mask is None:
    return None
  return jnp.where(mask, 0., NEG_INF).astype(dtype)


class Attention(nn.Module):
  """BERT attention block: softmax(q k^T / sqrt(d)) v, out, residual, post-LN.

  `inputs_kv` may have another width (cross-attention to the CF features):
  the key/value kernels are [kv_width, hidden].
  """
  config: ItemEncoderConfig

  def setup(self):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    heads = (cfg.num_heads, cfg.head_dim)
    qkv_axes = ('embed', 'joined_kv')
    self.query = _dense(heads, qkv_axes, dtype, 'query')
    self.key = _dense(heads, qkv_axes, dtype, 'key')
    self.value = _dense(heads, qkv_axes, dtype, 'value')
    self.out = _dense(cfg.hidden_dim, ('joined_kv', 'embed'), dtype, 'out',
                      axis=(-2, -1))
    # pylint: disable-next=invalid-name
    self.LayerNorm = LayerNorm(cfg.layer_norm_eps, dtype)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(self, inputs_q: Array, inputs_kv: Array,
               mask: Optional[Array] = None,
               deterministic: bool = True) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    qkv_axes = ('batch', 'length', 'heads', 'kv')
    # BERT divides the scores by sqrt(d); scaling q first is the same product.
    q = self.query(inputs_q) * jnp.asarray(cfg.head_dim**-0.5, dtype)
    q = nn.with_logical_constraint(q, qkv_axes)
    k = nn.with_logical_constraint(self.key(inputs_kv), qkv_axes)
    v = nn.with_logical_constraint(self.value(inputs_kv), qkv_axes)
    dropout_rng = None
    if not deterministic and cfg.dropout_rate > 0.:
      dropout_rng = self.make_rng('dropout')
    x = t5_lib.dot_product_attention(
        q, k, v, bias=_mask_to_bias(mask, jnp.float32),
        dropout_rng=dropout_rng, dropout_rate=cfg.dropout_rate,
        deterministic=deterministic, dtype=dtype, float32_logits=True)
    x = self.dropout(self.out(x), deterministic=deterministic)
    x = self.LayerNorm(x + inputs_q)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class Intermediate(nn.Module):
  """BERT intermediate: GELU(dense(x)), exact erf as BERT's "gelu"."""
  config: ItemEncoderConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    x = _dense(cfg.mlp_dim, ('embed', 'mlp'), jnp.dtype(cfg.dtype),
               'dense')(x)
    x = nn.gelu(x, approximate=False)
    return nn.with_logical_constraint(x, ('batch', 'length', 'mlp'))


class Output(nn.Module):
  """BERT output: LayerNorm(dropout(dense(h)) + residual)."""
  config: ItemEncoderConfig

  @nn.compact
  def __call__(self, h: Array, residual: Array,
               deterministic: bool = True) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    x = _dense(cfg.hidden_dim, ('mlp', 'embed'), dtype, 'dense')(h)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = LayerNorm(cfg.layer_norm_eps, dtype, name='LayerNorm')(x + residual)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class QFormerLayer(nn.Module):
  """One Qformer layer over [queries (first num_queries positions), text]."""
  config: ItemEncoderConfig
  has_cross_attention: bool

  def setup(self):
    cfg = self.config
    self.attention = Attention(cfg)
    if self.has_cross_attention:
      self.crossattention = Attention(cfg)
    self.intermediate = Intermediate(cfg)
    self.output = Output(cfg)
    self.intermediate_query = Intermediate(cfg)
    self.output_query = Output(cfg)

  def __call__(self, x: Array, num_queries: int, mask: Optional[Array],
               cf_features: Optional[Array], deterministic: bool) -> Array:
    h = self.attention(x, x, mask, deterministic)
    parts = []
    if num_queries:
      q = h[:, :num_queries]
      if self.has_cross_attention:
        q = self.crossattention(q, cf_features, None, deterministic)
      parts.append(self.output_query(self.intermediate_query(q), q,
                                     deterministic))
    if h.shape[1] > num_queries:
      t = h[:, num_queries:]
      parts.append(self.output(self.intermediate(t), t, deterministic))
    x = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class Embeddings(nn.Module):
  """BERT embeddings; queries join the text before the shared LayerNorm.

  Text = word + position (from 0 at [CLS]/[DEC]) + token type 0; queries have
  no position (BLIP-2). LayerNorm and dropout run over [queries, text].
  """
  config: ItemEncoderConfig

  def setup(self):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    self.word_embeddings = Embed(cfg.text_vocab_size, cfg.hidden_dim,
                                 ('vocab', 'embed'), dtype)
    self.position_embeddings = Embed(cfg.max_text_length, cfg.hidden_dim,
                                     ('abspos_buckets', 'embed'), dtype)
    # A 2-row table; 'abspos_buckets' keeps it whole like the positions.
    self.token_type_embeddings = Embed(cfg.type_vocab_size, cfg.hidden_dim,
                                       ('abspos_buckets', 'embed'), dtype)
    # pylint: disable-next=invalid-name
    self.LayerNorm = LayerNorm(cfg.layer_norm_eps, dtype)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(self, queries: Optional[Array], ids: Optional[Array],
               deterministic: bool) -> Array:
    parts = []
    if queries is not None:
      parts.append(jnp.asarray(queries, jnp.dtype(self.config.dtype)))
    if ids is not None:
      length = ids.shape[1]
      if length > self.config.max_text_length:
        raise ValueError(
            f'text of {length} tokens (with [CLS]/[DEC]) is longer than '
            f'max_text_length={self.config.max_text_length}')
      x = self.word_embeddings(ids)
      x = x + self.position_embeddings(jnp.arange(length))[None]
      x = x + self.token_type_embeddings(jnp.zeros((), jnp.int32))
      parts.append(x)
    x = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
    x = self.dropout(self.LayerNorm(x), deterministic=deterministic)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class LmHead(nn.Module):
  """BERT's MLM head: LayerNorm(GELU(dense(x))) @ word_embeddings.T + bias."""
  config: ItemEncoderConfig

  @nn.compact
  def __call__(self, x: Array, word_embeddings: Embed) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    x = _dense(cfg.hidden_dim, ('embed', 'mlp'), dtype, 'dense')(x)
    x = nn.gelu(x, approximate=False)
    x = LayerNorm(cfg.layer_norm_eps, dtype, name='LayerNorm')(x)
    bias = self.param('bias', nn.with_logical_partitioning(
        nn.initializers.zeros, ('vocab',)), (cfg.text_vocab_size,),
                      jnp.float32)
    logits = word_embeddings.attend(x) + bias
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


def _l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  """x / max(||x||, eps) in float32 (torch.nn.functional.normalize)."""
  x = jnp.asarray(x, jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def itg_mask(num_queries: int, text_length: int) -> np.ndarray:
  """BLIP-2's generation mask [K+T, K+T]: queries see queries; text sees all
  queries and causally earlier text (itself included)."""
  n = num_queries + text_length
  mask = np.zeros((n, n), bool)
  mask[:, :num_queries] = True
  mask[:num_queries, num_queries:] = False
  mask[num_queries:, num_queries:] = np.tril(
      np.ones((text_length, text_length), bool))
  return mask


# ----------------------------------------------------------------------------
# The encoder.
# ----------------------------------------------------------------------------
class ItemEncoder(nn.Module):
  """BLIP-2 Q-Former over CF item features (see the module docstring).

  Attributes:
    config: the hyper-parameters.
    cf_table_init: initializer of `cf_table/embedding` [num_items, cf_dim]
      (e.g. one returning a saved BPR-MF / SASRec table); None = a learned ID
      table ~ normal(0.02).
    catalogue: where the table's rows come from (the prepared directory),
      named when a task's slot items fall outside them.
  """
  config: ItemEncoderConfig
  cf_table_init: Optional[Callable[..., Array]] = None
  catalogue: str = ''

  def slot_table(self) -> slots.SlotTable:
    """The slot values it can fill: items only (no user slot)."""
    return slots.SlotTable(int(self.config.num_items), user_slot=False,
                           catalogue=self.catalogue)

  def setup(self):
    cfg = self.config
    if cfg.num_items <= 0:
      raise ValueError(f'ItemEncoderConfig.num_items={cfg.num_items}: set it '
                       'to the catalogue size (rows of the CF table)')
    dtype = jnp.dtype(cfg.dtype)
    self.cf_table = Embed(cfg.num_items, cfg.cf_dim, ('vocab', 'embed'), dtype,
                          embedding_init=self.cf_table_init or bert_init)
    if cfg.normalize_cf_features:
      self.cf_norm = LayerNorm(1e-6, dtype)
    self.query_tokens = self.param(
        'query_tokens', nn.with_logical_partitioning(bert_init,
                                                     ('length', 'embed')),
        (cfg.num_query_tokens, cfg.hidden_dim), jnp.float32)
    self.embeddings = Embeddings(cfg)
    self.layers = [
        QFormerLayer(cfg, has_cross_attention=i % cfg.cross_attention_freq == 0,
                     name=f'layer_{i}') for i in range(cfg.num_layers)]
    # Heads with small outputs (ITC width, 2 ITM classes) keep them whole
    # ('kv' is never split); the adapter's output is the LM's 'embed' axis.
    self.itc_item_proj = _dense(cfg.contrastive_dim, ('embed', 'kv'), dtype,
                                'itc_item_proj')
    self.itc_text_proj = _dense(cfg.contrastive_dim, ('embed', 'kv'), dtype,
                                'itc_text_proj')
    self.itm_head = _dense(2, ('embed', 'kv'), dtype, 'itm_head')
    self.lm_head = LmHead(cfg)
    self.adapter = _dense(cfg.lm_emb_dim, ('mlp', 'embed'), dtype, 'adapter')

  # --- internals -------------------------------------------------------------
  def _cf_features(self, items: Array) -> Array:
    """[B] item indices -> the CF feature sequence [B, 1, cf_dim].

    Indices >= num_items read NaN features (jnp.take's 'fill'); negative
    ones wrap as in numpy, so callers map padding to a real row themselves.
    """
    features = self.cf_table(items.astype(jnp.int32))[:, None, :]
    if self.config.freeze_cf_table:
      features = jax.lax.stop_gradient(features)
    if self.config.normalize_cf_features:
      features = self.cf_norm(features)
    return features

  def _prepend(self, text: Array, token_id: int) -> tuple[Array, Array]:
    """([B, 1+T] ids with `token_id` first, [B, 1+T] bool not-padding)."""
    text = text.astype(jnp.int32)
    first = jnp.full((text.shape[0], 1), token_id, jnp.int32)
    ids = jnp.concatenate([first, text], axis=1)
    valid = jnp.concatenate([jnp.ones_like(first, bool), text > 0], axis=1)
    return ids, valid

  def _forward(self, items: Optional[Array], ids: Optional[Array],
               mask: Optional[Array], deterministic: bool) -> Array:
    """Runs the layers over [queries (if items), text (if ids)]."""
    queries = cf = None
    num_queries = 0
    if items is not None:
      batch = items.shape[0]
      num_queries = self.config.num_query_tokens
      queries = jnp.broadcast_to(self.query_tokens[None],
                                 (batch,) + self.query_tokens.shape)
      cf = self._cf_features(items)
    x = self.embeddings(queries, ids, deterministic)
    for layer in self.layers:
      x = layer(x, num_queries, mask, cf, deterministic)
    return x

  # --- public methods --------------------------------------------------------
  def encode_queries(self, items: Array, deterministic: bool = True) -> Array:
    """[B] items -> query outputs [B, K, hidden] (queries never see text)."""
    return self._forward(items, None, None, deterministic)

  def soft_tokens(self, items: Array, deterministic: bool = True) -> Array:
    """[...] items -> [..., K, lm_emb_dim]: adapter(encode_queries)."""
    lead = items.shape
    flat = items.reshape((-1,))
    x = self.adapter(self.encode_queries(flat, deterministic))
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    return x.reshape(lead + x.shape[1:])

  def encode_text(self, text: Array, deterministic: bool = True) -> Array:
    """[B, T] tokens -> [B, 1+T, hidden]: bidirectional BERT, [CLS] first."""
    ids, valid = self._prepend(text, self.config.cls_token_id)
    mask = valid[:, None, None, :]
    return self._forward(None, ids, mask, deterministic)

  def _itc(self, queries: Array, text_hidden: Array) -> tuple[Array, Array]:
    item = _l2_normalize(self.itc_item_proj(queries))
    return item, _l2_normalize(self.itc_text_proj(text_hidden[:, 0]))

  def itc_embeddings(self, items: Array, text: Array,
                     deterministic: bool = True) -> tuple[Array, Array]:
    """(item_emb [B, K, C], text_emb [B, C]), L2-normalised, float32; the
    text side is the [CLS] output."""
    return self._itc(self.encode_queries(items, deterministic),
                     self.encode_text(text, deterministic))

  def itm_logits(self, items: Array, text: Array,
                 deterministic: bool = True) -> Array:
    """[B, 2] match logits: queries + [CLS] text in one bidirectional pass;
    itm_head averaged over the K query outputs (BLIP-2)."""
    k = self.config.num_query_tokens
    ids, valid = self._prepend(text, self.config.cls_token_id)
    keys = jnp.concatenate([jnp.ones((valid.shape[0], k), bool), valid], 1)
    x = self._forward(items, ids, keys[:, None, None, :], deterministic)
    logits = self.itm_head(jnp.mean(x[:, :k], axis=1))
    return jnp.asarray(logits, jnp.float32)

  def itg_logits(self, items: Array, text: Array,
                 deterministic: bool = True) -> Array:
    """[B, T, vocab] item-grounded generation logits; position t predicts
    text[t] from [DEC] + text[:t] and all K queries (BLIP-2's mask)."""
    k = self.config.num_query_tokens
    ids, valid = self._prepend(text[:, :-1], self.config.dec_token_id)
    length = ids.shape[1]
    keys = jnp.concatenate([jnp.ones((valid.shape[0], k), bool), valid], 1)
    mask = jnp.logical_and(jnp.asarray(itg_mask(k, length))[None, None],
                           keys[:, None, None, :])
    x = self._forward(items, ids, mask, deterministic)
    return self.lm_head(x[:, k:], self.embeddings.word_embeddings)

  def __call__(self, items: Array, text: Array,
               deterministic: bool = True) -> dict[str, Array]:
    """Every output (and so every parameter, for `init`); the query and
    text passes run once and feed the soft tokens and ITC heads."""
    queries = self.encode_queries(items, deterministic)
    text_hidden = self.encode_text(text, deterministic)
    item_emb, text_emb = self._itc(queries, text_hidden)
    return {
        'queries': queries,
        'soft_tokens': self.adapter(queries),
        'text': text_hidden,
        'itc_item': item_emb,
        'itc_text': text_emb,
        'itm_logits': self.itm_logits(items, text, deterministic),
        'itg_logits': self.itg_logits(items, text, deterministic),
    }


# ----------------------------------------------------------------------------
# Helpers for callers (trainer, importers).
# ----------------------------------------------------------------------------
def init_variables(config: ItemEncoderConfig, rng: Array, *, batch: int = 1,
                   text_length: int = 2):
  """Initial variables ({'params': boxed LogicallyPartitioned arrays})."""
  items = jnp.zeros((batch,), jnp.int32)
  text = jnp.ones((batch, text_length), jnp.int32)
  return jax.jit(ItemEncoder(config).init)({'params': rng}, items, text)


def abstract_variables(config: ItemEncoderConfig):
  """Shapes/dtypes of the (boxed) variables without allocating them."""
  return jax.eval_shape(functools.partial(init_variables, config),
                        jax.random.PRNGKey(0))


def logical_axes(config: ItemEncoderConfig):
  """Params pytree of logical PartitionSpecs (e.g. P('embed', 'mlp'))."""
  return nn.get_partition_spec(abstract_variables(config))['params']


__all__ = ['ItemEncoderConfig', 'ItemEncoder', 'itg_mask', 'init_variables',
           'abstract_variables', 'logical_axes']
