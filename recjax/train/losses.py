"""Token-level losses with T5X numerics (cross entropy + z-loss, label smoothing).

`cross_entropy_with_logits` has a custom VJP like T5X's: the forward pass
computes the log-softmax from max-shifted logits and the backward pass reuses
the softmax, so the z-loss gradient is `2 * z_loss * log_z * softmax` without
a second logsumexp.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

NUM_REAL_TARGET_TOKENS = 'NUM_REAL_TARGET_TOKENS'


@jax.custom_vjp
def cross_entropy_with_logits(logits: jax.Array, targets: jax.Array,
                              z_loss: float) -> Tuple[jax.Array, jax.Array]:
  """Per-position cross entropy of soft `targets` plus `z_loss * log(Z)^2`.

  Args:
    logits: [..., V] unnormalized log probabilities.
    targets: [..., V] target distribution (one-hot or smoothed).
    z_loss: coefficient of the auxiliary loss that keeps log(Z) near zero.

  Returns:
    (loss [...], z_loss_term [...]); `loss` already includes the z-loss term.
  """
  logits_sum = jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
  log_softmax = logits - logits_sum
  loss = -jnp.sum(targets * log_softmax, axis=-1)
  log_z = jnp.squeeze(logits_sum, axis=-1)
  total_z_loss = z_loss * jax.lax.square(log_z)
  return loss + total_z_loss, total_z_loss


def _cross_entropy_with_logits_fwd(logits, targets, z_loss=0.0):
  max_logit = logits.max(axis=-1, keepdims=True)
  shifted = logits - max_logit
  exp_shifted = jnp.exp(shifted)
  sum_exp = jnp.sum(exp_shifted, axis=-1, keepdims=True)
  log_softmax = shifted - jnp.log(sum_exp)
  loss = -jnp.sum(targets * log_softmax, axis=-1)
  log_z = jnp.squeeze(jnp.log(sum_exp) + max_logit, axis=-1)
  total_z_loss = z_loss * jax.lax.square(log_z)
  loss = loss + total_z_loss
  return (loss, total_z_loss), (logits, targets, z_loss, exp_shifted, sum_exp,
                                log_softmax, log_z)


def _cross_entropy_with_logits_bwd(res, g):
  g = g[0]  # The z-loss output is for logging only; its cotangent is ignored.
  logits, targets, z_loss, exp_shifted, sum_exp, log_softmax, log_z = res
  deriv = (jnp.expand_dims(1 + 2 * z_loss * log_z, -1) * exp_shifted / sum_exp
           - targets)
  g_logits = jnp.expand_dims(g, axis=-1) * deriv
  g_targets = -jnp.expand_dims(g, axis=-1) * log_softmax
  return (jnp.asarray(g_logits, logits.dtype),
          jnp.asarray(g_targets, targets.dtype), jnp.zeros_like(z_loss))


cross_entropy_with_logits.defvjp(_cross_entropy_with_logits_fwd,
                                 _cross_entropy_with_logits_bwd)


@jax.custom_vjp
def _sparse_cross_entropy_with_logits(
    logits: jax.Array, targets: jax.Array,
    z_loss: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """`cross_entropy_with_logits` for one-hot targets given as integer ids.

  Same numerics and VJP as the soft-target version with
  `one_hot(targets)` (no label smoothing), without materializing the
  [..., V] one-hot array or its product in the forward pass.
  """
  return _sparse_cross_entropy_with_logits_fwd(logits, targets, z_loss)[0]


def _sparse_cross_entropy_with_logits_fwd(logits, targets, z_loss):
  max_logit = logits.max(axis=-1, keepdims=True)
  shifted = logits - max_logit
  exp_shifted = jnp.exp(shifted)
  sum_exp = jnp.sum(exp_shifted, axis=-1, keepdims=True)
  log_sum_exp = jnp.log(sum_exp)
  target_shifted = jnp.take_along_axis(
      shifted, targets[..., None].astype(jnp.int32), axis=-1)
  loss = jnp.squeeze(log_sum_exp - target_shifted, axis=-1)
  log_z = jnp.squeeze(log_sum_exp + max_logit, axis=-1)
  total_z_loss = z_loss * jax.lax.square(log_z)
  loss = loss + total_z_loss
  return (loss, total_z_loss), (targets, z_loss, exp_shifted, sum_exp, log_z)


def _sparse_cross_entropy_with_logits_bwd(res, g):
  g = g[0]  # The z-loss output is for logging only; its cotangent is ignored.
  targets, z_loss, exp_shifted, sum_exp, log_z = res
  one_hot = jax.nn.one_hot(targets, exp_shifted.shape[-1],
                           dtype=exp_shifted.dtype)
  deriv = (jnp.expand_dims(1 + 2 * z_loss * log_z, -1) * exp_shifted / sum_exp
           - one_hot)
  g_logits = jnp.expand_dims(g, axis=-1) * deriv
  return (jnp.asarray(g_logits, exp_shifted.dtype), None,
          jnp.zeros_like(z_loss))


_sparse_cross_entropy_with_logits.defvjp(_sparse_cross_entropy_with_logits_fwd,
                                         _sparse_cross_entropy_with_logits_bwd)


def compute_weighted_cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    weights: Optional[jax.Array] = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    loss_normalizing_factor: Optional[Union[float, jax.Array]] = None,
) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """T5X's weighted cross entropy: returns (loss_sum, z_loss_sum, weight_sum).

  Sums are over all positions after multiplying by `weights` and dividing by
  `loss_normalizing_factor` when given. The label-smoothing entropy constant
  is subtracted so a perfect prediction has zero loss, as in T5X.
  """
  if logits.ndim != targets.ndim + 1:
    raise ValueError(f'Incorrect shapes. Got shape {logits.shape} logits and '
                     f'{targets.shape} targets')
  vocab_size = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = (1.0 - confidence) / (vocab_size - 1)
  normalizing_constant = -(
      confidence * np.log(confidence) +
      (vocab_size - 1) * low_confidence * np.log(low_confidence + 1e-20))
  if label_smoothing == 0.0:
    # Hard labels: gather the target log-probability instead of a [..., V]
    # one-hot product (same loss, z-loss and gradient).
    total_loss, total_z_loss = _sparse_cross_entropy_with_logits(
        logits, targets, jnp.asarray(z_loss, logits.dtype))
  else:
    soft_targets = jax.nn.one_hot(targets, vocab_size, dtype=logits.dtype)
    soft_targets = soft_targets * (confidence - low_confidence) + low_confidence
    total_loss, total_z_loss = cross_entropy_with_logits(
        logits, soft_targets, jnp.asarray(z_loss, logits.dtype))
  total_loss = total_loss - normalizing_constant
  weight_sum = jnp.asarray(np.prod(targets.shape), jnp.float32)
  if weights is not None:
    total_loss = total_loss * weights
    total_z_loss = total_z_loss * weights
    weight_sum = jnp.sum(weights).astype(jnp.float32)
  if loss_normalizing_factor is not None:
    total_loss = total_loss / loss_normalizing_factor
    total_z_loss = total_z_loss / loss_normalizing_factor
  return jnp.sum(total_loss), jnp.sum(total_z_loss), weight_sum
