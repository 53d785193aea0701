"""recjax.models.t5: structure, decoding cache, packing, soft tokens, dropout."""
from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recjax import checkpoints
from recjax.models import t5
from recjax.train import test_utils

CFG = t5.T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8,
                  mlp_dim=32, num_encoder_layers=2, num_decoder_layers=2,
                  dtype='float32')
GIN_DIR = os.path.join(os.path.dirname(__file__), '..', 'gin_configs', 'models')


def _jit_apply(cfg, **static):
  """Jitted Transformer.apply (eager flax dispatch is far slower on CPU)."""
  model = t5.Transformer(cfg)
  return jax.jit(lambda variables, *args, **kw: model.apply(
      variables, *args, **static, **kw))


random_params = test_utils.random_t5_params


@pytest.fixture(scope='module')
def params():
  return random_params(CFG)


# One jitted forward shared by the tests (same shapes -> one compilation).
FWD = _jit_apply(CFG, enable_dropout=False)
ENC_SHAPE, DEC_SHAPE = (2, 8), (2, 6)


def _tokens(rng, shape, low=2):
  return jnp.asarray(rng.randint(low, CFG.vocab_size, size=shape), jnp.int32)


def test_param_tree_matches_t5x_names_and_logical_axes():
  shapes = t5.param_shapes(CFG)
  assert shapes['token_embedder/embedding'] == (64, 16)
  assert shapes['encoder/relpos_bias/rel_embedding'] == (2, 32)
  assert shapes['decoder/relpos_bias/rel_embedding'] == (2, 32)
  assert shapes['encoder/layers_1/attention/query/kernel'] == (16, 16)
  assert shapes['encoder/layers_0/attention/out/kernel'] == (16, 16)
  assert shapes['decoder/layers_1/encoder_decoder_attention/key/kernel'] == (
      16, 16)
  assert shapes['decoder/layers_0/mlp/wi_1/kernel'] == (16, 32)
  assert shapes['decoder/logits_dense/kernel'] == (16, 64)
  assert len(shapes) == 1 + (2 + 2 * 9) + (3 + 2 * 14)  # emb, enc, dec
  axes = t5.logical_axes(CFG)
  P = jax.sharding.PartitionSpec
  assert axes['token_embedder']['embedding'] == P('vocab', 'embed')
  assert axes['encoder']['layers_0']['attention']['query']['kernel'] == P(
      'embed', 'joined_kv')
  assert axes['decoder']['layers_0']['self_attention']['out']['kernel'] == P(
      'joined_kv', 'embed')
  assert axes['decoder']['layers_1']['mlp']['wo']['kernel'] == P('mlp', 'embed')
  assert axes['decoder']['logits_dense']['kernel'] == P('embed', 'vocab')
  assert axes['encoder']['relpos_bias']['rel_embedding'] == P(
      'heads', 'relpos_buckets')
  assert axes['encoder']['encoder_norm']['scale'] == P('embed')
  # T5X-style rules turn them into mesh shardings on the 8 fake devices.
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2),
                           ('data', 'model'))
  rules = (('vocab', 'model'), ('mlp', 'model'), ('joined_kv', 'model'),
           ('heads', 'model'), ('embed', None), ('relpos_buckets', None))
  shardings = nn.logical_to_mesh_sharding(axes, mesh, rules)
  assert shardings['decoder']['layers_0']['mlp']['wi_0']['kernel'].spec == P(
      None, 'model')


def test_init_variables_tree_and_scaling():
  cfg = dataclasses.replace(CFG, num_encoder_layers=1, num_decoder_layers=1)
  variables = t5.init_variables(cfg, jax.random.PRNGKey(0))
  assert isinstance(variables['params']['token_embedder']['embedding'],
                    nn.LogicallyPartitioned)
  params = nn.meta.unbox(variables)['params']
  flat = checkpoints.flatten_params(params)
  assert {k: v.shape for k, v in flat.items()} == t5.param_shapes(cfg)
  assert all(v.dtype == jnp.float32 for v in flat.values())
  # 1/sqrt(head_dim) is folded into the query initializer, as in T5X.
  q = flat['encoder/layers_0/attention/query/kernel']
  k = flat['encoder/layers_0/attention/key/kernel']
  np.testing.assert_allclose(float(q.std() / k.std()),
                             1 / np.sqrt(cfg.head_dim), rtol=0.3)
  np.testing.assert_array_equal(flat['encoder/encoder_norm/scale'], 1.0)


def test_sharded_forward_equals_unsharded(params):
  """Logical constraints inside jit on a ('data','model') mesh change nothing."""
  rng = np.random.RandomState(0)
  enc, dec = _tokens(rng, ENC_SHAPE), _tokens(rng, DEC_SHAPE)
  model = t5.Transformer(CFG)
  plain = FWD({'params': params}, enc, dec, dec)
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4),
                           ('data', 'model'))
  rules = (('batch', 'data'), ('vocab', 'model'), ('mlp', 'model'),
           ('joined_kv', 'model'), ('heads', None), ('kv', None),
           ('embed', None), ('length', None), ('relpos_buckets', None))
  axes = t5.logical_axes(CFG)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    shard = nn.logical_to_mesh_sharding(axes, mesh, rules)
    p = jax.device_put(params, shard)
    assert p['decoder']['logits_dense']['kernel'].sharding.spec == (
        jax.sharding.PartitionSpec(None, 'model'))
    fn = jax.jit(lambda p, e, d: model.apply({'params': p}, e, d, d,
                                             enable_dropout=False))
    sharded = fn(p, enc, dec)
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(plain),
                             atol=1e-5, rtol=1e-5)


def test_kv_cache_decoding_matches_teacher_forcing(params):
  rng = np.random.RandomState(1)
  enc = _tokens(rng, ENC_SHAPE).at[1, 5:].set(0)  # padding in example 2
  dec = _tokens(rng, DEC_SHAPE).at[:, 0].set(0)
  targets = _tokens(rng, DEC_SHAPE)
  model = t5.Transformer(CFG)
  full = FWD({'params': params}, enc, dec, targets)
  encoded = _jit_apply(CFG, enable_dropout=False,
                       method=t5.Transformer.encode)({'params': params}, enc)
  # Allocating the cache only needs shapes (as T5X's initialize_cache).
  state = jax.eval_shape(_jit_apply(
      CFG, decode=True, enable_dropout=False, mutable=['cache'],
      method=t5.Transformer.decode), {'params': params}, encoded, enc, dec,
                         dec)[1]
  cache = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype),
                                 state['cache'])
  cache_leaf = cache['decoder']['layers_0']['self_attention']['cached_key']
  assert cache_leaf.shape == (2, 2, 8, 6)  # T5X layout [B, heads, kv, len]

  @jax.jit
  def step(cache, tok):
    return model.apply({'params': params, 'cache': cache}, encoded, enc, tok,
                       tok, decode=True, max_decode_length=6,
                       enable_dropout=False, mutable=['cache'],
                       method=t5.Transformer.decode)

  steps = []
  for i in range(6):
    logits, state = step(cache, dec[:, i:i + 1])
    cache = state['cache']
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), np.asarray(full),
                             atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match='max_decode_length'):
    jax.eval_shape(_jit_apply(CFG, decode=True, enable_dropout=False,
                              mutable=['cache'], method=t5.Transformer.decode),
                   {'params': params, 'cache': cache}, encoded, enc,
                   dec[:, :1], dec[:, :1])


def test_packed_segments_equal_separate_runs(params):
  rng = np.random.RandomState(2)
  e1, e2 = _tokens(rng, (1, 5)), _tokens(rng, (1, 4))
  d1, d2 = _tokens(rng, (1, 3)), _tokens(rng, (1, 4))
  d1, d2 = d1.at[:, 0].set(0), d2.at[:, 0].set(0)
  t1, t2 = _tokens(rng, (1, 3)), _tokens(rng, (1, 4))
  pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n)))
  enc = pad(jnp.concatenate([e1, e2], 1), 2)
  dec_in = pad(jnp.concatenate([d1, d2], 1), 1)
  dec_tg = pad(jnp.concatenate([t1, t2], 1), 1)
  enc_seg = jnp.asarray([[1] * 5 + [2] * 4 + [0] * 2])
  dec_seg = jnp.asarray([[1] * 3 + [2] * 4 + [0]])
  enc_pos = jnp.asarray([list(range(5)) + list(range(4)) + [0, 0]])
  dec_pos = jnp.asarray([list(range(3)) + list(range(4)) + [0]])
  fwd = _jit_apply(CFG, enable_dropout=False)
  packed = fwd({'params': params}, enc, dec_in, dec_tg, enc_seg, dec_seg,
               enc_pos, dec_pos)
  # Each segment alone (zero-padded to the same shapes: one compilation).
  ones = lambda x: (x > 0).astype(jnp.int32)
  alone = []
  for e, d, t in ((e1, d1, t1), (e2, d2, t2)):
    e, d, t = pad(e, 11 - e.shape[1]), pad(d, 8 - d.shape[1]), pad(
        t, 8 - t.shape[1])
    alone.append(fwd({'params': params}, e, d, t, ones(e), ones(t), enc_pos,
                     dec_pos))
  alone1, alone2 = alone[0][:, :3], alone[1][:, :4]
  np.testing.assert_allclose(packed[:, :3], alone1, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[:, 3:7], alone2, atol=1e-5, rtol=1e-5)


def test_input_embeddings_replace_token_embeddings(params):
  rng = np.random.RandomState(3)
  enc, dec = _tokens(rng, ENC_SHAPE), _tokens(rng, DEC_SHAPE)
  fwd = _jit_apply(CFG, enable_dropout=False)
  plain = FWD({'params': params}, enc, dec, dec)
  table = params['token_embedder']['embedding']
  mask = jnp.asarray(rng.rand(*ENC_SHAPE) < 0.5)
  same = fwd({'params': params}, enc, dec, dec, input_embeddings=table[enc],
             embedding_mask=mask)
  np.testing.assert_array_equal(np.asarray(same), np.asarray(plain))
  soft = jnp.asarray(rng.randn(*ENC_SHAPE, 16), jnp.float32)
  other = fwd({'params': params}, enc, dec, dec, input_embeddings=soft,
              embedding_mask=mask)
  assert not np.allclose(np.asarray(other), np.asarray(plain))
  # Only the masked positions change: unmasked soft values are ignored.
  soft2 = jnp.where(mask[..., None], soft, 123.0)
  other2 = fwd({'params': params}, enc, dec, dec, input_embeddings=soft2,
               embedding_mask=mask)
  np.testing.assert_array_equal(np.asarray(other2), np.asarray(other))


def test_dropout_off_is_deterministic_and_on_is_random():
  cfg = dataclasses.replace(CFG, dropout_rate=0.3, num_encoder_layers=1,
                            num_decoder_layers=1)
  variables = {'params': random_params(cfg)}
  rng = np.random.RandomState(4)
  enc, dec = _tokens(rng, (2, 5)), _tokens(rng, (2, 3))
  off, on = _jit_apply(cfg, enable_dropout=False), _jit_apply(
      cfg, enable_dropout=True)
  # 'rbg' keys compile much faster than threefry on CPU; semantics are equal.
  key = lambda seed: jax.random.key(seed, impl='rbg')
  a = off(variables, enc, dec, dec)
  b = off(variables, enc, dec, dec, rngs={'dropout': key(9)})
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c = on(variables, enc, dec, dec, rngs={'dropout': key(1)})
  d = on(variables, enc, dec, dec, rngs={'dropout': key(1)})
  e = on(variables, enc, dec, dec, rngs={'dropout': key(2)})
  np.testing.assert_array_equal(np.asarray(c), np.asarray(d))
  assert not np.allclose(np.asarray(c), np.asarray(a))
  assert not np.allclose(np.asarray(c), np.asarray(e))


def test_bfloat16_activations_and_remat():
  """bfloat16 compute: logits near float32; with full remat the gradients
  equal those without remat (recomputation must not change the math) and
  stay near the float32 gradients."""
  cfg = dataclasses.replace(CFG, num_encoder_layers=1, num_decoder_layers=1)
  params = random_params(cfg, seed=5)
  rng = np.random.RandomState(5)
  enc, dec = _tokens(rng, ENC_SHAPE), _tokens(rng, DEC_SHAPE)
  weights = jnp.asarray(rng.randn(*DEC_SHAPE, cfg.vocab_size), jnp.float32)

  def grads_of(**overrides):
    model = t5.Transformer(dataclasses.replace(cfg, **overrides))

    def loss(p):
      logits = model.apply({'params': p}, enc, dec, dec, enable_dropout=False)
      return (weights * logits).sum(), logits

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  (_, f32), g_f32 = grads_of()
  (_, out), g_remat = grads_of(dtype='bfloat16', remat_policy='full')
  (_, out_plain), g_plain = grads_of(dtype='bfloat16')
  assert out.dtype == jnp.float32 and out.shape == (2, 6, 64)
  np.testing.assert_allclose(np.asarray(out), np.asarray(f32), atol=0.15)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(out_plain))
  assert jax.tree_util.tree_structure(g_remat) == (
      jax.tree_util.tree_structure(params))
  flat = lambda g: checkpoints.flatten_params(jax.device_get(g))
  g_remat, g_plain, g_f32 = flat(g_remat), flat(g_plain), flat(g_f32)
  for name, g in g_remat.items():
    assert g.dtype == np.float32, name
    scale = float(np.abs(g_f32[name]).max())
    assert scale > 0, name
    # remat vs no remat: both bfloat16, same ops; only fusion may differ.
    np.testing.assert_allclose(g, g_plain[name], rtol=0, atol=1e-2 * scale,
                               err_msg=name)
    np.testing.assert_allclose(g, g_f32[name], rtol=0, atol=0.1 * scale,
                               err_msg=name)


def _reference_bucket(relative_position: int, bidirectional: bool,
                      num_buckets: int, max_distance: int) -> int:
  """T5's bucket for one (memory - query) distance, written from the paper's
  description (Raffel et al. 2020, sec. 2.1) as Hugging Face's
  `T5Attention._relative_position_bucket` computes it: exact buckets for
  the nearest half, logarithmic up to max_distance, then the last bucket;
  bidirectional splits the buckets between keys after and before the query.
  """
  bucket = 0
  if bidirectional:
    num_buckets //= 2
    if relative_position > 0:
      bucket += num_buckets
    distance = abs(relative_position)
  else:
    distance = max(-relative_position, 0)
  max_exact = num_buckets // 2
  if distance < max_exact:
    return bucket + distance
  # float32 as in HF (torch.log on a float32 tensor).
  ratio = np.float32(np.log(np.float32(distance) / np.float32(max_exact)))
  large = max_exact + int(ratio / np.float32(np.log(max_distance / max_exact))
                          * np.float32(num_buckets - max_exact))
  return bucket + min(large, num_buckets - 1)


@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize('num_buckets,max_distance', [(32, 128), (8, 20)])
def test_relative_position_bucket_matches_reference(bidirectional, num_buckets,
                                                    max_distance):
  """Every distance in -300..300 (past max_distance both ways, so the exact,
  logarithmic and clamped ranges are all hit)."""
  distances = np.arange(-300, 301, dtype=np.int32)
  got = t5.relative_position_bucket(distances, bidirectional=bidirectional,
                                    num_buckets=num_buckets,
                                    max_distance=max_distance)
  want = np.array([_reference_bucket(int(d), bidirectional, num_buckets,
                                     max_distance) for d in distances])
  np.testing.assert_array_equal(got, want)
  half = num_buckets // 2 if bidirectional else num_buckets
  # Every bucket is used (but "distance 0, key after the query"), and the
  # far ends land in the last bucket of their side.
  assert set(got.tolist()) == set(range(num_buckets)) - (
      {half} if bidirectional else set())
  assert got[0] == half - 1  # distance -300: keys far before the query
  if bidirectional:
    assert got[-1] == num_buckets - 1  # +300: keys far after the query
  else:
    assert (got[300:] == 0).all()  # a decoder never sees keys after it


def test_relative_position_bucket_hand_computed():
  """FLAN-T5's encoder (32 buckets, max distance 128) at a few distances."""
  got = t5.relative_position_bucket(
      np.array([0, -1, -7, -8, -12, -16, -90, -91, -127, -128, -500, 1, 8, 500],
               np.int32), bidirectional=True, num_buckets=32, max_distance=128)
  # 16 per side, 8 exact; 8 + floor(log(n / 8) / log(16) * 8) beyond.
  np.testing.assert_array_equal(
      got, [0, 1, 7, 8, 9, 10, 14, 15, 15, 15, 15, 17, 24, 31])
  dec = t5.relative_position_bucket(
      np.array([0, -15, -16, -20, -112, -113, -1000, 3], np.int32),
      bidirectional=False, num_buckets=32, max_distance=128)
  np.testing.assert_array_equal(dec, [0, 15, 16, 17, 30, 31, 31, 0])


@gin.configurable('test_t5_model_config_probe')
def _config_probe(config=None):
  return config


@pytest.mark.parametrize('size,emb,mlp,layers,heads', [
    ('tiny', 64, 128, 2, 4), ('small', 512, 1024, 8, 6),
    ('base', 768, 2048, 12, 12), ('large', 1024, 2816, 24, 16),
    ('xl', 2048, 5120, 24, 32), ('xxl', 4096, 10240, 24, 64)])
def test_gin_model_configs(size, emb, mlp, layers, heads):
  gin.clear_config()
  try:
    # The model gins include models/architectures/*.gin from gin_configs/.
    gin.add_config_file_search_path(os.path.dirname(GIN_DIR))
    gin.parse_config_file(os.path.join(GIN_DIR, f'flan_t5_{size}.gin'))
    gin.parse_config('test_t5_model_config_probe.config = %MODEL_CONFIG')
    cfg = _config_probe()
  finally:
    gin.clear_config()
  assert isinstance(cfg, t5.T5Config)
  assert (cfg.emb_dim, cfg.mlp_dim, cfg.num_encoder_layers,
          cfg.num_decoder_layers, cfg.num_heads) == (emb, mlp, layers, layers,
                                                     heads)
  assert cfg.head_dim == (16 if size == 'tiny' else 64)
  assert cfg.vocab_size == 32128 and cfg.mlp_activations == ('gelu', 'linear')
  assert cfg.param_dtype == 'float32' and not cfg.logits_via_embedding


def test_broadcast_over_batch_keeps_values_and_gradients():
  """The relative position bias broadcast as an outer product with ones (so
  its gradient is a dot, not a slow major-axis reduction) gives bit-identical
  scores and the same gradient as implicit broadcasting."""
  rng = np.random.default_rng(0)
  bias = jnp.asarray(rng.normal(size=(1, 3, 5, 7)).astype(np.float32))
  scores = jnp.asarray(rng.normal(size=(4, 3, 5, 7)).astype(np.float32))
  upstream = jnp.asarray(rng.normal(size=(4, 3, 5, 7)).astype(np.float32))
  np.testing.assert_array_equal(t5.broadcast_over_batch(bias, 4) + scores,
                                bias + scores)
  loss = lambda f: lambda b: jnp.sum(upstream * jnp.tanh(f(b) + scores))
  ours = jax.grad(loss(lambda b: t5.broadcast_over_batch(b, 4)))(bias)
  plain = jax.grad(loss(lambda b: b))(bias)
  assert ours.shape == bias.shape
  np.testing.assert_allclose(ours, plain, rtol=1e-6, atol=1e-6)
  assert t5.broadcast_over_batch(bias, 1) is bias
  assert t5.broadcast_over_batch(scores, 4) is scores  # already per example
