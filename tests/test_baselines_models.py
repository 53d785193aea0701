"""SASRec and MF modules: causality, padding, losses and logical axis names."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recjax.models.mf import MF
from recjax.models.sasrec import SASRec, SASRecConfig

CFG = SASRecConfig(num_items=12, max_len=6, n_layers=1, hidden=16, inner=32)


@pytest.fixture(scope="module")
def sasrec():
  model = SASRec(CFG)
  boxed = jax.jit(model.init)({"params": jax.random.PRNGKey(0)},
                               jnp.zeros((1, 6), jnp.int32))
  return model, boxed["params"]


def test_sasrec_is_causal_and_reads_the_last_real_position(sasrec):
  model, boxed = sasrec
  params = nn.unbox(boxed)
  a = jnp.array([[3, 5, 7, 0, 0, 0]])
  b = jnp.array([[3, 5, 7, 9, 2, 0]])  # same first three items

  @jax.jit
  def run(params):
    hidden = model.apply({"params": params}, jnp.concatenate([a, b]))
    enc = model.apply({"params": params}, a, jnp.array([3]), method=SASRec.encode)
    sc = model.apply({"params": params}, a, jnp.array([3]), method=SASRec.scores)
    return hidden[:1], hidden[1:], enc, sc

  ha, hb, ea, scores = run(params)
  np.testing.assert_allclose(ha[:, :3], hb[:, :3], atol=1e-5)
  np.testing.assert_allclose(ea, hb[:, 2], atol=1e-5)
  assert scores.shape == (1, 12)
  np.testing.assert_allclose(scores, ea @ params["item_embedding"][1:].T, atol=1e-5)


def test_sasrec_losses(sasrec):
  model, boxed = sasrec
  params = nn.unbox(boxed)
  seq = jnp.array([[3, 5, 7, 0, 0, 0], [1, 2, 0, 0, 0, 0]])

  @jax.jit
  def losses(params):
    loss = functools.partial(model.apply, {"params": params}, seq,
                             method=SASRec.loss, deterministic=True)
    # [B] targets with lengths == [B, 1] targets at position length - 1 ==
    # the same with an extra ignored (-1) target.
    l1 = loss(jnp.array([4, 9]), lengths=jnp.array([3, 2]))
    l2 = loss(jnp.array([[4], [9]]), positions=jnp.array([[2], [1]]))
    l3 = loss(jnp.array([[4, -1], [9, -1]]), positions=jnp.array([[2, 0], [1, 0]]))
    bce = loss(jnp.array([4, 9]), lengths=jnp.array([3, 2]),
               negatives=jnp.array([0, 1]), loss_type="bce")
    return l1, l2, l3, bce

  l1, l2, l3, bce = losses(params)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  np.testing.assert_allclose(l1, l3, rtol=1e-6)
  # With normal(0.02) init the scores are near 0: CE ~ log(num_items),
  # BCE ~ 2 log 2.
  assert abs(float(l1) - np.log(12)) < 0.3
  assert abs(float(bce) - 2 * np.log(2)) < 0.3
  assert boxed["item_embedding"].names == ("items", "embed")


def test_mf_scores_and_axes():
  model = MF(num_users=3, num_items=4, embed_dim=8)
  boxed = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros(1, jnp.int32),
                              jnp.zeros(1, jnp.int32))
  assert boxed["params"]["user_embedding"].names == ("users", "embed")
  assert boxed["params"]["item_embedding"].names == ("items", "embed")
  params = nn.unbox(boxed["params"])

  @jax.jit
  def run(params):
    full = model.apply({"params": params}, jnp.array([0, 2]), method=MF.full_scores)
    pair = model.apply({"params": params}, jnp.array([2]), jnp.array([3]))
    loss = model.apply({"params": params}, jnp.array([0]), jnp.array([1]),
                       jnp.array([1]), method=MF.bpr_loss)
    return full, pair, loss

  full, pair, loss = run(params)
  np.testing.assert_allclose(full[1, 3], pair[0], rtol=1e-6)
  np.testing.assert_allclose(loss, np.log(2), rtol=1e-6)  # equal scores


def test_mf_init_is_torch_xavier_normal():
  # RecBole's BPR: torch.nn.init.xavier_normal_, an untruncated normal with
  # std sqrt(2 / (fan_in + fan_out)); flax's xavier_normal is truncated at 2 std.
  model = MF(num_users=4000, num_items=64, embed_dim=64)
  params = nn.unbox(jax.jit(model.init)(
      jax.random.PRNGKey(0), jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32))["params"])
  w = np.asarray(params["user_embedding"])
  std = np.sqrt(2 / (4000 + 64))
  assert abs(w.std() / std - 1) < 0.01
  # Beyond 2 std: 4.55% for a normal, 0 for the truncated one.
  assert abs(np.mean(np.abs(w) > 2 * std) - 0.0455) < 0.003
