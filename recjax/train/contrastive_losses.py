"""Contrastive and matching losses for ILM phase 1 and RSLLM's alignment.

ILM phase 1 aligns the item encoder's K query outputs with item text the way
BLIP-2's Q-Former does: item-text contrastive (`itc_loss`, max over the K
queries), item-text matching on mined hard negatives (`hard_negatives`,
`itm_loss`) and item-grounded text generation (`token_lm_loss`). RSLLM adds
two in-batch InfoNCE losses (`info_nce`): user sequence vs target item, and
item ID embedding vs item text.

All math is float32 and every function is jittable. Masks are boolean arrays
over the batch: a row that is not `valid` contributes nothing, and a column
that is not valid is removed from every softmax, so padded examples never
count as positives or negatives.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import jax
import jax.numpy as jnp

from recjax.train import losses

# Masked logits get this value instead of -inf, so `0 * log_softmax` stays 0
# (no NaN) in rows whose targets are zero on masked columns.
_MASKED_LOGIT = -1e9

Temperature = Union[float, jax.Array]


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps))


def _valid_mask(valid: Optional[jax.Array], n: int) -> jax.Array:
  if valid is None:
    return jnp.ones((n,), bool)
  return jnp.asarray(valid).astype(bool)


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  """sum(values * weights) / sum(weights), 0 when nothing counts."""
  weights = weights.astype(jnp.float32)
  total = jnp.sum(weights)
  return jnp.sum(values * weights) / jnp.where(total > 0, total, 1.0)


def _positive_mask(b: int, ids: Optional[jax.Array]) -> jax.Array:
  """[B, B] bool: the diagonal, plus every pair with equal `ids` if given."""
  eye = jnp.eye(b, dtype=bool)
  if ids is None:
    return eye
  ids = jnp.asarray(ids)
  return eye | (ids[:, None] == ids[None, :])


def _soft_targets(positives: jax.Array, columns: jax.Array) -> jax.Array:
  """Spreads each row's target mass uniformly over its counted positives."""
  t = (positives & columns).astype(jnp.float32)
  n = jnp.sum(t, -1, keepdims=True)
  return t / jnp.where(n > 0, n, 1.0)


def _smooth(targets: jax.Array, columns: jax.Array,
            label_smoothing: float) -> jax.Array:
  """torch-style smoothing: (1 - eps) * targets + eps / #counted columns."""
  if not label_smoothing:
    return targets
  cols = columns.astype(jnp.float32)
  n = jnp.sum(cols, -1, keepdims=True)
  uniform = cols / jnp.where(n > 0, n, 1.0)
  return (1.0 - label_smoothing) * targets + label_smoothing * uniform


def _soft_cross_entropy(logits: jax.Array, targets: jax.Array,
                        columns: jax.Array) -> jax.Array:
  """Per-row CE of soft `targets` over the `columns` that count; [B]."""
  logits = jnp.where(columns, logits, _MASKED_LOGIT)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.where(targets > 0, targets * log_p, 0.0), -1)


def info_nce(anchors: jax.Array,
             positives: jax.Array,
             temperature: Temperature,
             *,
             anchor_ids: Optional[jax.Array] = None,
             positive_ids: Optional[jax.Array] = None,
             valid: Optional[jax.Array] = None,
             symmetric: bool = False) -> jax.Array:
  """In-batch InfoNCE between L2-normalised anchors and positives.

  logits = a @ p.T / temperature; row i's target is column i. Every item
  counts once in every softmax: with `positive_ids` [B], a column j != i
  holding row i's positive item again (a batch that holds an item twice) is
  removed from row i's softmax, so the loss is the batch's with the
  duplicates left out, and an item is never its own negative. With
  `anchor_ids` [B] as well (e.g. RSLLM's item-ID vs item-text loss, or a
  user sequence whose last item is the target of another row), columns
  j != i with positive_ids[j] == anchor_ids[i] are removed too.

  Args:
    anchors: [B, D]; normalised here.
    positives: [B, D]; normalised here.
    temperature: scalar (float or array, e.g. a learned one).
    anchor_ids: optional [B] ids of what each anchor is; needs positive_ids.
    positive_ids: optional [B] ids of each positive.
    valid: optional [B] bool; invalid rows add nothing and invalid columns
      leave every softmax.
    symmetric: average the anchor->positive and positive->anchor losses.

  Returns:
    Scalar float32 loss, the mean over valid rows (0 if none is valid).
  """
  if anchor_ids is not None and positive_ids is None:
    raise ValueError('anchor_ids needs positive_ids: it masks columns whose '
                     'positive_ids equal the anchor id.')
  b = anchors.shape[0]
  a = _l2_normalize(anchors)
  p = _l2_normalize(positives)
  logits = a @ p.T / jnp.asarray(temperature, jnp.float32)
  valid = _valid_mask(valid, b)
  eye = jnp.eye(b, dtype=bool)
  # keep[i, j]: pair (anchor i, positive j) may appear in a softmax.
  keep = jnp.ones((b, b), bool)
  if positive_ids is not None:
    pid = jnp.asarray(positive_ids)
    keep &= ~((pid[None, :] == pid[:, None]) & ~eye)
    if anchor_ids is not None:
      keep &= ~((pid[None, :] == jnp.asarray(anchor_ids)[:, None]) & ~eye)
  columns = keep & valid[None, :]
  targets = _soft_targets(eye, columns)
  loss = _masked_mean(_soft_cross_entropy(logits, targets, columns), valid)
  if symmetric:
    # Positive j against every anchor i, under the same pairs.
    columns_t = keep.T & valid[None, :]
    targets_t = _soft_targets(eye, columns_t)
    loss_t = _masked_mean(
        _soft_cross_entropy(logits.T, targets_t, columns_t), valid)
    loss = (loss + loss_t) / 2
  return loss


def itc_similarities(item_emb: jax.Array, text_emb: jax.Array,
                     temperature: Temperature) -> Tuple[jax.Array, jax.Array]:
  """BLIP-2 similarities: (sim_i2t [B, B], sim_t2i [B, B] = sim_i2t.T).

  sim_i2t[i, j] = max_k <item_emb[i, k], text_emb[j]> / temperature.
  """
  item = item_emb.astype(jnp.float32)
  text = text_emb.astype(jnp.float32)
  sim = jnp.einsum('ike,je->ijk', item, text).max(-1)
  sim_i2t = sim / jnp.asarray(temperature, jnp.float32)
  return sim_i2t, sim_i2t.T


def itc_loss(item_emb: jax.Array,
             text_emb: jax.Array,
             temperature: Temperature,
             *,
             item_ids: Optional[jax.Array] = None,
             valid: Optional[jax.Array] = None,
             label_smoothing: float = 0.0
             ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """BLIP-2 item-text contrastive loss over the K query outputs.

  Each item-text pair scores as its best-matching query (max over K), as in
  BLIP-2's image-text contrastive loss. Targets are the diagonal, spread over
  same-item columns when `item_ids` is given (a batch that holds an item
  twice has two correct texts). `label_smoothing` follows torch's
  `cross_entropy(label_smoothing=eps)` that BLIP-2 uses: (1 - eps) * targets
  plus eps spread uniformly over the counted (valid) columns.

  Args:
    item_emb: [B, K, E] query outputs, already normalised.
    text_emb: [B, E] text features, already normalised.
    temperature: scalar (BLIP-2 learns it; clamp it in the caller).
    item_ids: optional [B] item ids.
    valid: optional [B] bool over pairs.
    label_smoothing: eps in [0, 1).

  Returns:
    (loss, sim_i2t [B, B], sim_t2i [B, B]); the similarities are unmasked
    and feed `hard_negatives`.
  """
  b = item_emb.shape[0]
  sim_i2t, sim_t2i = itc_similarities(item_emb, text_emb, temperature)
  valid = _valid_mask(valid, b)
  pos = _positive_mask(b, item_ids)
  columns = jnp.broadcast_to(valid[None, :], (b, b))
  targets = _smooth(_soft_targets(pos, columns), columns, label_smoothing)
  loss_i2t = _masked_mean(_soft_cross_entropy(sim_i2t, targets, columns), valid)
  loss_t2i = _masked_mean(_soft_cross_entropy(sim_t2i, targets, columns), valid)
  return (loss_i2t + loss_t2i) / 2, sim_i2t, sim_t2i


def _sample_negatives(sim: jax.Array, allowed: jax.Array,
                      rng: jax.Array) -> jax.Array:
  logits = jnp.where(allowed, jax.lax.stop_gradient(sim).astype(jnp.float32),
                     -jnp.inf)
  sampled = jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
  own = jnp.arange(sim.shape[0], dtype=jnp.int32)
  return jnp.where(jnp.any(allowed, -1), sampled, own)


def hard_negatives(sim_i2t: jax.Array,
                   sim_t2i: jax.Array,
                   rng: jax.Array,
                   *,
                   item_ids: Optional[jax.Array] = None,
                   valid: Optional[jax.Array] = None
                   ) -> Tuple[jax.Array, jax.Array]:
  """BLIP-2's hard-negative mining for item-text matching.

  Item row i draws a negative text from softmax(sim_i2t[i]) with its
  positives (column i and same-item columns) and invalid columns at zero
  weight; text row j draws a negative item from softmax(sim_t2i[j]) likewise.
  Harder (more similar) negatives are drawn more often.

  A row with nothing to draw (a batch of one, a batch of one item, or an
  invalid row) gets its own index. Since a drawn negative is never the row's
  own index, the caller masks those ITM pairs with
  `valid & (neg_index != arange(B))`.

  Args:
    sim_i2t: [B, B] item->text similarities (`itc_loss` output).
    sim_t2i: [B, B] text->item similarities.
    rng: PRNG key; the result is deterministic for a given key.
    item_ids: optional [B] item ids.
    valid: optional [B] bool.

  Returns:
    (neg_text_index [B], neg_item_index [B]), int32.
  """
  b = sim_i2t.shape[0]
  valid = _valid_mask(valid, b)
  allowed = ~_positive_mask(b, item_ids) & valid[None, :] & valid[:, None]
  rng_text, rng_item = jax.random.split(rng)
  neg_text = _sample_negatives(sim_i2t, allowed, rng_text)
  neg_item = _sample_negatives(sim_t2i, allowed.T, rng_item)
  return neg_text, neg_item


def itm_loss(pos_logits: jax.Array,
             neg_logits: jax.Array,
             *,
             valid: Optional[jax.Array] = None,
             neg_valid: Optional[jax.Array] = None) -> jax.Array:
  """Binary item-text matching CE: matched pairs are class 1, others class 0.

  Args:
    pos_logits: [B, 2] logits of matched pairs.
    neg_logits: [N, 2] logits of mismatched pairs (BLIP-2: N = 2B, each item
      with a hard negative text and each text with a hard negative item).
    valid: optional [B] bool over matched pairs.
    neg_valid: optional [N] bool over mismatched pairs.

  Returns:
    Scalar mean CE over all counted pairs (0 if none counts).
  """
  pos_lp = jax.nn.log_softmax(pos_logits.astype(jnp.float32), -1)
  neg_lp = jax.nn.log_softmax(neg_logits.astype(jnp.float32), -1)
  ce = jnp.concatenate([-pos_lp[:, 1], -neg_lp[:, 0]])
  weights = jnp.concatenate([_valid_mask(valid, pos_logits.shape[0]),
                             _valid_mask(neg_valid, neg_logits.shape[0])])
  return _masked_mean(ce, weights)


def token_lm_loss(logits: jax.Array,
                  targets: jax.Array,
                  weights: Optional[jax.Array] = None,
                  *,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Item-grounded generation loss: mean token CE over `weights`.

  Uses the trainer's T5X cross entropy, so with label smoothing the entropy
  constant is subtracted (a perfect prediction scores 0).

  Args:
    logits: [..., L, V].
    targets: [..., L] int ids.
    weights: optional [..., L]; defaults to `targets > 0` (0 is padding).
    label_smoothing: as in `losses.compute_weighted_cross_entropy`.

  Returns:
    Scalar sum(CE * weights) / sum(weights) (0 if the weights sum to 0).
  """
  if weights is None:
    weights = targets > 0
  weights = jnp.asarray(weights).astype(jnp.float32)
  loss_sum, _, weight_sum = losses.compute_weighted_cross_entropy(
      logits.astype(jnp.float32), targets, weights,
      label_smoothing=label_smoothing)
  return loss_sum / jnp.where(weight_sum > 0, weight_sum, 1.0)
