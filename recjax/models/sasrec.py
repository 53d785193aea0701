"""SASRec (Kang & McAuley 2018) in flax.linen, laid out as RecBole's SASRec.

Item indices are shifted by one inside the model: 0 is padding, catalogue item
i is token i + 1. Sequences are left-aligned (oldest item at position 0,
padding after the last item), as in RecBole, so the learned position
embedding counts from the start of the (truncated) history and the user
representation is the hidden state at position `length - 1`.

Architecture (RecBole defaults): item + position embedding -> LayerNorm ->
dropout -> n_layers post-LN transformer layers (multi-head self-attention with
a causal + key-padding mask, attention dropout, residual + LayerNorm; GELU
feed-forward, residual + LayerNorm), every Linear/Embedding initialised
normal(0.02), biases 0. Scores are hidden . item_embedding^T (tied).

Losses: `ce` (softmax over all catalogue items, RecBole's loss_type CE) and
`bce` (one sampled negative per position, the SASRec paper's loss).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

PAD = 0


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
  num_items: int  # catalogue size, without the padding token
  max_len: int = 50
  n_layers: int = 2
  n_heads: int = 2
  hidden: int = 64
  inner: int = 256
  hidden_dropout: float = 0.5
  attn_dropout: float = 0.5
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02


def _dense(features: int, axes: tuple[str, str], std: float, name: str):
  return nn.Dense(
      features, name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.normal(std), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))


class _Layer(nn.Module):
  cfg: SASRecConfig

  @nn.compact
  def __call__(self, x, bias, deterministic: bool):
    cfg = self.cfg
    b, l, d = x.shape
    h = cfg.n_heads
    std = cfg.initializer_range

    def heads(t):
      return t.reshape(b, l, h, d // h)

    q = heads(_dense(d, ("embed", "joined_kv"), std, "query")(x))
    k = heads(_dense(d, ("embed", "joined_kv"), std, "key")(x))
    v = heads(_dense(d, ("embed", "joined_kv"), std, "value")(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d // h) + bias
    probs = jax.nn.softmax(logits, axis=-1)
    probs = nn.Dropout(cfg.attn_dropout)(probs, deterministic=deterministic)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, d)
    out = _dense(d, ("joined_kv", "embed"), std, "out")(ctx)
    out = nn.Dropout(cfg.hidden_dropout)(out, deterministic=deterministic)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="attention_norm")(out + x)
    y = _dense(cfg.inner, ("embed", "mlp"), std, "mlp_in")(x)
    y = jax.nn.gelu(y, approximate=False)
    y = _dense(d, ("mlp", "embed"), std, "mlp_out")(y)
    y = nn.Dropout(cfg.hidden_dropout)(y, deterministic=deterministic)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="mlp_norm")(y + x)


class SASRec(nn.Module):
  """Self-attentive sequential recommender; see the module docstring."""
  cfg: SASRecConfig

  def setup(self):
    cfg = self.cfg
    init = nn.initializers.normal(cfg.initializer_range)
    self.item_embedding = self.param(
        "item_embedding",
        nn.with_logical_partitioning(init, ("items", "embed")),
        (cfg.num_items + 1, cfg.hidden), jnp.float32)
    self.position_embedding = self.param(
        "position_embedding",
        nn.with_logical_partitioning(init, ("length", "embed")),
        (cfg.max_len, cfg.hidden), jnp.float32)
    self.input_norm = nn.LayerNorm(epsilon=cfg.layer_norm_eps)
    self.input_dropout = nn.Dropout(cfg.hidden_dropout)
    self.layers = [_Layer(cfg, name=f"layers_{i}") for i in range(cfg.n_layers)]

  def __call__(self, seq: jax.Array, deterministic: bool = True) -> jax.Array:
    """Hidden states [B, L, D] of left-aligned token sequences [B, L] (0 = pad)."""
    l = seq.shape[1]
    if l > self.cfg.max_len:
      raise ValueError(f"sequence length {l} > max_len {self.cfg.max_len}")
    x = jnp.take(self.item_embedding, seq, axis=0) + self.position_embedding[None, :l]
    x = self.input_dropout(self.input_norm(x), deterministic=deterministic)
    causal = jnp.tril(jnp.ones((l, l), bool))
    allowed = causal[None, None] & (seq != PAD)[:, None, None, :]
    bias = jnp.where(allowed, 0.0, -10000.0).astype(x.dtype)
    for layer in self.layers:
      x = layer(x, bias, deterministic)
    return x

  def encode(self, seq: jax.Array, lengths: jax.Array,
             deterministic: bool = True) -> jax.Array:
    """User representation [B, D]: the hidden state at position length - 1."""
    h = self(seq, deterministic)
    idx = jnp.clip(lengths - 1, 0, seq.shape[1] - 1)
    return jnp.take_along_axis(h, idx[:, None, None], axis=1)[:, 0]

  def item_embeddings(self) -> jax.Array:
    """[num_items, D] in catalogue index order (padding row dropped)."""
    return self.item_embedding[1:]

  def scores(self, seq: jax.Array, lengths: jax.Array) -> jax.Array:
    """Scores [B, num_items] of every catalogue item (eval mode)."""
    return self.encode(seq, lengths) @ self.item_embeddings().T

  def loss(self, seq: jax.Array, targets: jax.Array, *, lengths=None,
           positions=None, negatives=None, loss_type: str = "ce",
           deterministic: bool = False) -> jax.Array:
    """Mean next-item loss over the positions that have a target.

    Args:
      seq: [B, L] tokens (item index + 1; 0 = pad).
      targets: catalogue indices (-1 = no target) of the item following a
        position: [B] with `lengths` (the item after the last position,
        RecBole's prefix augmentation); [B, P] with `positions` [B, P] (the
        item after each listed position); or [B, L] (every position, as in
        the SASRec paper).
      lengths: [B] real lengths, for [B] targets.
      positions: [B, P] positions whose outputs predict `targets`.
      negatives: catalogue indices shaped like `targets`, for `bce`.
      loss_type: `ce` or `bce`.
      deterministic: False during training (dropout on).
    """
    if targets.ndim == 1:
      if lengths is None:
        raise ValueError("[B] targets need lengths")
      positions = jnp.clip(lengths - 1, 0, seq.shape[1] - 1)[:, None]
      targets = targets[:, None]
      negatives = None if negatives is None else negatives[:, None]
    h = self(seq, deterministic)
    if positions is not None:
      h = jnp.take_along_axis(h, positions[..., None], axis=1)  # [B, P, D]
    tgt, neg = targets, negatives
    weight = (tgt >= 0).astype(jnp.float32)
    tgt = jnp.maximum(tgt, 0)
    emb = self.item_embeddings()
    if loss_type == "ce":
      logits = jnp.einsum("bld,id->bli", h, emb)
      lse = jax.nn.logsumexp(logits, axis=-1)
      pos = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
      per = lse - pos
    elif loss_type == "bce":
      if neg is None:
        raise ValueError("loss_type 'bce' needs negatives")
      pos = jnp.sum(h * jnp.take(emb, tgt, axis=0), -1)
      ng = jnp.sum(h * jnp.take(emb, jnp.maximum(neg, 0), axis=0), -1)
      per = -jax.nn.log_sigmoid(pos) - jax.nn.log_sigmoid(-ng)
    else:
      raise ValueError(f"loss_type {loss_type!r}; expected 'ce' or 'bce'")
    return jnp.sum(per * weight) / jnp.maximum(jnp.sum(weight), 1.0)
