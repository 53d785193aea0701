"""Golden tests of the loss numerics and the model's loss_fn against numpy."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recjax.train import losses
from recjax.train import model_api
from recjax.train import test_utils


def _np_loss(logits, targets, weights, z_loss, label_smoothing=0.0):
  """Plain numpy: smoothed cross entropy + z_loss * logZ^2, weighted."""
  logits = logits.astype(np.float64)
  v = logits.shape[-1]
  m = logits.max(-1, keepdims=True)
  log_z = np.log(np.exp(logits - m).sum(-1, keepdims=True)) + m
  log_p = logits - log_z
  conf = 1.0 - label_smoothing
  low = label_smoothing / (v - 1)
  soft = np.full(logits.shape, low)
  np.put_along_axis(soft, targets[..., None], conf, axis=-1)
  const = -(conf * np.log(conf) + (v - 1) * low * np.log(low + 1e-20))
  ce = -(soft * log_p).sum(-1) - const
  zl = z_loss * log_z[..., 0] ** 2
  return ((ce + zl) * weights).sum(), (zl * weights).sum(), log_p, log_z


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1])
def test_weighted_cross_entropy_golden(label_smoothing):
  rng = np.random.RandomState(0)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
  targets = rng.randint(0, 11, size=(3, 5))
  weights = (rng.rand(3, 5) > 0.3).astype(np.float32)
  loss, zl, wsum = losses.compute_weighted_cross_entropy(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights),
      label_smoothing=label_smoothing, z_loss=1e-2)
  want, want_zl, _, _ = _np_loss(logits, targets, weights, 1e-2,
                                 label_smoothing)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(zl, want_zl, rtol=1e-5)
  assert float(wsum) == weights.sum()


def test_custom_vjp_gradient_golden():
  """d/dlogits = (1 + 2 z logZ) softmax - targets, as T5X's backward."""
  rng = np.random.RandomState(1)
  logits = rng.normal(size=(4, 7)).astype(np.float32) * 2
  targets = rng.randint(0, 7, size=(4,))
  onehot = np.eye(7, dtype=np.float32)[targets]
  z = 1e-2
  g = jax.grad(lambda l: losses.cross_entropy_with_logits(
      l, jnp.asarray(onehot), jnp.float32(z))[0].sum())(jnp.asarray(logits))
  _, _, log_p, log_z = _np_loss(logits, targets, np.ones(4), z)
  want = (1 + 2 * z * log_z) * np.exp(log_p) - onehot
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
  # And it agrees with autodiff of the plain formula.
  def plain(l):
    lz = jax.scipy.special.logsumexp(l, -1)
    return (-(onehot * (l - lz[:, None])).sum(-1) + z * lz ** 2).sum()
  np.testing.assert_allclose(g, jax.grad(plain)(jnp.asarray(logits)),
                             rtol=1e-5, atol=1e-6)


def _batch():
  rng = np.random.RandomState(2)
  tgt = rng.randint(1, 259, size=(4, 6)).astype(np.int32)
  tgt[:, 4:] = 0
  return {
      'encoder_input_tokens': rng.randint(1, 259, size=(4, 8)).astype(np.int32),
      'decoder_input_tokens': np.concatenate(
          [np.zeros((4, 1), np.int32), tgt[:, :-1]], 1),
      'decoder_target_tokens': tgt,
      'decoder_loss_weights': (tgt > 0).astype(np.int32),
  }


@pytest.mark.parametrize('lnf', [None, 'NUM_REAL_TARGET_TOKENS', 100.0])
def test_model_loss_fn_matches_numpy(lnf):
  model = test_utils.tiny_model(z_loss=1e-4, loss_normalizing_factor=lnf)
  batch = _batch()
  shapes = {k: v.shape for k, v in batch.items()}
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)
  params = jax.tree_util.tree_map(
      lambda x: x, __import__('flax').linen.unbox(params['params']))
  loss, metrics = model.loss_fn(params, batch, None)
  logits = np.asarray(model._compute_logits(params, batch, None))
  w = batch['decoder_loss_weights'].astype(np.float64)
  total, ztotal, _, _ = _np_loss(logits, batch['decoder_target_tokens'], w,
                                 1e-4)
  norm = w.sum() if lnf in (None, 'NUM_REAL_TARGET_TOKENS') else lnf
  np.testing.assert_allclose(loss, total / norm, rtol=1e-5)
  np.testing.assert_allclose(metrics['z_loss'], ztotal / norm, rtol=1e-5)
  assert float(metrics['weight_sum']) == w.sum() == 16
  correct = (logits.argmax(-1) == batch['decoder_target_tokens']) * w
  assert float(metrics['num_correct']) == correct.sum()
  assert float(metrics['num_tokens']) == 4 * 8 + 16


def test_bad_loss_normalizing_factor():
  with pytest.raises(ValueError):
    test_utils.tiny_model(loss_normalizing_factor='AVERAGE_PER_SEQUENCE_X')


def test_integer_label_path_equals_one_hot_path():
  """label_smoothing=0 gathers target log-probs; it must equal the one-hot path."""
  rng = np.random.default_rng(3)
  logits = jnp.asarray(rng.normal(size=(3, 5, 11)) * 3, jnp.float32)
  targets = jnp.asarray(rng.integers(0, 11, size=(3, 5)), jnp.int32)
  z = jnp.asarray(1e-4, jnp.float32)

  def sparse(lg):
    loss, zl, _ = losses.compute_weighted_cross_entropy(lg, targets, z_loss=1e-4)
    return loss, zl

  def dense(lg):
    loss, zl = losses.cross_entropy_with_logits(
        lg, jax.nn.one_hot(targets, 11, dtype=lg.dtype), z)
    return loss.sum(), zl.sum()

  (ls, zs), (ld, zd) = sparse(logits), dense(logits)
  np.testing.assert_allclose(ls, ld, rtol=1e-6)
  np.testing.assert_allclose(zs, zd, rtol=1e-6)
  gs = jax.grad(lambda lg: sparse(lg)[0])(logits)
  gd = jax.grad(lambda lg: dense(lg)[0])(logits)
  np.testing.assert_allclose(gs, gd, rtol=1e-6, atol=1e-7)
