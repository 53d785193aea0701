"""recjax.models.decoder_only: masks, KV cache, packing, prefix LM, embeddings
entry, sharding, remat and config errors (tiny float32 models on CPU)."""
from __future__ import annotations

import dataclasses
import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from recjax.models import decoder_only
from recjax.models import t5
from recjax.train import partitioning

V, L = 64, 10
CFG = decoder_only.DecoderOnlyConfig(
    vocab_size=V, emb_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
    num_layers=2, mlp_dim=64, rope_theta=1000.0, qkv_bias=True,
    dtype='float32')


def _params(cfg=CFG, seed=0):
  params = nn.unbox(decoder_only.init_variables(
      cfg, jax.random.PRNGKey(seed))['params'])
  # Biases init to zero and norms to one: randomize so mistakes show.
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.3 * rng.standard_normal(x.shape).astype(x.dtype)
      if p[-1].key in ('bias', 'scale') else x, params)


PARAMS = _params()


@functools.lru_cache(maxsize=None)
def _apply(cfg=CFG, **static):
  model = decoder_only.DecoderOnlyTransformer(cfg)
  return jax.jit(lambda variables, *args, **kw: model.apply(
      variables, *args, enable_dropout=False, **static, **kw))


def _tokens(batch=2, length=L, seed=1):
  return np.random.RandomState(seed).randint(1, V, (batch, length)).astype(
      np.int32)


def forward(tokens, params=PARAMS, cfg=CFG, **kw):
  return np.asarray(_apply(cfg)({'params': params}, tokens, **kw))


def _alloc_cache(batch, max_len, params=PARAMS, cfg=CFG):
  model = decoder_only.DecoderOnlyTransformer(cfg)
  shapes = jax.eval_shape(functools.partial(
      model.apply, decode=True, enable_dropout=False, mutable=['cache']),
      {'params': params}, jnp.ones((batch, max_len), jnp.int32))[1]['cache']
  return jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)


@functools.lru_cache(maxsize=None)
def _decode_fn(prefill, cfg=CFG):
  model = decoder_only.DecoderOnlyTransformer(cfg)
  return jax.jit(lambda variables, tokens, **kw: model.apply(
      variables, tokens, decode=True, prefill=prefill, enable_dropout=False,
      mutable=['cache'], **kw))


def _decode(cache, tokens, prefill, params=PARAMS, **kw):
  logits, state = _decode_fn(prefill)({'params': params, 'cache': cache},
                                      tokens, **kw)
  return np.asarray(logits), state['cache']


def test_param_tree_names_and_axes():
  shapes = decoder_only.param_shapes(CFG)
  att = 'decoder/layers_1/self_attention/'
  assert shapes[att + 'query/kernel'] == (32, 32)
  assert shapes[att + 'key/kernel'] == (32, 16)
  assert shapes[att + 'value/bias'] == (16,)
  assert shapes[att + 'out/kernel'] == (32, 32)
  assert shapes['decoder/layers_0/mlp/wi_0/kernel'] == (32, 64)
  assert shapes['decoder/logits_dense/kernel'] == (32, V)
  assert 'decoder/layers_0/self_attention/out/bias' not in shapes
  axes = decoder_only.logical_axes(CFG)
  a = axes['decoder']['layers_0']['self_attention']
  assert a['query']['kernel'] == P('embed', 'joined_kv')
  assert a['key']['kernel'] == P('embed', 'kv_heads')
  assert a['key']['bias'] == P('kv_heads')
  assert a['out']['kernel'] == P('joined_kv', 'embed')
  assert axes['decoder']['logits_dense']['kernel'] == P('embed', 'vocab')
  assert axes['token_embedder']['embedding'] == P('vocab', 'embed')
  tied = decoder_only.param_shapes(
      dataclasses.replace(CFG, tie_word_embeddings=True, qkv_bias=False))
  assert 'decoder/logits_dense/kernel' not in tied
  assert not any(k.endswith('bias') for k in tied)


def test_make_mask_hand_computed():
  seg = jnp.array([[1, 1, 1, 2, 2, 0]])
  prefix = jnp.array([[1, 1, 0, 1, 0, 0]])
  got = np.asarray(decoder_only.make_mask(seg, True, prefix))[0].astype(int)
  want = np.array([
      [1, 1, 0, 0, 0, 0],   # prefix of segment 1 sees the whole prefix
      [1, 1, 0, 0, 0, 0],
      [1, 1, 1, 0, 0, 0],   # target: causal
      [0, 0, 0, 1, 0, 0],   # segment 2 starts; never sees segment 1
      [0, 0, 0, 1, 1, 0],
      [0, 0, 0, 0, 0, 0]])  # padding key never attended to
  np.testing.assert_array_equal(got, want)
  # Unpacked: key padding from segment 0 only; no segment equality.
  got = np.asarray(decoder_only.make_mask(seg, False))[0].astype(int)
  np.testing.assert_array_equal(got, np.tril(np.ones((6, 6), int)) *
                                np.array([1, 1, 1, 1, 1, 0]))


def test_key_padding_sources():
  toks = jnp.array([[5, 6, 7, 0]])
  seg = decoder_only.key_segments(toks, jnp.array([[6, 7, 0, 0]]))
  np.testing.assert_array_equal(seg, [[1, 1, 0, 0]])  # target tokens > 0
  seg = decoder_only.key_segments(toks, jnp.array([[6, 7, 0, 0]]),
                                  jnp.array([[1, 2, 2, 0]]))
  np.testing.assert_array_equal(seg, [[1, 2, 2, 0]])  # segment ids win
  np.testing.assert_array_equal(decoder_only.key_segments(toks), [[1] * 4])


def test_causal_and_target_padding():
  toks = _tokens()
  full = forward(toks)
  changed = toks.copy()
  changed[:, 6] = (changed[:, 6] % (V - 1)) + 1
  other = forward(changed)
  np.testing.assert_allclose(other[:, :6], full[:, :6], atol=1e-6, rtol=0)
  assert not np.allclose(other[:, 6:], full[:, 6:], atol=1e-3)
  # decoder_target_tokens == 0 masks those keys (T5X fallback): a masked
  # key at 3 changes later positions but not earlier ones.
  targets = np.ones_like(toks)
  targets[:, 3] = 0
  masked = forward(toks, decoder_target_tokens=targets)
  np.testing.assert_allclose(masked[:, :3], full[:, :3], atol=1e-6, rtol=0)
  assert not np.allclose(masked[:, 4:], full[:, 4:], atol=1e-3)


def test_kv_cache_prefill_then_steps_equals_full_forward():
  toks = _tokens(length=L)
  full = forward(toks)
  p, max_len = 4, L + 2
  cache = _alloc_cache(2, max_len)
  leaves = jax.tree_util.tree_flatten_with_path(cache)[0]
  for path, x in leaves:
    name = path[-1].key
    if name == 'cache_index':
      assert x.shape == () and x.dtype == jnp.int32
    else:
      assert x.shape[0] == 2, name
  kv = cache['decoder']['layers_0']['self_attention']
  assert kv['cached_key'].shape == (2, max_len, 2, 8)
  assert kv['cached_segment'].shape == (2, max_len)
  logits, cache = _decode(cache, toks[:, :p], True,
                          decoder_segment_ids=np.ones((2, p), np.int32))
  np.testing.assert_allclose(logits, full[:, :p], atol=1e-5, rtol=0)
  assert int(cache['decoder']['layers_1']['self_attention'][
      'cache_index']) == p
  for i in range(p, L):
    logits, cache = _decode(cache, toks[:, i:i + 1], False,
                            decoder_positions=np.full((2, 1), i, np.int32))
    np.testing.assert_allclose(logits[:, 0], full[:, i], atol=1e-5, rtol=0,
                               err_msg=f'step {i}')
  seg = cache['decoder']['layers_0']['self_attention']['cached_segment']
  np.testing.assert_array_equal(seg, [[1] * L + [0] * 2] * 2)


def test_left_padded_prefill_equals_unpadded_row():
  toks = _tokens(batch=1, length=8)
  pad = 3
  padded = np.concatenate([np.zeros((1, pad), np.int32), toks], axis=1)
  valid = (np.arange(8 + pad) >= pad).astype(np.int32)[None]
  positions = np.cumsum(valid, axis=1) - 1
  batch = np.concatenate([padded, np.concatenate([toks, toks[:, :pad]], 1)])
  seg = np.concatenate([valid, np.ones_like(valid)])
  pos = np.concatenate([positions, np.arange(8 + pad)[None]])
  extra = _tokens(batch=1, length=3, seed=5)
  ref = forward(np.concatenate([toks, extra], axis=1))[0]
  cache = _alloc_cache(2, 8 + pad + 3)
  logits, cache = _decode(cache, batch, True, decoder_segment_ids=seg,
                          decoder_positions=pos)
  np.testing.assert_allclose(logits[0, pad:], ref[:8], atol=1e-5, rtol=0)
  for j in range(3):
    step = np.repeat(extra[:, j:j + 1], 2, axis=0)
    logits, cache = _decode(cache, step, False, decoder_positions=np.array(
        [[8 + j], [8 + pad + j]], np.int32))
    np.testing.assert_allclose(logits[0, 0], ref[8 + j], atol=1e-5, rtol=0)


def test_packing_equals_separate_runs():
  a, b = _tokens(1, 6, seed=2), _tokens(1, 3, seed=3)
  packed = np.concatenate([a, b, np.zeros((1, 1), np.int32)], axis=1)
  seg = np.array([[1] * 6 + [2] * 3 + [0]])
  pos = np.array([list(range(6)) + list(range(3)) + [0]])
  got = forward(packed, decoder_segment_ids=seg, decoder_positions=pos)
  np.testing.assert_allclose(got[0, :6], forward(a)[0], atol=1e-5, rtol=0)
  np.testing.assert_allclose(got[0, 6:9], forward(b)[0], atol=1e-5, rtol=0)
  # Without segment ids the second sequence would see the first.
  leaky = forward(packed, decoder_positions=pos)
  assert not np.allclose(leaky[0, 6:9], got[0, 6:9], atol=1e-3)


def test_prefix_lm_bidirectional_prefix():
  toks = _tokens(1, L)
  prefix = np.array([[1] * 4 + [0] * (L - 4)])
  base = forward(toks, decoder_causal_attention=prefix)
  np.testing.assert_allclose(forward(toks, decoder_causal_attention=0 * prefix),
                             forward(toks), atol=1e-6, rtol=0)
  # Changing prefix token 3 now changes prefix positions 0..2 (bidirectional)
  # and everything after.
  changed = toks.copy()
  changed[0, 3] = (changed[0, 3] % (V - 1)) + 1
  other = forward(changed, decoder_causal_attention=prefix)
  for i in range(L):
    assert not np.allclose(other[0, i], base[0, i], atol=1e-4), i
  # Changing target token 6 leaves positions < 6 alone (targets stay causal).
  changed = toks.copy()
  changed[0, 6] = (changed[0, 6] % (V - 1)) + 1
  other = forward(changed, decoder_causal_attention=prefix)
  np.testing.assert_allclose(other[0, :6], base[0, :6], atol=1e-6, rtol=0)
  assert not np.allclose(other[0, 6:], base[0, 6:], atol=1e-3)
  # Without the prefix flag, position 0 ignores token 3.
  plain_other = forward(changed)
  np.testing.assert_allclose(plain_other[0, :6], forward(toks)[0, :6],
                             atol=1e-6, rtol=0)


def test_prefix_lm_matches_numpy_reference_one_layer():
  """One layer, one head: logits from a hand-written numpy forward pass."""
  cfg = decoder_only.DecoderOnlyConfig(
      vocab_size=V, emb_dim=16, num_heads=2, num_kv_heads=1, head_dim=8,
      num_layers=1, mlp_dim=32, rope_theta=50.0, qkv_bias=True,
      tie_word_embeddings=True, dtype='float32')
  params = _params(cfg, seed=3)
  toks = _tokens(1, 6, seed=4)
  prefix = np.array([[1, 1, 1, 0, 0, 0]])
  got = forward(toks, params, cfg, decoder_causal_attention=prefix)[0]
  p = jax.tree_util.tree_map(np.asarray, params)
  lay = p['decoder']['layers_0']
  emb = p['token_embedder']['embedding']

  def rms(x, s):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + cfg.rms_norm_eps) * s

  def rope(x, pos):  # x [L, H, D]
    inv = 50.0**(-np.arange(0, 8, 2) / 8)
    ang = pos[:, None] * inv[None]
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
    x1, x2 = x[..., :4], x[..., 4:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

  x = emb[toks[0]]
  att = lay['self_attention']
  h = rms(x, lay['pre_self_attention_layer_norm']['scale'])
  proj = lambda n, k: (h @ att[n]['kernel'] + att[n]['bias']).reshape(6, k, 8)
  pos = np.arange(6.)
  q, k, v = rope(proj('query', 2), pos), rope(proj('key', 1), pos), proj(
      'value', 1)
  allowed = np.tril(np.ones((6, 6), bool))
  allowed[:3, :3] = True
  outs = []
  for head in range(2):
    s = q[:, head] @ k[:, 0].T / np.sqrt(8)
    s = np.where(allowed, s, -1e10)
    w = np.exp(s - s.max(-1, keepdims=True))
    outs.append((w / w.sum(-1, keepdims=True)) @ v[:, 0])
  x = x + np.stack(outs, 1).reshape(6, 16) @ att['out']['kernel']
  h = rms(x, lay['pre_mlp_layer_norm']['scale'])
  mlp = lay['mlp']
  g = h @ mlp['wi_0']['kernel']
  x = x + ((g / (1 + np.exp(-g))) * (h @ mlp['wi_1']['kernel'])) @ mlp[
      'wo']['kernel']
  want = rms(x, p['decoder']['decoder_norm']['scale']) @ emb.T
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_input_embeddings_replace_token_embeddings():
  toks = _tokens()
  full = forward(toks)
  own = PARAMS['token_embedder']['embedding'][toks]
  mask = np.zeros(toks.shape, bool)
  mask[:, 2] = True
  same = forward(toks, input_embeddings=own, embedding_mask=mask)
  np.testing.assert_allclose(same, full, atol=1e-6, rtol=0)
  soft = np.asarray(own).copy()
  soft[:, 2] += 1.0
  got = forward(toks, input_embeddings=soft, embedding_mask=mask)
  np.testing.assert_allclose(got[:, :2], full[:, :2], atol=1e-6, rtol=0)
  assert not np.allclose(got[:, 2:], full[:, 2:], atol=1e-3)
  # Unmasked positions of input_embeddings are ignored.
  junk = soft + 100.0 * (~mask)[..., None]
  np.testing.assert_allclose(
      forward(toks, input_embeddings=junk, embedding_mask=mask), got,
      atol=1e-6, rtol=0)
  with pytest.raises(ValueError, match='input_embeddings shape'):
    forward(toks, input_embeddings=soft[:, :3], embedding_mask=mask)


def test_sharded_forward_equals_single_device():
  part = partitioning.Partitioner(mesh_shape=(2, 4))
  cfg = dataclasses.replace(CFG, num_heads=8, num_kv_heads=4)
  boxed = decoder_only.init_variables(cfg, jax.random.PRNGKey(1))['params']
  params = nn.unbox(boxed)
  shardings = part.param_shardings(boxed)
  assert shardings['decoder']['layers_0']['self_attention']['key'][
      'kernel'].spec == P(None, 'model')
  assert shardings['token_embedder']['embedding'].spec == P('model')
  toks = _tokens(batch=4)
  seg = np.ones_like(toks)
  seg[1, 7:] = 0
  want = forward(toks, params, cfg, decoder_segment_ids=seg)
  model = decoder_only.DecoderOnlyTransformer(cfg)

  def fn(p, t, s):
    with nn.logical_axis_rules(part.logical_axis_rules):
      return model.apply({'params': p}, t, decoder_segment_ids=s,
                         enable_dropout=False)

  data = NamedSharding(part.mesh, P('data'))
  with jax.set_mesh(part.mesh):
    got = part.partition(fn, (shardings, data, data), data)(
        jax.device_put(params, shardings), toks, seg)
  assert got.sharding.spec == P('data')
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


def test_remat_policies_identical_logits_and_grads():
  toks = _tokens()
  results = []
  for policy in ('none', 'full', 'minimal'):
    cfg = dataclasses.replace(CFG, remat_policy=policy)
    model = decoder_only.DecoderOnlyTransformer(cfg)

    def loss(p, model=model):
      logits = model.apply({'params': p}, toks, enable_dropout=False)
      return jnp.mean(jax.nn.log_softmax(logits)[..., 3]), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        PARAMS)
    results.append((np.asarray(logits), jax.tree_util.tree_map(np.asarray,
                                                               grads)))
  # Recomputation changes XLA's fusion, so float32 rounding may differ in
  # the last bits: on an Intel Xeon host one logit of 1,280 moved by 1.07e-6
  # (0.5102444 vs 0.5102454) with every policy equally right.
  for logits, grads in results[1:]:
    np.testing.assert_allclose(logits, results[0][0], atol=1e-5, rtol=0)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
        grads, results[0][1])


def test_bfloat16_activations_close_to_float32():
  cfg = dataclasses.replace(CFG, dtype='bfloat16')
  toks = _tokens()
  got = forward(toks, cfg=cfg)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, forward(toks), atol=0.15, rtol=0)


def test_dropout_needs_rng_and_changes_logits():
  cfg = dataclasses.replace(CFG, dropout_rate=0.3)
  model = decoder_only.DecoderOnlyTransformer(cfg)
  toks = _tokens()
  a = jax.jit(lambda p, t, r: model.apply(
      {'params': p}, t, enable_dropout=True, rngs={'dropout': r}))(
          PARAMS, toks, jax.random.PRNGKey(0))
  assert not np.allclose(a, forward(toks), atol=1e-3)
  with pytest.raises(flax.errors.InvalidRngError, match='dropout'):
    model.apply({'params': PARAMS}, toks, enable_dropout=True)


@pytest.mark.parametrize('change,match', [
    ({'num_heads': 6, 'num_kv_heads': 4}, 'not a multiple of num_kv_heads'),
    ({'rope_scaling': {'rope_type': 'dynamic', 'factor': 2.0}},
     "rope_type='dynamic' is not supported"),
    ({'rope_scaling': {'rope_type': 'llama3', 'factor': 8.0}},
     'lacks'),
    ({'remat_policy': 'sometimes'}, 'remat_policy'),
    ({'head_dim': 7}, 'even'),
    ({'pad_swap_id': 0}, 'pad_swap_id'),
])
def test_bad_config_errors(change, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(CFG, **change)


def test_rope_scaling_dict_is_hashable_and_old_key_accepted():
  a = decoder_only.DecoderOnlyConfig(rope_scaling={
      'type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
      'high_freq_factor': 4.0, 'original_max_position_embeddings': 64})
  assert isinstance(a.rope_scaling, tuple) and hash(a)
  assert a.rope_scaling_dict['rope_type'] == 'llama3'
  assert a == decoder_only.DecoderOnlyConfig(rope_scaling=a.rope_scaling)


def test_decode_step_errors():
  cache = _alloc_cache(2, 6)
  with pytest.raises(ValueError, match='decoder_positions'):
    _decode(cache, _tokens(2, 1), False)
  with pytest.raises(ValueError, match=r'\[B, 1\]'):
    _decode(cache, _tokens(2, 2), False,
            decoder_positions=np.zeros((2, 2), np.int32))
  with pytest.raises(ValueError, match='does not fit'):
    _decode(cache, _tokens(2, 7), True)


def test_dense_general_bias_is_added_after_matmul():
  layer = t5.DenseGeneral(features=(2, 3), use_bias=True,
                          kernel_axes=('embed', 'joined_kv'))
  x = np.random.RandomState(0).randn(4, 5).astype(np.float32)
  v = layer.init(jax.random.PRNGKey(0), x)
  kernel = np.asarray(nn.unbox(v['params']['kernel']))
  assert nn.get_partition_spec(v)['params']['bias'] == P('joined_kv')
  bias = np.arange(6, dtype=np.float32)
  got = layer.apply({'params': {'kernel': kernel, 'bias': bias}}, x)
  np.testing.assert_allclose(got, (x @ kernel + bias).reshape(4, 2, 3),
                             atol=1e-5)
