"""RSLLM's hybrid encoding: a recommender's ID embeddings as LM input tokens.

RSLLM ("Integrating Recommendation Systems as a New Language in Large
Models") writes each item of a prompt as its title followed by ID slots, and
adds a user slot after the history (`recjax.slots`). `HybridProjector` is the
slot module that fills them: an item slot gets the item's SASRec embedding, a
user slot SASRec's sequence state after the history (the items slotted before
it in the row), each passed through one trainable MLP into K vectors of the
LM's input width. SASRec's parameters live in the projector's tree
(`recommender/...`), loaded from `recjax baseline --model=sasrec` and frozen
(`FROZEN_PATTERN`): it is read, never trained.

`user_head` maps the LM's pooled prompt state into the LM's input space for
the user-item InfoNCE (`recjax.train.rsllm_model`); it is part of this tree so
that one subtree holds everything RSLLM adds to the LM.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from recjax import slots
from recjax.models import t5 as t5_lib
from recjax.models.sasrec import SASRec, SASRecConfig

Array = jax.Array
FROZEN_SUBTREE = 'recommender'


@gin.configurable
@dataclasses.dataclass(frozen=True)
class HybridProjectorConfig:
  """Sizes of the projector (the recommender's come with its checkpoint).

  Attributes:
    lm_emb_dim: the LM's input width (must equal its `emb_dim`).
    tokens_per_slot: K vectors per item (and per user slot).
    hidden_dim: the MLP's hidden width (0 = lm_emb_dim).
    dropout_rate: on the MLP's hidden layer, in training.
    input_norm: RMS-normalise each recommender vector before the MLP (with a
      learned scale, as BLIP-2's `ln_vision` over image features). Off by
      default: on the quickstart's RSLLM it brought the item slots from
      1/56 of the word embeddings' norm to word scale but the LM ignored
      them just the same (benchmarks/README.md, slot_diagnostics.py).
    dtype: of the computation (parameters stay float32).
  """
  lm_emb_dim: int = 512
  tokens_per_slot: int = 1
  hidden_dim: int = 0
  dropout_rate: float = 0.0
  input_norm: bool = False
  dtype: str = 'float32'


def _boxed_like(boxed: Any, values: Any, where: str) -> Any:
  """`values` (nested dicts of arrays) in `boxed`'s logical-axis boxes,
  refusing any difference of structure or shape with the path named."""
  if not isinstance(boxed, dict):  # a leaf, boxed with axis names or not
    like = boxed.value if isinstance(boxed, nn.LogicallyPartitioned) else boxed
    v = jnp.asarray(values, like.dtype)
    if v.shape != like.shape:
      raise ValueError(f'{where}: saved shape {v.shape} != the config\'s '
                       f'{like.shape}')
    return (boxed.replace_boxed(v)
            if isinstance(boxed, nn.LogicallyPartitioned) else v)
  if not isinstance(values, dict) or set(values) != set(boxed):
    got = sorted(values) if isinstance(values, dict) else type(values).__name__
    raise ValueError(f'{where}: saved keys {got} != the model\'s '
                     f'{sorted(boxed)}')
  return {k: _boxed_like(boxed[k], values[k], f'{where}/{k}') for k in boxed}


class HybridProjector(nn.Module):
  """Slot module: `soft_tokens(slot_items)` -> [B, S, K, lm_emb_dim].

  Attributes:
    config: the projector's sizes.
    recommender_config: the SASRec that made the embeddings.
    recommender_values: a zero-argument callable returning SASRec's trained
      parameters (nested dicts of arrays), the init of the frozen
      `recommender` subtree; None = a random SASRec (tests).
    catalogue: where SASRec's items come from (the prepared directory),
      named when a task's slot items fall outside them.
  """
  config: HybridProjectorConfig
  recommender_config: SASRecConfig
  recommender_values: Optional[Callable[[], Any]] = None
  catalogue: str = ''

  def slot_table(self) -> slots.SlotTable:
    """The slot values it can fill: SASRec's items and the user slot."""
    return slots.SlotTable(int(self.recommender_config.num_items),
                           user_slot=True, catalogue=self.catalogue)

  # `SlotModel` passes slot_items unshifted (0 = padding, USER_SLOT_ITEM).
  raw_slot_items = True
  init_with_call = True  # soft_tokens alone leaves user_head uninitialised

  def setup(self):
    cfg = self.config
    hidden = cfg.hidden_dim or cfg.lm_emb_dim
    dtype = jnp.dtype(cfg.dtype)
    self.recommender = self.param(FROZEN_SUBTREE, self._recommender_init)
    if cfg.input_norm:
      self.input_norm = t5_lib.LayerNorm(dtype=dtype, name='input_norm')
    self.mlp_in = t5_lib.DenseGeneral(
        hidden, dtype=dtype, kernel_axes=('embed', 'mlp'), use_bias=True,
        name='mlp_in')
    self.mlp_out = t5_lib.DenseGeneral(
        (cfg.tokens_per_slot, cfg.lm_emb_dim), dtype=dtype,
        kernel_axes=('mlp', 'embed'), use_bias=True, name='mlp_out')
    self.dropout = nn.Dropout(cfg.dropout_rate)
    self.user_head = t5_lib.DenseGeneral(
        cfg.lm_emb_dim, dtype=dtype, kernel_axes=('embed', 'mlp'),
        name='user_head')

  def _sasrec(self) -> SASRec:
    return SASRec(self.recommender_config, parent=None)

  def _recommender_init(self, key):
    rc = self.recommender_config
    boxed = self._sasrec().init(key, jnp.zeros((1, rc.max_len), jnp.int32)
                                )['params']
    if self.recommender_values is None:
      return boxed
    return _boxed_like(boxed, self.recommender_values(), 'SASRec params')

  # -- the recommender (frozen: no gradient flows into it)
  def _frozen(self):
    return jax.lax.stop_gradient(self.recommender)

  def item_vectors(self, slot_items: Array) -> Array:
    """SASRec item embeddings [..., d] of slot values (index + 1)."""
    table = self._frozen()['item_embedding']  # row 0 = padding
    ids = jnp.where((slot_items > 0) & (slot_items <= table.shape[0] - 1),
                    slot_items, 0)
    return jnp.take(table, ids, axis=0)

  def user_vectors(self, slot_items: Array) -> Array:
    """SASRec's state after each row's history [B, d]: the items slotted
    before the row's first user slot, the last `max_len` of them (a row with
    no history gets zeros)."""
    rc = self.recommender_config
    is_user = slot_items == slots.USER_SLOT_ITEM
    before = jnp.cumsum(is_user.astype(jnp.int32), axis=1) == 0
    history = before & (slot_items > 0)
    # History items come first in the row (prompts write the history, then
    # the user slot); the last max_len of them, left-aligned as SASRec reads.
    n = jnp.sum(history, axis=1)
    start = jnp.maximum(n - rc.max_len, 0)
    width = min(rc.max_len, slot_items.shape[1])
    idx = jnp.clip(start[:, None] + jnp.arange(width)[None, :], 0,
                   slot_items.shape[1] - 1)
    seq = jnp.take_along_axis(jnp.where(history, slot_items, 0), idx, axis=1)
    lengths = jnp.minimum(n, rc.max_len)
    seq = jnp.where(jnp.arange(width)[None, :] < lengths[:, None], seq, 0)
    state = self._sasrec().apply({'params': self._frozen()}, seq,
                                 lengths, method=SASRec.encode)
    return jnp.where((n > 0)[:, None], state, 0.0)

  # -- the trainable part
  def project(self, vectors: Array, deterministic: bool = True) -> Array:
    """[..., d] recommender vectors -> [..., K, lm_emb_dim]."""
    vectors = vectors.astype(jnp.dtype(self.config.dtype))
    if self.config.input_norm:
      vectors = self.input_norm(vectors)
    h = jax.nn.gelu(self.mlp_in(vectors))
    h = self.dropout(h, deterministic=deterministic)
    return self.mlp_out(h)

  def soft_tokens(self, slot_items: Array, deterministic: bool = True
                 ) -> Array:
    """[B, S] slot values (index + 1; 0 = padding; USER_SLOT_ITEM) ->
    [B, S, K, lm_emb_dim]."""
    slot_items = slot_items.astype(jnp.int32)
    is_user = slot_items == slots.USER_SLOT_ITEM
    vectors = self.item_vectors(slot_items)
    if slot_items.ndim == 2:
      users = self.user_vectors(slot_items)
      vectors = jnp.where(is_user[..., None], users[:, None, :], vectors)
    return self.project(vectors, deterministic)

  def user_query(self, pooled: Array) -> Array:
    """The LM's pooled prompt state [B, emb] -> the InfoNCE query [B, emb]."""
    return self.user_head(pooled.astype(jnp.dtype(self.config.dtype)))

  def __call__(self, slot_items: Array, deterministic: bool = True) -> Array:
    """Init entry: every parameter (soft tokens and the user head)."""
    tokens = self.soft_tokens(slot_items, deterministic)
    return tokens, self.user_query(tokens[:, 0, 0])
