"""Model-independent autoregressive decoding: temperature sampling and beam search.

A compact re-design of T5X's `t5x/decoding.py`. Both decoders only see a
callback

  tokens_to_logits(cur_token [N, 1] int32, cache) -> (logits [N, V] float32,
                                                      new_cache)

so they know nothing about the network, and run entirely inside
`lax.while_loop` with fixed shapes (jittable, shardable). Token 0 is the
decoder's start token (and padding), `eos_id` ends a sequence. A model whose
first logits are already known (a decoder-only LM that prefilled its prompt)
passes them as `initial_logits` [batch, V]; the first step then uses them
instead of calling `tokens_to_logits`.

Constrained decoding goes through a *constraint*: any pytree with

  init_state(n) -> int32 [n]
  allowed(state [n]) -> bool [n, V]
  advance(state [n], tokens [n]) -> int32 [n]

Disallowed tokens get `NEG_INF` log-probability before sampling / top-k. The
log-probabilities that are accumulated are the model's *unrenormalised* ones
(log_softmax over the full vocabulary, then masked), so constrained beam scores
equal the model's likelihood of the returned sequences, the number a
brute-force scorer of every allowed sequence would compute.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any
TokensToLogits = Callable[[Array, PyTree], Tuple[Array, PyTree]]

# Finite "minus infinity" (as T5X): -inf arithmetic would produce NaNs in
# differences; anything below NEG_INF / 2 is treated as impossible.
NEG_INF = -1.0e7
_DEAD = NEG_INF / 2


def brevity_penalty(alpha: float, length: Array) -> Array:
  """T5X / GNMT length penalty ((5 + length) / 6) ** alpha."""
  return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


def _repeat_cache(cache: PyTree, batch_size: int, n: int) -> PyTree:
  """Repeats every leaf with leading dim `batch_size` n times (row-major)."""
  if n == 1:
    return cache

  def one(x):
    if jnp.ndim(x) >= 1 and x.shape[0] == batch_size:
      return jnp.repeat(x, n, axis=0)
    return x
  return jax.tree_util.tree_map(one, cache)


def _gather_beams(tree: PyTree, src_beam: Array) -> PyTree:
  """Row b * K + j of every leaf with leading dim B * K becomes row
  b * K + src_beam[b, j]; other leaves (scalars) are untouched.

  The gather is batched over examples: a gather by global row numbers
  (x[rows]) cannot be split over the data axis, so XLA would replicate the
  whole batch's cache on every chip (FLAN-T5-base beam search on v5e-256,
  one prompt a chip: a 6.28 GiB peak a chip, 1.47 GiB batched).
  """
  b, k = src_beam.shape

  def one(x):
    if jnp.ndim(x) >= 1 and x.shape[0] == b * k:
      y = x.reshape((b, k) + x.shape[1:])
      return jax.vmap(lambda rows, i: rows[i])(y, src_beam).reshape(x.shape)
    return x
  return jax.tree_util.tree_map(one, tree)


def _masked_log_probs(logits: Array, constraint: Any, cstate: Optional[Array]
                     ) -> Array:
  """log_softmax over the full vocabulary, disallowed tokens set to NEG_INF."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  if constraint is None:
    return log_probs
  mask = constraint.allowed(cstate)
  vocab = log_probs.shape[-1]
  if mask.shape[-1] < vocab:  # model vocab padded beyond the constraint's
    mask = jnp.pad(mask, ((0, 0), (0, vocab - mask.shape[-1])))
  elif mask.shape[-1] > vocab:
    raise ValueError(f'Constraint vocabulary {mask.shape[-1]} is larger than '
                     f'the model\'s {vocab}.')
  return jnp.where(mask, log_probs, NEG_INF)


def _step_logits(tokens_to_logits: TokensToLogits, cur: Array, cache: PyTree,
                 i: Array, initial_logits: Optional[Array], repeats: int
                ) -> Tuple[Array, PyTree]:
  """The model step, or at i == 0 the given `initial_logits` (repeated for
  each decode of an example, the cache untouched)."""
  if initial_logits is None:
    return tokens_to_logits(cur[:, None], cache)
  first = jnp.repeat(initial_logits.astype(jnp.float32), repeats, axis=0)
  return lax.cond(i == 0, lambda: (first, cache),
                  lambda: tokens_to_logits(cur[:, None], cache))


def _is_key_batch(rng: Array) -> bool:
  """True for one PRNG key per example, False for a single key."""
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return rng.ndim == 1
  return rng.ndim == 2


def temperature_sample(cache: PyTree, tokens_to_logits: TokensToLogits, *,
                       batch_size: int, max_decode_len: int, eos_id: int = 1,
                       rng: Optional[Array] = None, temperature: float = 1.0,
                       topk: int = 0, num_decodes: int = 1,
                       constraint: Any = None,
                       initial_logits: Optional[Array] = None
                      ) -> Tuple[Array, Array]:
  """Samples (or greedily decodes) `num_decodes` sequences per example.

  Args:
    cache: decoding cache for batch `batch_size`; leaves with that leading dim
      are repeated to batch_size * num_decodes (example-major), scalars kept.
    tokens_to_logits: the model step (see module docstring).
    batch_size: B.
    max_decode_len: number of generated positions.
    eos_id: ends a sequence; positions after it are 0.
    rng: PRNG key; unused (may be None) when temperature == 0. Either one key
      for the batch, or one key per example ([B, 2] raw keys, [B] typed
      ones): then an example's samples depend only on its key and the model,
      not on which other examples share its batch (so sharded inference
      gives the same samples for any number of shards).
    temperature: 0 means greedy argmax; otherwise logits / temperature.
    topk: if > 0, sample only among the k most likely (allowed) tokens.
    num_decodes: samples per example.
    constraint: optional constraint pytree (module docstring).
    initial_logits: optional [B, V] logits of the first step (module doc).

  Returns:
    (sequences int32 [B, num_decodes, max_decode_len] without the start token,
     log_probs float32 [B, num_decodes]): summed log-probabilities of the
    sampled tokens under the model at temperature 1 (up to and including EOS).
  """
  n = batch_size * num_decodes
  greedy = isinstance(temperature, (int, float)) and temperature == 0
  if rng is None:
    if not greedy:
      raise ValueError('temperature_sample needs an rng unless temperature=0.')
    rng = jax.random.PRNGKey(0)
  row_keys = None
  if not greedy and _is_key_batch(rng):
    if rng.shape[0] != batch_size:
      raise ValueError(f'rng holds {rng.shape[0]} keys for batch_size '
                       f'{batch_size}; pass one key or one per example.')
    # Example-major rows, as the cache; decode d of an example folds in d.
    row_keys = jax.vmap(jax.random.fold_in)(
        jnp.repeat(rng, num_decodes, axis=0),
        jnp.tile(jnp.arange(num_decodes, dtype=jnp.uint32), batch_size))
  cache = _repeat_cache(cache, batch_size, num_decodes)
  cstate = (constraint.init_state(n) if constraint is not None else
            jnp.zeros((n,), jnp.int32))

  def cond(state):
    i, _, _, _, ended, _, _ = state
    return (i < max_decode_len) & ~jnp.all(ended)

  def body(state):
    i, cur, seqs, log_prob, ended, cache, cstate = state
    logits, cache = _step_logits(tokens_to_logits, cur, cache, i,
                                 initial_logits, num_decodes)
    log_probs = _masked_log_probs(logits, constraint, cstate)
    if greedy:
      nxt = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    else:
      if row_keys is None:
        key = jax.random.fold_in(rng, i)
        categorical = lambda x: jax.random.categorical(key, x, axis=-1)
      else:
        keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(row_keys)
        categorical = lambda x: jax.vmap(jax.random.categorical)(keys, x)
      # Masked logits: log_probs differ from logits by a per-row constant.
      scaled = log_probs / jnp.maximum(jnp.asarray(temperature, jnp.float32),
                                       1e-6)
      if topk:
        top_vals, top_idx = lax.top_k(scaled, topk)
        pick = categorical(top_vals)
        sampled = jnp.take_along_axis(top_idx, pick[:, None], axis=-1)[:, 0]
      else:
        sampled = categorical(scaled)
      sampled = sampled.astype(jnp.int32)
      if isinstance(temperature, (int, float)):
        nxt = sampled
      else:  # traced temperature: 0 still means greedy
        nxt = jnp.where(temperature == 0,
                        jnp.argmax(log_probs, -1).astype(jnp.int32), sampled)
    tok_lp = jnp.take_along_axis(log_probs, nxt[:, None], axis=-1)[:, 0]
    nxt = jnp.where(ended, 0, nxt)
    log_prob = log_prob + jnp.where(ended, 0.0, tok_lp)
    seqs = lax.dynamic_update_slice(seqs, nxt[:, None], (0, i))
    if constraint is not None:
      cstate = jnp.where(ended, cstate, constraint.advance(cstate, nxt))
    ended = ended | (nxt == eos_id)
    return i + 1, nxt, seqs, log_prob, ended, cache, cstate

  init = (jnp.asarray(0, jnp.int32), jnp.zeros((n,), jnp.int32),
          jnp.zeros((n, max_decode_len), jnp.int32),
          jnp.zeros((n,), jnp.float32), jnp.zeros((n,), bool), cache, cstate)
  _, _, seqs, log_prob, _, _, _ = lax.while_loop(cond, body, init)
  return (seqs.reshape(batch_size, num_decodes, max_decode_len),
          log_prob.reshape(batch_size, num_decodes))


def beam_search(cache: PyTree, tokens_to_logits: TokensToLogits, *,
                batch_size: int, num_beams: int, max_decode_len: int,
                eos_id: int = 1, alpha: float = 0.6,
                constraint: Any = None,
                initial_logits: Optional[Array] = None
               ) -> Tuple[Array, Array]:
  """T5X-style beam search with alive and finished sets.

  Each step extends the `num_beams` alive beams by every token, keeps the top
  2 * num_beams candidates (enough that num_beams of them do not end), and
  moves candidates ending in EOS into the finished set with score
  log_prob / ((5 + length) / 6) ** alpha, length counting EOS. The search
  stops when no alive beam can still beat the worst finished one.

  Args:
    cache: decoding cache for batch `batch_size`; leaves with that leading dim
      are repeated to batch_size * num_beams; every leaf whose leading dim is
      batch_size * num_beams is reordered by gathering beam indices each step.
    tokens_to_logits: the model step (see module docstring).
    batch_size: B.
    num_beams: beams per example (also the number of returned sequences).
    max_decode_len: number of generated positions.
    eos_id: ends a sequence.
    alpha: length-penalty exponent (0 = raw log-probabilities).
    constraint: optional constraint pytree (module docstring).
    initial_logits: optional [B, V] logits of the first step (module doc).

  Returns:
    (sequences int32 [B, num_beams, max_decode_len], scores float32
     [B, num_beams]), best first. Finished beams come first; if fewer than
    num_beams finish, the remaining slots hold the best alive (truncated,
    EOS-less) beams scored with the penalty at max_decode_len. Impossible
    beams (e.g. a constraint with fewer sequences than beams) score about
    NEG_INF, never NaN.
  """
  b, k = batch_size, num_beams
  n = b * k
  cache = _repeat_cache(cache, b, k)
  cstate = (constraint.init_state(n) if constraint is not None else
            jnp.zeros((n,), jnp.int32))
  max_penalty = brevity_penalty(alpha, max_decode_len)

  def cond(state):
    i, _, live_lp, _, fin_scores, fin_flags, _, _ = state
    # Best possible final score of an alive beam: log-probs only fall, and for
    # alpha >= 0 the largest penalty (at max length) helps them most.
    best_live = live_lp[:, 0] / max_penalty
    worst_fin = jnp.min(jnp.where(fin_flags, fin_scores, NEG_INF), axis=1)
    done = jnp.all(worst_fin > best_live)
    return (i < max_decode_len) & ~done

  def body(state):
    i, live_seqs, live_lp, fin_seqs, fin_scores, fin_flags, cache, cstate = (
        state)
    prev = lax.dynamic_index_in_dim(live_seqs, jnp.maximum(i - 1, 0), axis=2,
                                    keepdims=False)
    cur = jnp.where(i == 0, 0, prev).reshape(n)
    logits, cache = _step_logits(tokens_to_logits, cur, cache, i,
                                 initial_logits, k)
    vocab = logits.shape[-1]
    log_probs = _masked_log_probs(logits, constraint, cstate)
    cand = (live_lp[:, :, None] + log_probs.reshape(b, k, vocab)).reshape(
        b, k * vocab)
    top_lp, top_idx = lax.top_k(cand, min(2 * k, k * vocab))  # [B, 2K]
    top_beam = top_idx // vocab
    top_tok = (top_idx % vocab).astype(jnp.int32)
    top_seqs = jnp.take_along_axis(live_seqs, top_beam[:, :, None], axis=1)
    top_seqs = lax.dynamic_update_slice(top_seqs, top_tok[:, :, None],
                                        (0, 0, i))
    valid = top_lp > _DEAD
    is_eos = top_tok == eos_id

    # Alive: best K candidates that did not end (dead ones sink to NEG_INF).
    alive_lp = jnp.where(is_eos | ~valid, NEG_INF, top_lp)
    new_live_lp, alive_pos = lax.top_k(alive_lp, k)
    new_live_seqs = jnp.take_along_axis(top_seqs, alive_pos[:, :, None],
                                        axis=1)
    src_beam = jnp.take_along_axis(top_beam, alive_pos, axis=1)
    cache = _gather_beams(cache, src_beam)
    if constraint is not None:
      new_tok = jnp.take_along_axis(top_tok, alive_pos, axis=1).reshape(n)
      cstate = constraint.advance(_gather_beams(cstate, src_beam), new_tok)

    # Finished: merge K old and 2K new by score, keep the best K.
    new_fin = is_eos & valid
    new_scores = jnp.where(new_fin, top_lp / brevity_penalty(alpha, i + 1),
                           NEG_INF)
    all_seqs = jnp.concatenate([fin_seqs, top_seqs], axis=1)
    all_scores = jnp.concatenate([fin_scores, new_scores], axis=1)
    all_flags = jnp.concatenate([fin_flags, new_fin], axis=1)
    # Flagged beams strictly first (a flagged score is > NEG_INF / 2).
    rank = jnp.where(all_flags, all_scores, 2 * NEG_INF)
    _, fin_pos = lax.top_k(rank, k)
    fin_seqs = jnp.take_along_axis(all_seqs, fin_pos[:, :, None], axis=1)
    fin_scores = jnp.take_along_axis(all_scores, fin_pos, axis=1)
    fin_flags = jnp.take_along_axis(all_flags, fin_pos, axis=1)
    return (i + 1, new_live_seqs, new_live_lp, fin_seqs, fin_scores, fin_flags,
            cache, cstate)

  live_lp = jnp.tile(
      jnp.concatenate([jnp.zeros((1,), jnp.float32),
                       jnp.full((k - 1,), NEG_INF, jnp.float32)])[None],
      (b, 1))
  init = (jnp.asarray(0, jnp.int32),
          jnp.zeros((b, k, max_decode_len), jnp.int32), live_lp,
          jnp.zeros((b, k, max_decode_len), jnp.int32),
          jnp.full((b, k), NEG_INF, jnp.float32), jnp.zeros((b, k), bool),
          cache, cstate)
  (_, live_seqs, live_lp, fin_seqs, fin_scores, fin_flags, _, _) = (
      lax.while_loop(cond, body, init))

  # Fill unfinished slots (flags are sorted first) with the best alive beams.
  num_fin = jnp.sum(fin_flags, axis=1, keepdims=True)  # [B, 1]
  slot = jnp.arange(k)[None, :]
  from_live = jnp.clip(slot - num_fin, 0, k - 1)
  live_scores = jnp.maximum(live_lp / max_penalty, NEG_INF)
  seqs = jnp.where(fin_flags[:, :, None], fin_seqs,
                   jnp.take_along_axis(live_seqs, from_live[:, :, None],
                                       axis=1))
  scores = jnp.where(fin_flags, fin_scores,
                     jnp.take_along_axis(live_scores, from_live, axis=1))
  return seqs, scores
