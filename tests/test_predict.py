"""recjax.infer.predict: scoring equivalences and sharded decoding."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from recjax.infer import predict
from recjax.models import t5
from recjax.train import model_api
from recjax.train import partitioning
from recjax.train import test_utils

CFG = t5.T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8,
                  mlp_dim=32, num_encoder_layers=1, num_decoder_layers=1,
                  dtype='float32')


@pytest.fixture(scope='module')
def model_and_params():
  params = test_utils.random_t5_params(CFG, 0)
  return model_api.EncoderDecoderModel(t5.Transformer(CFG)), params


def _enc(batch, length, seed):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, 64, size=(batch, length)).astype(np.int32)
  enc[0, length // 2:] = 0
  return enc


def test_score_candidates_equals_score_batch_row_by_row(model_and_params):
  model, params = model_and_params
  rng = np.random.RandomState(1)
  b, c, t = 3, 4, 5
  enc = _enc(b, 6, 1)
  cands = rng.randint(2, 64, size=(b, c, t)).astype(np.int32)
  lengths = rng.randint(1, t, size=(b, c))
  for i in range(b):
    for j in range(c):
      cands[i, j, lengths[i, j]] = 1  # EOS, then padding
      cands[i, j, lengths[i, j] + 1:] = 0
  got = jax.jit(functools.partial(predict.score_candidates, model))(
      params, jnp.asarray(enc), jnp.asarray(cands))
  assert got.shape == (b, c) and got.dtype == jnp.float32
  flat = cands.reshape(b * c, t)
  want = jax.jit(functools.partial(predict.score_batch, model))(params, {
      'encoder_input_tokens': jnp.asarray(np.repeat(enc, c, axis=0)),
      'decoder_input_tokens': jnp.asarray(np.pad(flat[:, :-1], ((0, 0),
                                                                (1, 0)))),
      'decoder_target_tokens': jnp.asarray(flat),
      'something_else': jnp.zeros((b * c,))})
  np.testing.assert_allclose(np.asarray(got).reshape(-1), np.asarray(want),
                             atol=1e-5)
  # By hand for one row: sum of per-position log-softmax of the targets.
  logits = jax.jit(functools.partial(model.module.apply,
                                     enable_dropout=False))(
      {'params': params}, jnp.asarray(enc[:1]),
      jnp.asarray(np.pad(flat[:1, :-1], ((0, 0), (1, 0)))),
      jnp.asarray(flat[:1]))
  lp = np.asarray(jax.nn.log_softmax(logits[0]))
  hand = sum(lp[p, flat[0, p]] for p in range(t) if flat[0, p] > 0)
  np.testing.assert_allclose(float(got[0, 0]), hand, atol=1e-5)


def test_predict_batch_sharded_equals_unsharded(model_and_params):
  model, params = model_and_params
  batch = {'encoder_input_tokens': jnp.asarray(_enc(8, 10, 2)),
           'targets_unused': jnp.zeros((8, 3), jnp.int32)}
  fn = jax.jit(functools.partial(predict.predict_batch, model,
                                 decode_method='beam', num_decodes=3,
                                 max_decode_length=5))
  tokens, scores = fn(params, batch)
  assert tokens.shape == (8, 3, 5) and scores.shape == (8, 3)
  # Finished beams (with EOS) first, each part sorted by score.
  finished = (np.asarray(tokens) == 1).any(-1)
  assert (np.diff(finished.astype(int), axis=1) <= 0).all()
  for row, fin in zip(np.asarray(scores), finished):
    assert (np.diff(row[fin]) <= 0).all() and (np.diff(row[~fin]) <= 0).all()
  part = partitioning.Partitioner(mesh_shape=(4, 2))
  boxed = jax.eval_shape(lambda: t5.init_variables(
      CFG, jax.random.PRNGKey(0)))['params']
  p_shard = part.param_shardings(boxed)
  sharded_params = jax.device_put(params, p_shard)
  sharded_batch = jax.device_put(batch, part.batch_shardings(batch))
  assert sharded_batch['encoder_input_tokens'].sharding.spec == (
      jax.sharding.PartitionSpec('data'))
  with jax.set_mesh(part.mesh):
    s_tokens, s_scores = fn(sharded_params, sharded_batch)
  np.testing.assert_array_equal(np.asarray(s_tokens), np.asarray(tokens))
  np.testing.assert_allclose(np.asarray(s_scores), np.asarray(scores),
                             atol=1e-5)


def test_beam_search_keeps_the_cache_split_over_data(model_and_params):
  """Reordering beams must not gather the whole batch's KV cache onto each
  chip: compiled for a (8, 1) mesh, the decoder's self-attention cache
  ([rows, heads, head_dim, length], rows = prompts x beams) exists only as
  this chip's 1/8 of the rows."""
  model, params = model_and_params
  part = partitioning.Partitioner(mesh_shape=(8, 1))
  boxed = jax.eval_shape(lambda: t5.init_variables(
      CFG, jax.random.PRNGKey(0)))['params']
  fn = part.partition(
      functools.partial(predict.predict_batch, model, decode_method='beam',
                        num_decodes=3, max_decode_length=5),
      in_shardings=(part.param_shardings(boxed),
                    {'encoder_input_tokens': part.data_sharding()}),
      out_shardings=part.data_sharding())
  batch = {'encoder_input_tokens': jax.ShapeDtypeStruct((16, 10), jnp.int32)}
  hlo = fn.lower(jax.eval_shape(lambda: params), batch).compile().as_text()
  rows = 16 * 3
  cache = f'{CFG.num_heads},{CFG.head_dim},5]'
  assert f'f32[{rows // 8},{cache}' in hlo
  assert f'f32[{rows},{cache}' not in hlo


def test_bad_arguments(model_and_params):
  model, params = model_and_params
  batch = {'encoder_input_tokens': jnp.ones((1, 4), jnp.int32)}
  with pytest.raises(ValueError, match='decode_method'):
    predict.predict_batch(model, params, batch, decode_method='nucleus')
  with pytest.raises(ValueError, match='num_decodes'):
    predict.predict_batch(model, params, batch, decode_method='greedy',
                          num_decodes=2)


def test_decode_tokens():
  vocab = seqio.ByteVocabulary()
  ab = list(vocab.encode('ab'))
  rows = np.array([ab + [1, 0, 0], ab + [1] + ab, [0] * 5,
                   ab + ab + ab[:1]])
  assert predict.decode_tokens(vocab, rows) == ['ab', 'ab', '', 'ababa']
  assert predict.decode_tokens(vocab, rows.reshape(2, 2, 5)) == [
      ['ab', 'ab'], ['', 'ababa']]
