"""Golden parity: recjax decoder-only logits == Hugging Face Llama / Qwen2.

Fixtures tests/testdata/hf_tiny_{llama,llama3,qwen2} are made by
tests/testdata/make_hf_tiny_decoder.py (torch + transformers in a separate
venv; never a recjax dependency). Import, export and their error paths.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap

import jax
import numpy as np
import pytest

from recjax import checkpoints
from recjax.checkpoints import hf
from recjax.checkpoints import hf_decoder
from recjax.models import decoder_only
from recjax.models import t5

DATA = os.path.join(os.path.dirname(__file__), 'testdata')
NAMES = ('hf_tiny_llama', 'hf_tiny_llama3', 'hf_tiny_qwen2')
REF_PYTHON = os.environ.get('RECJAX_REF_PYTHON', '/tmp/refvenv/bin/python')


def _dir(name):
  return os.path.join(DATA, name)


def _ref(name):
  return dict(np.load(os.path.join(_dir(name), 'reference.npz')))


_FORWARD = {}


def _forward(config):
  if config not in _FORWARD:
    model = decoder_only.DecoderOnlyTransformer(config)
    _FORWARD[config] = jax.jit(lambda p, t, seg, pos: model.apply(
        {'params': p}, t, decoder_segment_ids=seg, decoder_positions=pos,
        enable_dropout=False))
  return lambda p, t, seg=None, pos=None: np.asarray(
      _FORWARD[config](p, t, seg, pos))


def test_config_from_hf():
  c = hf_decoder.decoder_config_from_hf(_dir('hf_tiny_llama'))
  assert (c.vocab_size, c.emb_dim, c.num_heads, c.num_kv_heads, c.head_dim,
          c.num_layers, c.mlp_dim) == (128, 32, 4, 4, 8, 2, 64)
  assert (c.rope_theta, c.rms_norm_eps, c.qkv_bias, c.tie_word_embeddings,
          c.rope_scaling, c.dtype) == (100.0, 1e-5, False, False, None,
                                       'float32')
  c = hf_decoder.decoder_config_from_hf(_dir('hf_tiny_llama3'))
  assert (c.num_heads, c.num_kv_heads, c.head_dim, c.tie_word_embeddings) == (
      4, 2, 16, True)
  assert c.rope_scaling_dict == {
      'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
      'high_freq_factor': 4.0, 'original_max_position_embeddings': 64}
  c = hf_decoder.decoder_config_from_hf(_dir('hf_tiny_qwen2'),
                                        dtype='bfloat16')
  assert (c.num_kv_heads, c.qkv_bias, c.tie_word_embeddings, c.rms_norm_eps,
          c.dtype) == (2, True, True, 1e-6, 'bfloat16')


@pytest.mark.parametrize('name', NAMES)
def test_logits_match_hugging_face(name):
  ref = _ref(name)
  config = hf_decoder.decoder_config_from_hf(_dir(name))
  params = checkpoints.load_params(_dir(name), config=config)
  fwd = _forward(config)
  tol = dict(atol=1e-4, rtol=0)
  np.testing.assert_allclose(fwd(params, ref['tokens']), ref['logits'], **tol)
  for kind in ('', '_left'):
    mask = ref['attention_mask' + kind]
    got = fwd(params, ref['tokens_padded' if not kind else
                           'tokens_left_padded'], mask)
    want = ref['logits_padded' if not kind else 'logits_left_padded']
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], err_msg=kind, **tol)
  # Left padding changes row 1 (the mask matters); row 0 is unpadded.
  assert not np.allclose(ref['logits_left_padded'][1, -1], ref['logits'][1, -1],
                         atol=1e-2)
  got = fwd(params, ref['tokens'], None, ref['position_ids'])
  np.testing.assert_allclose(got, ref['logits_offset'], **tol)
  assert ref['position_ids'].min() > 512
  assert not np.allclose(ref['logits_offset'], ref['logits'], atol=1e-2)
  got = fwd(params, ref['long_tokens'])[:, -8:]
  np.testing.assert_allclose(got, ref['logits_long_tail'], **tol)


def test_rotary_frequencies_turn_and_llama3_bands():
  llama = hf_decoder.decoder_config_from_hf(_dir('hf_tiny_llama'))
  inv = decoder_only.rope_inv_freq(llama)
  np.testing.assert_allclose(inv, 100.0**(-np.arange(0, 8, 2) / 8), rtol=1e-6)
  # Slowest frequency turns > 3 times within the fixture's 600 positions.
  assert 600 * inv.min() / (2 * np.pi) > 3
  l3 = hf_decoder.decoder_config_from_hf(_dir('hf_tiny_llama3'))
  base = 10000.0**(-np.arange(0, 16, 2) / 16)
  wavelen = 2 * np.pi / base
  got = decoder_only.rope_inv_freq(l3)
  high = wavelen < 64 / 4  # unchanged
  low = wavelen > 64 / 1   # divided by factor 8
  mid = ~high & ~low       # smoothed in between
  assert high.any() and low.any() and mid.any()
  np.testing.assert_allclose(got[high], base[high], rtol=1e-6)
  np.testing.assert_allclose(got[low], base[low] / 8, rtol=1e-6)
  smooth = (64 / wavelen[mid] - 1) / (4 - 1)
  np.testing.assert_allclose(
      got[mid], (1 - smooth) * base[mid] / 8 + smooth * base[mid], rtol=1e-5)


@pytest.mark.parametrize('name', ['hf_tiny_llama', 'hf_tiny_qwen2'])
def test_pad_swap_permutes_rows(name):
  """recjax id 0 <-> HF id p: logits by recjax id == HF logits by HF id."""
  ref = _ref(name)
  p = int(ref['tokens'][0, 1])  # a token the input holds, so the swap matters
  config = hf_decoder.decoder_config_from_hf(_dir(name), pad_swap_id=p)
  params = checkpoints.load_params(_dir(name), config=config)
  perm = np.arange(128)
  perm[[0, p]] = perm[[p, 0]]
  tokens = perm[ref['tokens']]
  got = _forward(config)(params, tokens)
  np.testing.assert_allclose(got, ref['logits'][..., perm], atol=1e-4, rtol=0)
  plain = checkpoints.load_params(_dir(name))
  emb, emb0 = (params['token_embedder']['embedding'],
               plain['token_embedder']['embedding'])
  np.testing.assert_array_equal(emb[[0, p]], emb0[[p, 0]])
  np.testing.assert_array_equal(emb[1:p], emb0[1:p])


def test_sharded_index_loads_like_one_file(tmp_path):
  src = _dir('hf_tiny_llama3')
  assert os.path.exists(os.path.join(src, 'model.safetensors.index.json'))
  tensors = hf.read_safetensors_dir(src)
  assert len({json.load(open(os.path.join(src, 'model.safetensors.index.json'))
                        )['weight_map'][n] for n in tensors}) >= 2
  hf.write_safetensors(tensors, str(tmp_path / 'model.safetensors'))
  shutil.copy(os.path.join(src, 'config.json'), tmp_path / 'config.json')
  a = checkpoints.flatten_params(checkpoints.load_params(src))
  b = checkpoints.flatten_params(checkpoints.load_params(str(tmp_path)))
  assert sorted(a) == sorted(b)
  assert 'decoder/logits_dense/kernel' not in a  # tied
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_export_import_round_trip_is_exact(name, dtype, tmp_path):
  config = hf_decoder.decoder_config_from_hf(_dir(name), pad_swap_id=3)
  params = checkpoints.load_params(_dir(name), config=config)
  out = hf_decoder.save_hf_decoder_checkpoint(params, config,
                                              str(tmp_path / 'out'),
                                              dtype=dtype)
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors']
  assert os.listdir(tmp_path) == ['out']  # no temporary left behind
  back = checkpoints.load_params(out, config=config)
  a, b = (checkpoints.flatten_params(params),
          checkpoints.flatten_params(back))
  assert sorted(a) == sorted(b)
  for k in a:  # fixture weights are bfloat16 values: exact in both dtypes
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # The HF-side tensors are the original checkpoint's (row swap undone).
  orig = hf.read_safetensors_dir(_dir(name))
  mine = hf.read_safetensors_dir(out)
  assert sorted(orig) == sorted(mine)
  for n in orig:
    np.testing.assert_array_equal(np.asarray(orig[n], np.float32),
                                  np.asarray(mine[n], np.float32), err_msg=n)
  hf_cfg = json.load(open(os.path.join(out, 'config.json')))
  assert hf_cfg['model_type'] == ('qwen2' if 'qwen2' in name else 'llama')
  assert hf_decoder.decoder_config_from_hf(
      hf_cfg, pad_swap_id=3) == config
  with pytest.raises(FileExistsError):
    hf_decoder.save_hf_decoder_checkpoint(params, config, out)
  hf_decoder.save_hf_decoder_checkpoint(params, config, out, overwrite=True)
  assert os.listdir(tmp_path) == ['out']


def test_export_refuses_lora_leaves_and_bad_dtype(tmp_path):
  config = hf_decoder.decoder_config_from_hf(_dir('hf_tiny_llama'))
  flat = checkpoints.flatten_params(checkpoints.load_params(_dir(
      'hf_tiny_llama')))
  with pytest.raises(ValueError, match='float16'):
    hf_decoder.save_hf_decoder_checkpoint(flat, config, str(tmp_path / 'a'),
                                          dtype='float16')
  flat['decoder/layers_0/self_attention/query/lora_a'] = np.zeros((32, 2))
  with pytest.raises(ValueError, match='lora_a'):
    hf_decoder.save_hf_decoder_checkpoint(flat, config, str(tmp_path / 'b'))
  assert not os.listdir(tmp_path)


@pytest.mark.skipif(not os.path.exists(REF_PYTHON),
                    reason='no reference python with torch + transformers '
                    '(set RECJAX_REF_PYTHON)')
@pytest.mark.parametrize('name', ['hf_tiny_llama3', 'hf_tiny_qwen2'])
def test_transformers_loads_export(name, tmp_path):
  """Optional: transformers reads the exported folder, gives the logits."""
  config = hf_decoder.decoder_config_from_hf(_dir(name))
  params = checkpoints.load_params(_dir(name), config=config)
  out = hf_decoder.save_hf_decoder_checkpoint(params, config,
                                              str(tmp_path / 'out'))
  script = textwrap.dedent(f"""
      import numpy as np, torch, transformers
      ref = np.load({os.path.join(_dir(name), 'reference.npz')!r})
      m = transformers.AutoModelForCausalLM.from_pretrained(
          {out!r}, torch_dtype=torch.float32).eval()
      with torch.no_grad():
        got = m(input_ids=torch.tensor(ref['tokens'], dtype=torch.long)).logits
      err = np.abs(got.numpy() - ref['logits']).max()
      assert err < 1e-4, err
      print('OK', err)
  """)
  res = subprocess.run([REF_PYTHON, '-c', script], capture_output=True,
                       text=True, timeout=300, check=False)
  if 'No module named' in res.stderr:
    pytest.skip(f'{REF_PYTHON} lacks torch/transformers')
  assert res.returncode == 0 and 'OK' in res.stdout, res.stderr[-2000:]


def test_config_mismatch_names_every_field():
  hf_cfg = json.load(open(os.path.join(_dir('hf_tiny_qwen2'), 'config.json')))
  config = hf_decoder.decoder_config_from_hf(hf_cfg, num_kv_heads=4,
                                             vocab_size=256,
                                             tie_word_embeddings=False)
  with pytest.raises(ValueError) as e:
    hf_decoder.check_config_matches(hf_cfg, config)
  msg = str(e.value)
  assert 'num_key_value_heads: checkpoint 2, model gin 4' in msg
  assert 'vocab_size: checkpoint 128, model gin 256' in msg
  assert 'tie_word_embeddings: checkpoint True, model gin False' in msg
  assert 'num_attention_heads' not in msg
  with pytest.raises(ValueError, match='num_key_value_heads'):
    checkpoints.load_params(_dir('hf_tiny_qwen2'), config=config)
  # Dtypes and pad_swap_id are the run's choice, not the checkpoint's.
  hf_decoder.check_config_matches(hf_cfg, hf_decoder.decoder_config_from_hf(
      hf_cfg, dtype='bfloat16', pad_swap_id=7, remat_policy='full'))


def test_wrong_family_is_refused():
  with pytest.raises(ValueError, match='T5Config'):
    checkpoints.load_params(_dir('hf_tiny_llama'),
                            config=t5.T5Config(vocab_size=128))
  with pytest.raises(ValueError, match="model_type='t5'"):
    checkpoints.load_params(
        os.path.join(DATA, 'hf_tiny_t5'),
        config=decoder_only.DecoderOnlyConfig(vocab_size=128))


@pytest.mark.parametrize('change,match', [
    ({'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0}}, 'yarn'),
    ({'attention_bias': True}, 'o_proj'),
    ({'hidden_act': 'gelu'}, 'hidden_act'),
    ({'model_type': 'gpt2'}, 'gpt2'),
])
def test_unsupported_hf_configs(change, match):
  hf_cfg = json.load(open(os.path.join(_dir('hf_tiny_llama'), 'config.json')))
  hf_cfg.update(change)
  with pytest.raises(ValueError, match=match):
    hf_decoder.decoder_config_from_hf(hf_cfg)


def _copy(tmp_path, name, edit):
  tensors = {k: np.asarray(v) for k, v in hf.read_safetensors_dir(
      _dir(name)).items()}
  edit(tensors)
  tmp_path.mkdir(parents=True, exist_ok=True)
  hf.write_safetensors(tensors, str(tmp_path / 'model.safetensors'))
  shutil.copy(os.path.join(_dir(name), 'config.json'),
              tmp_path / 'config.json')
  return str(tmp_path)


def test_bad_tensors_listed_in_one_error(tmp_path):
  def edit(t):
    del t['model.layers.1.mlp.up_proj.weight']
    del t['model.layers.0.self_attn.k_proj.bias']
    t['model.layers.0.self_attn.q_proj.weight'] = t[
        'model.layers.0.self_attn.q_proj.weight'][:-1]
    t['model.layers.0.self_attn.o_proj.bias'] = np.zeros((32,), np.float32)
  path = _copy(tmp_path, 'hf_tiny_qwen2', edit)
  with pytest.raises(ValueError) as e:
    checkpoints.load_params(path)
  msg = str(e.value)
  for needle in ('decoder/layers_1/mlp/wi_1/kernel',
                 'decoder/layers_0/self_attention/key/bias',
                 'model.layers.0.self_attn.o_proj.bias',
                 'decoder/layers_0/self_attention/query/kernel (checkpoint '
                 '(32, 31), model (32, 32))'):
    assert needle in msg, (needle, msg)
  assert path in msg


def test_tied_checkpoint_with_lm_head(tmp_path):
  same = _copy(tmp_path / 'same', 'hf_tiny_qwen2', lambda t: t.__setitem__(
      'lm_head.weight', t['model.embed_tokens.weight']))
  a = checkpoints.flatten_params(checkpoints.load_params(same))
  b = checkpoints.flatten_params(checkpoints.load_params(_dir('hf_tiny_qwen2')))
  assert sorted(a) == sorted(b)
  other = _copy(tmp_path / 'other', 'hf_tiny_qwen2', lambda t: t.__setitem__(
      'lm_head.weight', t['model.embed_tokens.weight'] * 2))
  with pytest.raises(ValueError, match='untied lm_head'):
    checkpoints.load_params(other)
  # Partial load: the unknown tensor is dropped with a warning.
  flat = checkpoints.flatten_params(checkpoints.load_params(other,
                                                           strict=False))
  assert sorted(flat) == sorted(b)


def test_expected_shapes_from_param_shapes():
  config = hf_decoder.decoder_config_from_hf(_dir('hf_tiny_llama'))
  params = checkpoints.load_params(
      _dir('hf_tiny_llama'),
      expected_shapes=decoder_only.param_shapes(config))
  assert params['decoder']['logits_dense']['kernel'].shape == (32, 128)
  assert params['decoder']['layers_0']['self_attention']['out'][
      'kernel'].shape == (32, 32)
