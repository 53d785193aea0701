"""Decoder-only inference (recjax.infer.predict): prefill + KV-cache decoding,
scoring, and their agreement with the training loss and with brute force."""
from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from recjax.infer import predict
from recjax.models import decoder_only
from recjax.train import model_api
from recjax.train import partitioning
import test_decoding

V = 32
CFG = decoder_only.DecoderOnlyConfig(
    vocab_size=V, emb_dim=16, num_heads=4, num_kv_heads=2, head_dim=8,
    num_layers=2, mlp_dim=32, dtype='float32')
CATALOGUE = test_decoding.CATALOGUE


def _params(cfg=CFG, seed=0, scale=3.0):
  """Random params with sharper logits than the init, so sequences differ."""
  params = flax.linen.unbox(decoder_only.init_variables(
      cfg, jax.random.PRNGKey(seed))['params'])
  params = jax.tree_util.tree_map(np.asarray, params)
  if 'logits_dense' in params['decoder']:
    params['decoder']['logits_dense']['kernel'] = (
        params['decoder']['logits_dense']['kernel'] * scale)
  return params


def _model(bidirectional=False, bos_id=None, cfg=CFG):
  return model_api.DecoderOnlyModel(
      decoder_only.DecoderOnlyTransformer(cfg),
      inputs_bidirectional_attention=bidirectional, bos_id=bos_id)


def _prompts(batch=3, length=7, seed=0):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, V, size=(batch, length)).astype(np.int32)
  enc[1, 4:] = 0          # a short prompt beside long ones
  if batch > 2:
    enc[2, 1:] = 0        # one token only
  return enc


_JITTED = {}


def _jit(fn, model, **static):
  key = (fn.__name__, id(model), tuple(sorted(static.items())))
  if key not in _JITTED:
    _JITTED[key] = jax.jit(functools.partial(fn, model, **static))
  return _JITTED[key]


@pytest.fixture(scope='module')
def params():
  return _params()


def test_left_align():
  tokens, valid, positions = predict.left_align(
      jnp.asarray([[4, 5, 6], [7, 0, 0]]), start_id=9)
  np.testing.assert_array_equal(tokens, [[9, 4, 5, 6], [0, 0, 9, 7]])
  np.testing.assert_array_equal(valid, [[1, 1, 1, 1], [0, 0, 1, 1]])
  np.testing.assert_array_equal(positions, [[0, 1, 2, 3], [0, 0, 0, 1]])


def _prefix_lm_batch(inputs, targets):
  """One unpacked PrefixLMFeatureConverter example per row, built by SeqIO."""
  ds = seqio.PrefixLMFeatureConverter(pack=False)(
      _tf_dataset(inputs, targets),
      {'inputs': inputs.shape[1], 'targets': targets.shape[1]})
  rows = list(ds.as_numpy_iterator())
  return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


def _tf_dataset(inputs, targets):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  strip = lambda row: row[row > 0]
  return tf.data.Dataset.from_generator(
      lambda: ({'inputs': strip(i), 'targets': strip(t)}
               for i, t in zip(inputs, targets)),
      output_signature={'inputs': tf.TensorSpec([None], tf.int32),
                        'targets': tf.TensorSpec([None], tf.int32)})


@pytest.mark.parametrize('bidirectional,bos_id', [(False, None), (True, None),
                                                  (False, 3)])
def test_scores_equal_the_training_loss(params, bidirectional, bos_id):
  """Inference's layout (left-aligned prompt + target) and SeqIO's PrefixLM
  training rows give the same target log-likelihood, token for token."""
  model = _model(bidirectional, bos_id)
  model.z_loss = 0.0
  inputs = _prompts(3, 7, seed=1)
  rng = np.random.RandomState(2)
  targets = rng.randint(2, V, size=(3, 5)).astype(np.int32)
  targets[:, 3] = 1   # EOS
  targets[:, 4:] = 0
  targets[0, 1:] = 0
  targets[0, 0] = 1
  scores = _jit(predict.score_batch, model)(params, {
      'encoder_input_tokens': jnp.asarray(inputs),
      'decoder_target_tokens': jnp.asarray(targets)})
  batch = _prefix_lm_batch(inputs, targets)
  if bidirectional:  # the converter marks inputs + 1 positions
    np.testing.assert_array_equal(
        np.asarray(batch['decoder_causal_attention']).sum(1),
        (inputs > 0).sum(1) + 1)
  for r in range(3):
    row = {k: v[r:r + 1] for k, v in batch.items()}
    loss, metrics = model.loss_fn(params, row, None, normalizer=1.0)
    np.testing.assert_allclose(float(-scores[r]), float(loss), rtol=1e-5,
                               atol=1e-5)
    assert float(metrics['weight_sum']) == (targets[r] > 0).sum()


@pytest.mark.parametrize('bidirectional', [False, True])
def test_score_candidates_equals_score_batch(params, bidirectional):
  """One prefill per prompt, every candidate continued from its KV cache:
  the scores of the whole prompt run again per candidate (score_batch, and
  share_prompt=False), with prompts and candidates of different lengths."""
  model = _model(bidirectional, bos_id=3)
  inputs = _prompts(3, 6, seed=3)
  cands = np.zeros((3, len(CATALOGUE), 6), np.int32)
  for c, item in enumerate(CATALOGUE):
    cands[:, c, :len(item) + 1] = item + [1]
  assert len({len(item) for item in CATALOGUE}) > 1
  got = np.asarray(_jit(predict.score_candidates, model)(
      params, jnp.asarray(inputs), jnp.asarray(cands)))
  again = np.asarray(_jit(predict.score_candidates, model,
                          share_prompt=False)(
                              params, jnp.asarray(inputs), jnp.asarray(cands)))
  np.testing.assert_allclose(got, again, atol=1e-5)
  for c in range(len(CATALOGUE)):
    want = _jit(predict.score_batch, model)(params, {
        'encoder_input_tokens': jnp.asarray(inputs),
        'decoder_target_tokens': jnp.asarray(cands[:, c])})
    np.testing.assert_allclose(got[:, c], np.asarray(want), atol=1e-5)


def _greedy_by_full_forward(model, params, inputs, length):
  """Greedy decoding that re-scores the whole sequence at every step."""
  out = np.zeros((inputs.shape[0], length), np.int32)
  for t in range(length):
    targets = np.concatenate([out[:, :t], np.zeros_like(out[:, :1])], 1)
    targets[:, t] = 2  # any non-pad token: its logits are not read
    logits = predict._decoder_only_target_logits(  # pylint: disable=protected-access
        model, params, jnp.asarray(inputs), jnp.asarray(targets))
    out[:, t] = np.asarray(jnp.argmax(logits[:, t], -1))
  return out


@pytest.mark.parametrize('bidirectional', [False, True])
def test_greedy_equals_argmax_with_full_recomputation(params, bidirectional):
  model = _model(bidirectional, bos_id=3)
  inputs = _prompts(3, 7, seed=4)
  length = 6
  tokens, _ = _jit(predict.predict_batch, model, decode_method='greedy',
                   max_decode_length=length)(
                       params, {'encoder_input_tokens': jnp.asarray(inputs)})
  want = _greedy_by_full_forward(model, params, inputs, length)
  got = np.asarray(tokens[:, 0])
  for r in range(3):  # compare up to (and including) the first EOS
    end = list(want[r]).index(1) + 1 if 1 in want[r] else length
    np.testing.assert_array_equal(got[r, :end], want[r, :end])


def test_rows_decode_as_if_alone(params):
  """Left padding is invisible: each row's beams equal its beams alone."""
  model = _model()
  inputs = _prompts(3, 7, seed=5)
  fn = _jit(predict.predict_batch, model, decode_method='beam',
            num_decodes=3, max_decode_length=5)
  tokens, scores = fn(params, {'encoder_input_tokens': jnp.asarray(inputs)})
  for r in range(3):
    n = int((inputs[r] > 0).sum())
    alone = jnp.asarray(inputs[r:r + 1, :n])
    t1, s1 = fn(params, {'encoder_input_tokens': alone})
    np.testing.assert_array_equal(np.asarray(tokens[r]), np.asarray(t1[0]))
    np.testing.assert_allclose(np.asarray(scores[r]), np.asarray(s1[0]),
                               atol=1e-5)


def test_constrained_beam_search_equals_brute_force_over_catalogue(params):
  test_decoding.check_constrained_beams_equal_brute_force(
      _model(), params, jnp.asarray(_prompts(2, 6, seed=6)), V)


def test_sampling_returns_its_own_log_likelihood(params):
  model = _model()
  inputs = _prompts(2, 5, seed=7)
  tokens, log_probs = _jit(predict.predict_batch, model,
                           decode_method='sample', num_decodes=3,
                           max_decode_length=6)(
      params, {'encoder_input_tokens': jnp.asarray(inputs)},
      rng=jax.random.PRNGKey(3))
  tokens = np.asarray(tokens)
  for d in range(3):
    want = _jit(predict.score_batch, model)(params, {
        'encoder_input_tokens': jnp.asarray(inputs),
        'decoder_target_tokens': jnp.asarray(tokens[:, d])})
    np.testing.assert_allclose(np.asarray(log_probs[:, d]), np.asarray(want),
                               atol=1e-4)


def test_sharded_equals_unsharded(params):
  """Beam search and candidate scoring on a (2, 4) mesh equal one device."""
  model = _model()
  inputs = jnp.asarray(np.tile(_prompts(4, 7, seed=8), (2, 1)))
  fn = _jit(predict.predict_batch, model, decode_method='beam', num_decodes=3,
            max_decode_length=5)
  batch = {'encoder_input_tokens': inputs}
  tokens, scores = fn(params, batch)
  part = partitioning.Partitioner(mesh_shape=(2, 4))
  boxed = jax.eval_shape(lambda: decoder_only.init_variables(
      CFG, jax.random.PRNGKey(0)))['params']
  sharded_params = jax.device_put(params, part.param_shardings(boxed))
  specs = {s.spec for s in jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(lambda x: x.sharding, sharded_params))}
  assert any('model' in str(s) for s in specs)  # really split over 'model'
  sharded_batch = jax.device_put(batch, part.batch_shardings(batch))
  with jax.set_mesh(part.mesh):
    s_tokens, s_scores = fn(sharded_params, sharded_batch)
  np.testing.assert_array_equal(np.asarray(s_tokens), np.asarray(tokens))
  np.testing.assert_allclose(np.asarray(s_scores), np.asarray(scores),
                             atol=1e-5)


def test_start_token_follows_the_tokenizer():
  """BOS at position 0 when the tokenizer's config says the checkpoint
  expects it (Llama), else 0 (T5-style SentencePiece, Qwen2)."""
  import os  # pylint: disable=g-import-not-at-top
  from recjax import vocabularies  # pylint: disable=g-import-not-at-top
  testdata = os.path.join(os.path.dirname(__file__), 'testdata')
  vocab = vocabularies.load_vocabulary(
      os.path.join(testdata, 'tiny_hf_tokenizer'))
  assert vocab.add_bos and vocab.bos_id > 0
  model = _model()
  model.input_vocabulary = vocab
  assert model.bos_id == vocab.bos_id
  tokens = model.with_start_token(jnp.asarray([[0, 5, 6, 0, 0]]),
                                  jnp.asarray([[0, 1, 2, 0, 0]]))
  # Only real sequence starts change; padding after them keeps 0 (position
  # 0 there too, but those keys are masked by segment ids anyway).
  assert int(tokens[0, 0]) == vocab.bos_id and list(tokens[0, 1:3]) == [5, 6]
  assert _model(bos_id=-1).bos_id == 0
  model.input_vocabulary = seqio.PassThroughVocabulary(8)
  assert model.bos_id == 0
