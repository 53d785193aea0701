"""Matrix factorisation trained with BPR (Rendle et al. 2009), in flax.linen.

A user's score for an item is the dot product of their embeddings, as in
RecBole's BPR (no biases). Parameters carry logical axis names so the same
partitioning rules as the language models apply.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def _init(stddev_or_xavier: str | float):
  """RecBole initialises BPR embeddings with torch's xavier_normal_.

  That is an untruncated normal with variance 2 / (fan_in + fan_out); flax's
  `xavier_normal` draws a truncated normal, so the scaling is spelled out.
  """
  if stddev_or_xavier == "xavier":
    return nn.initializers.variance_scaling(1.0, "fan_avg", "normal")
  return nn.initializers.normal(float(stddev_or_xavier))


class MF(nn.Module):
  """User and item embedding tables; `__call__` scores (user, item) pairs."""
  num_users: int
  num_items: int
  embed_dim: int = 64
  init_scheme: str | float = "xavier"
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.user_embedding = self.param(
        "user_embedding",
        nn.with_logical_partitioning(_init(self.init_scheme), ("users", "embed")),
        (self.num_users, self.embed_dim), jnp.float32)
    self.item_embedding = self.param(
        "item_embedding",
        nn.with_logical_partitioning(_init(self.init_scheme), ("items", "embed")),
        (self.num_items, self.embed_dim), jnp.float32)

  def __call__(self, users: jax.Array, items: jax.Array) -> jax.Array:
    """Scores [B] of `users[b]` for `items[b]`."""
    u = jnp.take(self.user_embedding, users, axis=0)
    i = jnp.take(self.item_embedding, items, axis=0)
    return jnp.sum(u * i, axis=-1).astype(self.dtype)

  def bpr_loss(self, users: jax.Array, pos: jax.Array, neg: jax.Array
               ) -> jax.Array:
    """Mean -log sigmoid(s(u, pos) - s(u, neg)), as RecBole's BPRLoss."""
    diff = self(users, pos) - self(users, neg)
    return -jnp.mean(jax.nn.log_sigmoid(diff))

  def full_scores(self, users: jax.Array) -> jax.Array:
    """Scores [B, num_items] of every item for each user."""
    u = jnp.take(self.user_embedding, users, axis=0)
    return u @ self.item_embedding.T

  def item_embeddings(self) -> jax.Array:
    return self.item_embedding
