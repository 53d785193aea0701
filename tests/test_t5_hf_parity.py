"""Golden parity: recjax T5 logits == Hugging Face T5ForConditionalGeneration.

The fixture tests/testdata/hf_tiny_t5 is made by tests/testdata/make_hf_tiny_t5.py
(torch + transformers in a separate venv; never a recjax dependency).
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from recjax import checkpoints
from recjax.checkpoints import hf
from recjax.models import t5

HF_DIR = os.path.join(os.path.dirname(__file__), 'testdata', 'hf_tiny_t5')


@pytest.fixture(scope='module')
def reference():
  return dict(np.load(os.path.join(HF_DIR, 'reference.npz')))


@pytest.fixture(scope='module')
def config():
  return hf.t5_config_from_hf(HF_DIR, dtype='float32')


@pytest.fixture(scope='module')
def forward(config):
  model = t5.Transformer(config)
  return jax.jit(lambda p, e, d, t: model.apply({'params': p}, e, d, t,
                                                enable_dropout=False))


def test_config_from_hf(config):
  assert (config.vocab_size, config.emb_dim, config.num_heads, config.head_dim,
          config.mlp_dim, config.num_encoder_layers,
          config.num_decoder_layers) == (128, 32, 4, 8, 64, 2, 2)
  assert config.mlp_activations == ('gelu', 'linear')
  assert not config.logits_via_embedding
  assert (config.relative_attention_num_buckets,
          config.relative_attention_max_distance) == (32, 128)


def test_logits_match_hugging_face(config, reference, forward):
  params = checkpoints.load_params(HF_DIR,
                                   expected_shapes=t5.param_shapes(config))
  for tokens, key in (('encoder_input_tokens', 'logits'),
                      ('encoder_input_tokens_padded', 'logits_masked')):
    logits = forward(params, reference[tokens],
                     reference['decoder_input_tokens'],
                     reference['decoder_target_tokens'])
    assert logits.dtype == np.float32
    np.testing.assert_allclose(np.asarray(logits), reference[key], atol=1e-4,
                               rtol=0, err_msg=key)
  # Padding really matters for example 2 (so the masked case tests the mask).
  assert not np.allclose(reference['logits'][1], reference['logits_masked'][1],
                         atol=1e-2)


def test_sharded_safetensors_load_identically(tmp_path, config):
  tensors = hf.read_safetensors_dir(HF_DIR)
  names = sorted(tensors)
  shards = [names[:20], names[20:40], names[40:]]
  weight_map = {}
  for i, shard in enumerate(shards):
    fname = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
    # float32 shards (the committed file is bfloat16): values are identical.
    save_file({n: np.asarray(tensors[n], np.float32) for n in shard},
              str(tmp_path / fname))
    weight_map.update({n: fname for n in shard})
  with open(tmp_path / 'model.safetensors.index.json', 'w') as f:
    json.dump({'metadata': {}, 'weight_map': weight_map}, f)
  with open(os.path.join(HF_DIR, 'config.json')) as src, open(
      tmp_path / 'config.json', 'w') as dst:
    dst.write(src.read())
  assert checkpoints.detect_format(str(tmp_path)) == 'hf'
  sharded = checkpoints.flatten_params(checkpoints.load_params(
      str(tmp_path), expected_shapes=t5.param_shapes(config)))
  single = checkpoints.flatten_params(checkpoints.load_params(HF_DIR))
  assert sharded.keys() == single.keys()
  for k in single:
    np.testing.assert_array_equal(sharded[k], single[k], err_msg=k)
  # A shard listed in the index but missing its tensor is an error.
  del weight_map[names[0]]
  weight_map['encoder.block.9.layer.0.SelfAttention.q.weight'] = (
      'model-00001-of-00003.safetensors')
  with open(tmp_path / 'model.safetensors.index.json', 'w') as f:
    json.dump({'metadata': {}, 'weight_map': weight_map}, f)
  with pytest.raises(ValueError, match='encoder.block.9'):
    hf.read_safetensors_dir(str(tmp_path))


def test_name_table_transposes_and_relpos(config):
  tensors = hf.read_safetensors_dir(HF_DIR)
  params = checkpoints.flatten_params(checkpoints.load_params(HF_DIR))
  np.testing.assert_array_equal(
      params['encoder/layers_1/attention/query/kernel'],
      np.asarray(tensors['encoder.block.1.layer.0.SelfAttention.q.weight'],
                 np.float32).T)
  np.testing.assert_array_equal(
      params['decoder/relpos_bias/rel_embedding'],
      np.asarray(tensors['decoder.block.0.layer.0.SelfAttention.'
                         'relative_attention_bias.weight'], np.float32).T)
  np.testing.assert_array_equal(
      params['decoder/logits_dense/kernel'],
      np.asarray(tensors['lm_head.weight'], np.float32).T)
  assert all(v.dtype == np.float32 for v in params.values())


def test_tied_hf_model_maps_to_logits_via_embedding(tmp_path, reference):
  """Original-T5 style: no lm_head, logits = (y * d**-0.5) @ shared.T."""
  tensors = {k: np.asarray(v, np.float32)
             for k, v in hf.read_safetensors_dir(HF_DIR).items()
             if k != 'lm_head.weight'}
  save_file(tensors, str(tmp_path / 'model.safetensors'))
  with open(os.path.join(HF_DIR, 'config.json')) as f:
    cfg_json = json.load(f)
  cfg_json['tie_word_embeddings'] = True
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(cfg_json, f)
  tied_cfg = hf.t5_config_from_hf(str(tmp_path), dtype='float32')
  assert tied_cfg.logits_via_embedding
  tied = checkpoints.load_params(str(tmp_path),
                                 expected_shapes=t5.param_shapes(tied_cfg))
  untied_cfg = hf.t5_config_from_hf(str(tmp_path), dtype='float32',
                                    logits_via_embedding=False)
  untied = checkpoints.load_params(str(tmp_path), untie=True,
                                   expected_shapes=t5.param_shapes(untied_cfg))
  args = (reference['encoder_input_tokens'][:1],
          reference['decoder_input_tokens'][:1],
          reference['decoder_target_tokens'][:1])
  run = lambda cfg, p: jax.jit(lambda p, *a: t5.Transformer(cfg).apply(
      {'params': p}, *a, enable_dropout=False))(p, *args)
  a, b = run(tied_cfg, tied), run(untied_cfg, untied)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.parametrize('acts', [('gelu', 'linear'), ('relu',)])
def test_name_table_covers_exactly_the_param_tree(acts):
  cfg = t5.T5Config(vocab_size=128, emb_dim=8, num_heads=2, head_dim=4,
                    mlp_dim=16, num_encoder_layers=3, num_decoder_layers=2,
                    mlp_activations=acts)
  targets = [path for path, _ in hf.hf_name_table(cfg).values()]
  assert len(targets) == len(set(targets))
  assert set(targets) == set(t5.param_shapes(cfg))


def test_unknown_hf_tensors_are_listed(config):
  tensors = dict(hf.read_safetensors_dir(HF_DIR))
  tensors['encoder.block.7.layer.0.SelfAttention.q.weight'] = np.zeros((1, 1))
  tensors['decoder.adapter.weight'] = np.zeros((1, 1))
  with pytest.raises(ValueError) as err:
    hf.hf_to_params(tensors, config)
  assert 'encoder.block.7.layer.0.SelfAttention.q.weight' in str(err.value)
  assert 'decoder.adapter.weight' in str(err.value)
  lenient = hf.hf_to_params(tensors, config, strict=False)
  assert set(lenient) == set(t5.param_shapes(config))
