"""Hand-computed values for the ILM phase-1 and RSLLM contrastive losses.

Every expected value is written out from the literal vectors with scalar
`math` (dot products done by hand in the comments), not by re-running the
vectorised code.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recjax.train import contrastive_losses as cl


def lse(*xs):
  return math.log(sum(math.exp(x) for x in xs))


def close(got, want, rtol=1e-5):
  np.testing.assert_allclose(float(got), want, rtol=rtol, atol=1e-6)


def arr(x):
  return jnp.asarray(x, jnp.float32)


# ----------------------------------------------------------------- info_nce

# Anchors are not unit length on purpose: info_nce normalises them.
A2 = arr([[2.0, 0.0], [0.0, 3.0]])          # -> [1,0], [0,1]
P2 = arr([[0.6, 0.8], [1.0, 0.0]])
# a.p / 0.5: row0 = [0.6, 1.0] / .5 = [1.2, 2.0]; row1 -> [1.6, 0]
INFO_FWD = ((-1.2 + lse(1.2, 2.0)) + (-0.0 + lse(1.6, 0.0))) / 2
# Columns as rows: p0 vs anchors = [1.2, 1.6] (target 0);
# p1 = [2.0, 0] (target 1).
INFO_BWD = ((-1.2 + lse(1.2, 1.6)) + (-0.0 + lse(2.0, 0.0))) / 2


def test_info_nce_hand_value():
  close(cl.info_nce(A2, P2, 0.5), INFO_FWD)
  close(cl.info_nce(A2, P2, jnp.float32(0.5)), INFO_FWD)


def test_info_nce_symmetric_hand_value():
  close(cl.info_nce(A2, P2, 0.5, symmetric=True), (INFO_FWD + INFO_BWD) / 2)


# B=3, temperature 1. positive_ids [7, 8, 7]: p0 and p2 are the same item.
A3 = arr([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
P3 = arr([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
PID = jnp.asarray([7, 8, 7])
# Logits a_i . p_j:
#   row0 = [1.0, 0.0, 0.6]; row1 = [0.0, 1.0, 0.8]; row2 = [0.6, 0.8, 1.0]
ROW1 = -1.0 + lse(0.0, 1.0, 0.8)
HARD = ((-1.0 + lse(1.0, 0.0, 0.6)) + ROW1 + (-1.0 + lse(0.6, 0.8, 1.0))) / 3
# Every item once per softmax: row 0 loses column 2 and row 2 column 0
# (the same item 7 again), as if each row saw the batch without the
# duplicate.
DEDUP_ROW0 = -1.0 + lse(1.0, 0.0)
DEDUP_ROW2 = -1.0 + lse(0.8, 1.0)
DEDUP = (DEDUP_ROW0 + ROW1 + DEDUP_ROW2) / 3


def test_info_nce_a_duplicate_item_is_neither_positive_nor_negative():
  close(cl.info_nce(A3, P3, 1.0), HARD)
  close(cl.info_nce(A3, P3, 1.0, positive_ids=PID), DEDUP)
  assert abs(DEDUP - HARD) > 1e-3


def test_info_nce_anchor_ids_masks_own_item():
  # Anchor 0 is item 8: column 1 (item 8, not row 0's positive) leaves its
  # softmax, and column 2 (its own positive's item again) too: only its
  # positive is left (loss 0). Anchors 1 and 2 (item 9) mask nothing.
  aid = jnp.asarray([8, 9, 9])
  got = cl.info_nce(A3, P3, 1.0, anchor_ids=aid, positive_ids=PID)
  close(got, (0.0 + ROW1 + DEDUP_ROW2) / 3)
  # anchor_ids == positive_ids (RSLLM's ID-text loss): the duplicates rule.
  close(cl.info_nce(A3, P3, 1.0, anchor_ids=PID, positive_ids=PID), DEDUP)
  with pytest.raises(ValueError):
    cl.info_nce(A3, P3, 1.0, anchor_ids=aid)


def test_info_nce_anchor_ids_symmetric():
  aid = jnp.asarray([8, 9, 9])
  fwd = (0.0 + ROW1 + DEDUP_ROW2) / 3
  # Positives as rows (columns of the logits), under the same pairs:
  #   p0 = [1.0, 0.0, 0.6] without anchor 2 (item 7 again);
  #   p1 = [0.0, 1.0, 0.8] without anchor 0 (item 8 == p1's item);
  #   p2 = [0.6, 0.8, 1.0] without anchor 0 (item 7 again).
  bwd = ((-1.0 + lse(1.0, 0.0)) + (-1.0 + lse(1.0, 0.8))
         + (-1.0 + lse(0.8, 1.0))) / 3
  got = cl.info_nce(A3, P3, 1.0, anchor_ids=aid, positive_ids=PID,
                    symmetric=True)
  close(got, (fwd + bwd) / 2)


@pytest.mark.parametrize('symmetric', [False, True])
def test_info_nce_padded_row_changes_nothing(symmetric):
  base = cl.info_nce(A3, P3, 1.0, anchor_ids=jnp.asarray([8, 9, 9]),
                     positive_ids=PID, symmetric=symmetric)
  # The pad row copies item 7 and a strong anchor: it would be a positive of
  # rows 0 and 2 and a hard negative of row 1 if it counted.
  a = jnp.concatenate([A3, arr([[0.0, 1.0]])])
  p = jnp.concatenate([P3, arr([[0.0, 1.0]])])
  got = cl.info_nce(a, p, 1.0, anchor_ids=jnp.asarray([8, 9, 9, 7]),
                    positive_ids=jnp.asarray([7, 8, 7, 7]),
                    valid=jnp.asarray([True, True, True, False]),
                    symmetric=symmetric)
  close(got, float(base))
  # And a zero-vector pad (normalisation of 0) is harmless too.
  a0 = jnp.concatenate([A2, jnp.zeros((1, 2))])
  p0 = jnp.concatenate([P2, jnp.zeros((1, 2))])
  close(cl.info_nce(a0, p0, 0.5, valid=jnp.asarray([True, True, False]),
                    symmetric=symmetric),
        float(cl.info_nce(A2, P2, 0.5, symmetric=symmetric)))


def test_info_nce_no_valid_rows_is_zero():
  close(cl.info_nce(A2, P2, 0.5, valid=jnp.asarray([False, False])), 0.0)


# ---------------------------------------------------------------------- itc

# item_emb [2, K=2, 2], text_emb [2, 2], temperature 0.5.
ITEM = arr([[[1.0, 0.0], [0.6, -0.8]],
            [[0.6, 0.8], [-1.0, 0.0]]])
TEXT = arr([[0.8, 0.6], [0.0, 1.0]])
# max_k <item[i,k], text[j]>:
#   (0,0): max(0.8, 0.48-0.48=0) = 0.8     (0,1): max(0, -0.8) = 0
#   (1,0): max(0.48+0.48, -0.8) = 0.96      (1,1): max(0.8, 0) = 0.8
S = [[1.6, 0.0], [1.92, 1.6]]  # / 0.5
ITC_I2T = ((-1.6 + lse(1.6, 0.0)) + (-1.6 + lse(1.92, 1.6))) / 2
ITC_T2I = ((-1.6 + lse(1.6, 1.92)) + (-1.6 + lse(0.0, 1.6))) / 2
ITC = (ITC_I2T + ITC_T2I) / 2


def test_itc_hand_value_and_similarities():
  loss, s_i2t, s_t2i = cl.itc_loss(ITEM, TEXT, 0.5)
  close(loss, ITC)
  np.testing.assert_allclose(s_i2t, S, rtol=1e-6)
  np.testing.assert_allclose(s_t2i, np.asarray(S).T, rtol=1e-6)


def test_itc_uses_max_over_queries():
  # item0's query 1 never wins; moving it elsewhere (still losing) is a no-op.
  moved = ITEM.at[0, 1].set(arr([0.0, -1.0]))
  close(cl.itc_loss(moved, TEXT, 0.5)[0], ITC)
  # item0's query 0 is the max for text 0; changing it to [0.6, 0.8] makes
  # the similarities (0.96, 0.8) -> row 0 = [1.92, 1.6].
  changed = ITEM.at[0, 0].set(arr([0.6, 0.8]))
  want = (((-1.92 + lse(1.92, 1.6)) + (-1.6 + lse(1.92, 1.6))) / 2
          + ((-1.92 + lse(1.92, 1.92)) + (-1.6 + lse(1.6, 1.6))) / 2) / 2
  got = cl.itc_loss(changed, TEXT, 0.5)[0]
  close(got, want)
  assert abs(want - ITC) > 1e-3


def test_itc_label_smoothing_hand_value():
  # eps = 0.1 over 2 columns: target 0.95, other 0.05 (torch convention).
  def ce(xt, xo):
    z = lse(xt, xo)
    return -(0.95 * (xt - z) + 0.05 * (xo - z))
  i2t = (ce(1.6, 0.0) + ce(1.6, 1.92)) / 2
  t2i = (ce(1.6, 1.92) + ce(1.6, 0.0)) / 2
  close(cl.itc_loss(ITEM, TEXT, 0.5, label_smoothing=0.1)[0], (i2t + t2i) / 2)


def test_itc_item_ids_spread_targets():
  # Both rows are the same item: each row's target is [1/2, 1/2].
  i2t = ((-(0.5 * 1.6 + 0.5 * 0.0) + lse(1.6, 0.0))
         + (-(0.5 * 1.92 + 0.5 * 1.6) + lse(1.92, 1.6))) / 2
  t2i = ((-(0.5 * 1.6 + 0.5 * 1.92) + lse(1.6, 1.92))
         + (-(0.5 * 0.0 + 0.5 * 1.6) + lse(0.0, 1.6))) / 2
  got = cl.itc_loss(ITEM, TEXT, 0.5, item_ids=jnp.asarray([3, 3]))[0]
  close(got, (i2t + t2i) / 2)


def test_itc_padded_row_changes_nothing():
  item = jnp.concatenate([ITEM, arr([[[0.8, 0.6], [0.0, 1.0]]])])
  text = jnp.concatenate([TEXT, arr([[0.8, 0.6]])])
  loss, s_i2t, _ = cl.itc_loss(item, text, 0.5, item_ids=jnp.asarray([1, 2, 1]),
                               valid=jnp.asarray([True, True, False]))
  close(loss, ITC)
  assert s_i2t.shape == (3, 3)


# ----------------------------------------------------------- hard negatives

def test_hard_negatives_never_positive_or_invalid():
  sim = jax.random.normal(jax.random.PRNGKey(0), (5, 5)) * 3
  ids = jnp.asarray([0, 1, 0, 2, 1])
  valid = jnp.asarray([True, True, True, True, False])
  keys = jax.random.split(jax.random.PRNGKey(1), 300)
  fn = jax.jit(jax.vmap(functools.partial(cl.hard_negatives, item_ids=ids,
                                          valid=valid),
                        in_axes=(None, None, 0)))
  neg_text, neg_item = fn(sim, sim.T, keys)
  assert neg_text.dtype == jnp.int32 and neg_item.dtype == jnp.int32
  neg_text, neg_item = np.asarray(neg_text), np.asarray(neg_item)
  ids_np, valid_np = np.asarray(ids), np.asarray(valid)
  for neg in (neg_text, neg_item):
    for row in range(4):
      drawn = neg[:, row]
      assert valid_np[drawn].all()
      assert (ids_np[drawn] != ids_np[row]).all()
      assert (drawn != row).all()
    # The invalid row has nothing to draw: its own index.
    assert (neg[:, 4] == 4).all()
  # Row 0 (item 0) may draw only columns 1 and 3; row 3 (item 2) only 0..2.
  for neg in (neg_text, neg_item):
    assert set(neg[:, 0]) <= {1, 3}
    assert set(neg[:, 3]) <= {0, 1, 2}


def test_hard_negatives_prefers_most_similar_and_is_deterministic():
  # Row i's positive (diagonal) is the largest; among the negatives one
  # column is far more similar (weights e^5 : 1 : 1 -> ~98.7%).
  sim = arr([[10.0, 5.0, 0.0, 0.0],
             [0.0, 10.0, 0.0, 5.0],
             [5.0, 0.0, 10.0, 0.0],
             [0.0, 0.0, 5.0, 10.0]])
  keys = jax.random.split(jax.random.PRNGKey(2), 400)
  neg_text, neg_item = jax.vmap(cl.hard_negatives, in_axes=(None, None, 0))(
      sim, sim.T, keys)
  neg_text, neg_item = np.asarray(neg_text), np.asarray(neg_item)
  np.testing.assert_array_less(0.9, (neg_text == [1, 3, 0, 2]).mean(0))
  # Text j's row of sim.T: text 1's most similar non-matching item is 0, etc.
  np.testing.assert_array_less(0.9, (neg_item == [2, 0, 3, 1]).mean(0))
  assert (neg_text != np.arange(4)).all() and (neg_item != np.arange(4)).all()
  a = cl.hard_negatives(sim, sim.T, jax.random.PRNGKey(7))
  b = cl.hard_negatives(sim, sim.T, jax.random.PRNGKey(7))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])


def test_hard_negatives_batch_of_one_returns_own_index():
  t, i = cl.hard_negatives(arr([[1.0]]), arr([[1.0]]), jax.random.PRNGKey(0))
  assert int(t[0]) == 0 and int(i[0]) == 0
  # Same item everywhere: no negative either.
  t, i = cl.hard_negatives(jnp.zeros((2, 2)), jnp.zeros((2, 2)),
                           jax.random.PRNGKey(0), item_ids=jnp.asarray([4, 4]))
  np.testing.assert_array_equal(t, [0, 1])
  np.testing.assert_array_equal(i, [0, 1])


# ---------------------------------------------------------------------- itm

POS = arr([[0.2, 1.0]])
NEG = arr([[0.5, -0.5], [1.5, 0.3]])
CE_POS = -1.0 + lse(0.2, 1.0)
CE_NEG0 = -0.5 + lse(0.5, -0.5)
CE_NEG1 = -1.5 + lse(1.5, 0.3)


def test_itm_hand_values():
  close(cl.itm_loss(POS, NEG), (CE_POS + CE_NEG0 + CE_NEG1) / 3)
  close(cl.itm_loss(POS, NEG, neg_valid=jnp.asarray([True, False])),
        (CE_POS + CE_NEG0) / 2)
  close(cl.itm_loss(POS, NEG, valid=jnp.asarray([False])),
        (CE_NEG0 + CE_NEG1) / 2)


# ----------------------------------------------------------------- token lm

LM_LOGITS = arr([[[0.0, 1.0, 2.0], [1.0, 1.0, 0.0], [5.0, 5.0, 5.0]]])
LM_TARGETS = jnp.asarray([[2, 1, 0]])


def test_token_lm_loss_hand_values():
  ce0 = -2.0 + lse(0.0, 1.0, 2.0)
  ce1 = -1.0 + lse(1.0, 1.0, 0.0)
  ce2 = -5.0 + lse(5.0, 5.0, 5.0)
  # Default weights: targets > 0, so the padding position 2 is ignored.
  close(cl.token_lm_loss(LM_LOGITS, LM_TARGETS), (ce0 + ce1) / 2)
  close(cl.token_lm_loss(LM_LOGITS, LM_TARGETS, arr([[0.0, 1.0, 1.0]])),
        (ce1 + ce2) / 2)
  # T5X smoothing, eps 0.1 over V=3: 0.9 on the target, 0.05 elsewhere, minus
  # the entropy constant.
  const = -(0.9 * math.log(0.9) + 2 * 0.05 * math.log(0.05))
  z0, z1 = lse(0.0, 1.0, 2.0), lse(1.0, 1.0, 0.0)
  s0 = -(0.9 * (2.0 - z0) + 0.05 * (0.0 - z0) + 0.05 * (1.0 - z0)) - const
  s1 = -(0.9 * (1.0 - z1) + 0.05 * (1.0 - z1) + 0.05 * (0.0 - z1)) - const
  close(cl.token_lm_loss(LM_LOGITS, LM_TARGETS, label_smoothing=0.1),
        (s0 + s1) / 2)
  close(cl.token_lm_loss(LM_LOGITS, jnp.zeros((1, 3), jnp.int32)), 0.0)


# ------------------------------------------------------- gradients and jit

def test_gradients_finite_and_jit():
  valid = jnp.asarray([True, True, True, False])
  a = jnp.concatenate([A3, jnp.zeros((1, 2))])
  p = jnp.concatenate([P3, jnp.zeros((1, 2))])
  pid = jnp.asarray([7, 8, 7, 0])
  aid = jnp.asarray([8, 9, 9, 0])

  def nce(a, p, t):
    return cl.info_nce(a, p, t, anchor_ids=aid, positive_ids=pid, valid=valid,
                       symmetric=True)
  grads = jax.jit(jax.grad(nce, argnums=(0, 1, 2)))(a, p, jnp.float32(0.07))
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()
  assert not np.allclose(grads[0][:3], 0.0)
  np.testing.assert_array_equal(grads[0][3], 0.0)  # the pad gets no gradient

  def itc(item, text, t):
    return cl.itc_loss(item, text, t, item_ids=jnp.asarray([1, 1]),
                       valid=jnp.asarray([True, True]),
                       label_smoothing=0.1)[0]
  for g in jax.jit(jax.grad(itc, argnums=(0, 1, 2)))(ITEM, TEXT, 0.5):
    assert np.isfinite(np.asarray(g)).all()

  g = jax.jit(jax.grad(cl.itm_loss, argnums=(0, 1)))(POS, NEG)
  assert all(np.isfinite(np.asarray(x)).all() for x in g)
  g = jax.jit(jax.grad(cl.token_lm_loss))(LM_LOGITS, LM_TARGETS)
  assert np.isfinite(np.asarray(g)).all()

  close(jax.jit(cl.info_nce, static_argnames='symmetric')(
      A2, P2, 0.5, symmetric=True), (INFO_FWD + INFO_BWD) / 2)
  close(jax.jit(cl.itc_loss)(ITEM, TEXT, 0.5)[0], ITC)
  close(jax.jit(cl.itm_loss)(POS, NEG), (CE_POS + CE_NEG0 + CE_NEG1) / 3)
  jax.jit(cl.hard_negatives)(arr(S), arr(S).T, jax.random.PRNGKey(0))
