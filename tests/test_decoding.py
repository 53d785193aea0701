"""recjax.infer.decoding: greedy, sampling and beam search against brute force."""
from __future__ import annotations

import functools
import itertools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recjax.infer import decoding
from recjax.infer import predict
from recjax.infer import trie as trie_lib
from recjax.models import t5
from recjax.train import model_api
from recjax.train import test_utils


def tiny_model(vocab_size, seed=0):
  """A 1+1-layer float32 T5 with random (not `init`-compiled) params."""
  cfg = t5.T5Config(vocab_size=vocab_size, emb_dim=16, num_heads=2,
                    head_dim=8, mlp_dim=32, num_encoder_layers=1,
                    num_decoder_layers=1, dtype='float32')
  # Larger logits than 1/sqrt(fan_in) so sequences are far from uniform.
  params = test_utils.random_t5_params(cfg, seed, logits_scale=3.0)
  return model_api.EncoderDecoderModel(t5.Transformer(cfg)), params


def _enc(vocab_size, batch=3, length=7, seed=0):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab_size, size=(batch, length)).astype(np.int32)
  enc[1, 4:] = 0  # padding in one example
  return jnp.asarray(enc)


_JITTED = {}


def _predict(model, **static):
  """One jitted predict_batch per (model, static args), shared by the tests."""
  key = ('predict', id(model), tuple(sorted(static.items())))
  if key not in _JITTED:
    _JITTED[key] = jax.jit(functools.partial(predict.predict_batch, model,
                                             **static))
  return _JITTED[key]


def _jit_model_fn(fn, model):
  key = (fn.__name__, id(model))
  if key not in _JITTED:
    _JITTED[key] = jax.jit(functools.partial(fn, model))
  return _JITTED[key]


@pytest.fixture(scope='module')
def model32():
  return tiny_model(32, seed=0)


def test_greedy_equals_argmax_with_full_recomputation(model32):
  model, params = model32
  enc = _enc(32, batch=8, seed=5)
  length = 6
  tokens, log_probs = _predict(model, decode_method='greedy',
                               max_decode_length=length)(
                                   params, {'encoder_input_tokens': enc})
  assert tokens.shape == (8, 1, length) and log_probs.shape == (8, 1)
  # Reference: no cache, the whole prefix re-run teacher-forced every step.
  fwd = jax.jit(lambda dec: model.module.apply(
      {'params': params}, enc, dec, jnp.ones_like(dec), enable_dropout=False))
  dec = np.zeros((8, length), np.int32)
  ref = np.zeros((8, length), np.int32)
  ref_lp = np.zeros(8)
  ended = np.zeros(8, bool)
  for i in range(length):
    lp = np.asarray(jax.nn.log_softmax(fwd(jnp.asarray(dec))[:, i]))
    tok = lp.argmax(-1)
    ref[:, i] = np.where(ended, 0, tok)
    ref_lp += np.where(ended, 0, lp[np.arange(8), tok])
    ended |= tok == 1
    if i + 1 < length:
      dec[:, i + 1] = ref[:, i]
  np.testing.assert_array_equal(np.asarray(tokens[:, 0]), ref)
  np.testing.assert_allclose(np.asarray(log_probs[:, 0]), ref_lp, atol=1e-4)
  # The EOS bookkeeping was exercised: some row ended early.
  assert (ref == 1).any() and (ref[:, -1] == 0).any()


def test_low_temperature_sampling_equals_greedy(model32):
  model, params = model32
  batch = {'encoder_input_tokens': _enc(32, batch=8, seed=5)}
  greedy = _predict(model, decode_method='greedy', max_decode_length=6)(
      params, batch)
  cold = _predict(model, decode_method='sample', temperature=1e-4,
                  num_decodes=2, max_decode_length=6)(
                      params, batch, rng=jax.random.PRNGKey(3))
  for d in range(2):
    np.testing.assert_array_equal(np.asarray(cold[0][:, d]),
                                  np.asarray(greedy[0][:, 0]))
    np.testing.assert_allclose(np.asarray(cold[1][:, d]),
                               np.asarray(greedy[1][:, 0]), atol=1e-4)


def test_sampling_is_deterministic_per_rng_and_sorted(model32):
  model, params = model32
  batch = {'encoder_input_tokens': _enc(32)}
  fn = _predict(model, decode_method='sample', num_decodes=8,
                max_decode_length=5)
  a = fn(params, batch, rng=jax.random.PRNGKey(1))
  b = fn(params, batch, rng=jax.random.PRNGKey(1))
  c = fn(params, batch, rng=jax.random.PRNGKey(2))
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
  lp = np.asarray(a[1])
  assert (np.diff(lp, axis=1) <= 0).all()  # best first
  # The reported log-probs are the model's for the sampled sequences.
  seqs = np.asarray(a[0]).reshape(-1, 5)
  weights = np.zeros_like(seqs, np.float32)
  for r, row in enumerate(seqs):
    end = list(row).index(1) + 1 if 1 in row else 5
    weights[r, :end] = 1
  scored = _jit_model_fn(predict.score_batch, model)(params, {
      'encoder_input_tokens': jnp.repeat(batch['encoder_input_tokens'], 8, 0),
      'decoder_input_tokens': jnp.pad(seqs[:, :-1], ((0, 0), (1, 0))),
      'decoder_target_tokens': seqs, 'decoder_loss_weights': weights})
  np.testing.assert_allclose(np.asarray(scored), lp.reshape(-1), atol=1e-4)


# --- sampling distribution on a hand-made model ----------------------------
TABLE = np.log(np.array([
    [0.05, 0.10, 0.50, 0.35],   # after start (0)
    [0.25, 0.25, 0.25, 0.25],   # after EOS (unused)
    [0.10, 0.60, 0.20, 0.10],   # after 2
    [0.40, 0.30, 0.10, 0.20],   # after 3
], np.float32))


def _table_step(tok, cache):
  """Logits depend only on the current token; the cache counts steps."""
  return jnp.asarray(TABLE)[tok[:, 0]], cache + 1


def _chi2(counts, probs):
  expected = probs * counts.sum()
  return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize('temperature,topk,per_example', [
    (1.0, 0, False), (0.5, 0, False), (1.0, 2, False), (1.0, 0, True),
    (1.0, 2, True)])
def test_sampling_draws_from_the_right_distribution(temperature, topk,
                                                    per_example):
  n = 4000
  sample = jax.jit(functools.partial(
      decoding.temperature_sample, tokens_to_logits=_table_step, batch_size=2,
      max_decode_len=2, temperature=temperature, topk=topk,
      num_decodes=n // 2))
  rng = jax.random.PRNGKey(0)
  seqs, log_probs = sample(jnp.zeros((2,), jnp.int32), rng=(
      jax.random.split(rng, 2) if per_example else rng))
  seqs = np.asarray(seqs).reshape(n, 2)

  def expected(row):
    p = np.exp(TABLE[row].astype(np.float64) / temperature)
    if topk:
      p[np.argsort(-p)[topk:]] = 0
    return p / p.sum()

  first = np.bincount(seqs[:, 0], minlength=4)
  p0 = expected(0)
  keep = p0 > 0
  assert (first[~keep] == 0).all()
  # chi-square, df <= 3: 16.27 is the 0.1% critical value.
  assert _chi2(first[keep], p0[keep]) < 16.27
  for prev in (2, 3):
    second = np.bincount(seqs[seqs[:, 0] == prev, 1], minlength=4)
    p1 = expected(prev)
    keep = p1 > 0
    assert (second[~keep] == 0).all()
    assert _chi2(second[keep], p1[keep]) < 16.27
  # Sequences ending in EOS are zero-padded; log-probs are at temperature 1.
  assert (seqs[seqs[:, 0] == 1, 1] == 0).all()
  lp = TABLE[0, seqs[:, 0]] + np.where(seqs[:, 0] == 1, 0,
                                       TABLE[seqs[:, 0], seqs[:, 1]])
  np.testing.assert_allclose(np.asarray(log_probs).reshape(n), lp, atol=1e-5)


@pytest.mark.parametrize('make_key', [jax.random.PRNGKey, jax.random.key])
def test_per_example_keys_make_samples_independent_of_batchmates(make_key):
  keys = jax.random.split(make_key(3), 3)

  def sample(keys):
    seqs, log_probs = decoding.temperature_sample(
        jnp.zeros((len(keys),), jnp.int32), _table_step,
        batch_size=len(keys), max_decode_len=2, rng=keys, num_decodes=50)
    return np.asarray(seqs), np.asarray(log_probs)

  seqs, log_probs = sample(keys)
  alone, alone_lp = sample(keys[2:])
  np.testing.assert_array_equal(alone[0], seqs[2])
  np.testing.assert_array_equal(alone_lp[0], log_probs[2])
  # Other keys, other samples; and the decodes of one example differ.
  assert not np.array_equal(seqs[0], seqs[1])
  assert len({tuple(s) for s in seqs[0]}) > 1
  with pytest.raises(ValueError, match='3 keys for batch_size 2'):
    decoding.temperature_sample(
        jnp.zeros((2,), jnp.int32), _table_step, batch_size=2,
        max_decode_len=2, rng=keys)


@flax.struct.dataclass
class _Forbid:
  """A minimal constraint (a leafless pytree): never token `banned`."""
  banned: int = flax.struct.field(pytree_node=False)
  vocab: int = flax.struct.field(pytree_node=False)

  def init_state(self, n):
    return jnp.zeros((n,), jnp.int32)

  def allowed(self, state):
    return jnp.broadcast_to(jnp.arange(self.vocab) != self.banned,
                            (state.shape[0], self.vocab))

  def advance(self, state, tokens):
    return state


def test_sampling_respects_a_constraint():
  seqs, _ = decoding.temperature_sample(
      jnp.zeros((1,), jnp.int32), _table_step, batch_size=1, max_decode_len=2,
      rng=jax.random.PRNGKey(0), num_decodes=500, constraint=_Forbid(2, 4))
  seqs = np.asarray(seqs)
  assert not (seqs == 2).any() and (seqs[..., 0] == 3).any()


# --- beam search ------------------------------------------------------------
def _score_sequences(model, params, enc, seqs):
  """Model log-likelihood of full sequences [S, T] (EOS included if any)."""
  seqs = np.asarray(seqs, np.int32)
  weights = np.zeros(seqs.shape, np.float32)
  for r, row in enumerate(seqs):
    end = list(row).index(1) + 1 if 1 in row else len(row)
    weights[r, :end] = 1
  return np.asarray(_jit_model_fn(predict.score_batch, model)(params, {
      'encoder_input_tokens': jnp.repeat(enc, len(seqs), axis=0),
      'decoder_input_tokens': jnp.pad(seqs[:, :-1], ((0, 0), (1, 0))),
      'decoder_target_tokens': jnp.asarray(seqs),
      'decoder_loss_weights': jnp.asarray(weights)}))


def test_beam_search_equals_brute_force_enumeration():
  """V=5 without pad, 3 steps: 13 finished + 27 truncated, 40 beams hold all.

  Token 0 (pad) is forbidden: teacher forcing masks pad targets, so sequences
  containing it would score differently from how they were decoded.
  """
  model, params = tiny_model(5, seed=1)
  enc = _enc(5, batch=2, length=5, seed=1)
  length, beams, alpha = 3, 40, 0.6
  tokens, scores = _predict(model, decode_method='beam', num_decodes=beams,
                            max_decode_length=length, alpha=alpha)(
                                params, {'encoder_input_tokens': enc},
                                constraint=_Forbid(0, 5))
  non_eos = (2, 3, 4)
  finished = [p + (1,) + (0,) * (length - 1 - len(p))
              for n in range(length) for p in itertools.product(non_eos,
                                                                repeat=n)]
  truncated = list(itertools.product(non_eos, repeat=length))
  assert len(finished) + len(truncated) == beams
  for b in range(2):
    lp = _score_sequences(model, params, enc[b:b + 1], finished + truncated)
    lens = np.array([list(s).index(1) + 1 for s in finished])
    s_f = lp[:len(finished)] / ((5 + lens) / 6) ** alpha
    s_t = lp[len(finished):] / ((5 + length) / 6) ** alpha
    of, ot = np.argsort(-s_f), np.argsort(-s_t)
    want_seqs = np.array([finished[i] for i in of] + [truncated[i] for i in ot])
    want_scores = np.concatenate([s_f[of], s_t[ot]])
    np.testing.assert_array_equal(np.asarray(tokens[b]), want_seqs)
    np.testing.assert_allclose(np.asarray(scores[b]), want_scores, atol=1e-4)


def test_one_beam_without_length_penalty_is_greedy(model32):
  """num_beams=1, alpha=0 follows the argmax path; it may only stop earlier,
  on an EOS it saw on the way, when that scores higher than the greedy end."""
  model, params = model32
  enc = _enc(32, batch=8, seed=5)
  batch = {'encoder_input_tokens': enc}
  g_tok, g_lp = _predict(model, decode_method='greedy', max_decode_length=6)(
      params, batch)
  b_tok, b_sc = _predict(model, decode_method='beam', num_decodes=1, alpha=0.0,
                         max_decode_length=6)(params, batch)
  same = 0
  for r in range(8):
    g, b = np.asarray(g_tok[r, 0]), np.asarray(b_tok[r, 0])
    if np.array_equal(g, b):
      same += 1
      np.testing.assert_allclose(float(b_sc[r, 0]), float(g_lp[r, 0]),
                                 atol=1e-5)
    else:
      end = list(b).index(1)
      np.testing.assert_array_equal(b[:end], g[:end])
      # Finished beams outrank alive ones: either greedy never ended, or it
      # ended later with a lower log-probability.
      assert 1 not in g or float(b_sc[r, 0]) > float(g_lp[r, 0])
      np.testing.assert_allclose(
          _score_sequences(model, params, enc[r:r + 1], [b]),
          [float(b_sc[r, 0])], atol=1e-4)
  assert same >= 4


CATALOGUE = [[5, 9], [5, 9, 12], [5, 20, 3], [7], [7, 7, 7, 7], [13, 2],
             [31, 30, 29], [5, 9, 12, 4], [18, 6], [2, 3, 4]]


def check_constrained_beams_equal_brute_force(model, params, prompts,
                                              vocab_size):
  """12 beams >= 10 items: the ranked items and their scores are exactly the
  length-penalised likelihoods of every catalogue item (`score_candidates`),
  and the 2 extra beams are impossible (any model architecture)."""
  trie = trie_lib.CatalogueTrie.build(CATALOGUE, vocab_size=vocab_size,
                                      max_children=2)  # root is 'wide'
  length, alpha, beams = 6, 0.6, 12
  fn = _predict(model, decode_method='beam', num_decodes=beams,
                max_decode_length=length, alpha=alpha)
  tokens, scores = fn(params, {'encoder_input_tokens': prompts},
                      constraint=trie.constraint())
  items = trie.items_of(np.asarray(tokens))
  b = prompts.shape[0]
  cands = np.zeros((b, len(CATALOGUE), length), np.int32)
  for c, item in enumerate(CATALOGUE):
    cands[:, c, :len(item) + 1] = item + [1]
  lp = np.asarray(_jit_model_fn(predict.score_candidates, model)(
      params, prompts, jnp.asarray(cands)))
  lens = np.array([len(i) + 1 for i in CATALOGUE])
  want = lp / ((5 + lens) / 6) ** alpha
  for r in range(b):
    order = np.argsort(-want[r])
    np.testing.assert_array_equal(items[r, :len(CATALOGUE)], order)
    np.testing.assert_allclose(np.asarray(scores[r, :len(CATALOGUE)]),
                               want[r, order], atol=1e-4)
    # More beams than items: the rest are impossible, never NaN.
    assert (np.asarray(scores[r, len(CATALOGUE):]) < -1e6).all()


def test_constrained_beam_search_equals_brute_force_over_catalogue(model32):
  model, params = model32
  check_constrained_beams_equal_brute_force(model, params, _enc(32, batch=2),
                                            32)


def test_constrained_beam_search_with_few_beams_returns_items(model32):
  """3 beams < 10 items: distinct real items, each with its own score (the
  length-penalised log-probability score_candidates gives that item)."""
  model, params = model32
  trie = trie_lib.CatalogueTrie.build(CATALOGUE, vocab_size=32)
  enc = _enc(32, batch=3)
  length, alpha = 6, 0.6
  tokens, scores = _predict(model, decode_method='beam', num_decodes=3,
                            max_decode_length=length, alpha=alpha)(
                                params, {'encoder_input_tokens': enc},
                                constraint=trie.constraint())
  items = trie.items_of(np.asarray(tokens))
  assert (items >= 0).all()
  assert all(len(set(row)) == 3 for row in items.tolist())
  scores = np.asarray(scores)
  assert (np.diff(scores, axis=1) <= 0).all()
  cands = np.zeros((3, 3, length), np.int32)
  for b, row in enumerate(items.tolist()):
    for j, item in enumerate(row):
      cands[b, j, :len(CATALOGUE[item]) + 1] = CATALOGUE[item] + [1]
  lp = np.asarray(_jit_model_fn(predict.score_candidates, model)(
      params, enc, jnp.asarray(cands)))
  lens = np.array([[len(CATALOGUE[i]) + 1 for i in row] for row in items])
  np.testing.assert_allclose(scores, lp / ((5 + lens) / 6) ** alpha,
                             atol=1e-4)
  # Sampling under the same constraint also only yields items.
  s_tok, _ = _predict(model, decode_method='sample', num_decodes=16,
                      max_decode_length=6)(
                          params, {'encoder_input_tokens': enc},
                          rng=jax.random.PRNGKey(0),
                          constraint=trie.constraint())
  assert (trie.items_of(np.asarray(s_tok)) >= 0).all()
