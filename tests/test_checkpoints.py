"""recjax.checkpoints: the real T5X fixture (when ../shared is present), and
msgpack/tensorstore reading and writing, shape checks and partial loads on
random parameters (always)."""
from __future__ import annotations

import dataclasses
import os

from flax import serialization
import jax
import numpy as np
import pytest
import tensorstore as ts

from recjax import checkpoints
from recjax.checkpoints import t5x
from recjax.models import t5
from recjax.train import test_utils

# The T5X fixture's architecture (see shared/testdata/t5x_tiny/SOURCE.md).
FIXTURE_CFG = t5.T5Config(vocab_size=32128, emb_dim=8, num_heads=4, head_dim=3,
                          mlp_dim=16, num_encoder_layers=2,
                          num_decoder_layers=2, dtype='float32')
# Random parameters of the same architecture (small vocabulary) for the
# reader/writer tests, which must run without ../shared.
RANDOM_CFG = dataclasses.replace(FIXTURE_CFG, vocab_size=256)
GOLDEN = os.path.join(os.path.dirname(__file__), 'testdata',
                      't5x_tiny_golden.npz')


@pytest.fixture(scope='module')
def fixture_path(shared_dir):
  path = shared_dir / 'testdata' / 't5x_tiny' / 'checkpoint'
  if not path.exists():
    pytest.skip(f'{path} missing')
  return str(path)


@pytest.fixture(scope='module')
def fixture_params(fixture_path):
  return checkpoints.load_params(fixture_path,
                                 expected_shapes=t5.param_shapes(FIXTURE_CFG))


@pytest.fixture(scope='module')
def random_params():
  return test_utils.random_t5_params(RANDOM_CFG, seed=3)


def test_t5x_fixture_tree_equals_recjax_tree(fixture_path, fixture_params):
  # Same names and shapes as recjax's own tree (check_params passed), and
  # the values are the file's, bit for bit.
  with open(fixture_path, 'rb') as f:
    raw = serialization.msgpack_restore(f.read())['optimizer']['target']
  flat_raw = checkpoints.flatten_params(raw)
  flat = checkpoints.flatten_params(fixture_params)
  assert flat.keys() == flat_raw.keys() == t5.param_shapes(FIXTURE_CFG).keys()
  for k in flat:
    np.testing.assert_array_equal(flat[k], flat_raw[k], err_msg=k)
    assert flat[k].dtype == np.float32


def test_t5x_fixture_forward(fixture_params):
  """Logits of the real T5X checkpoint equal Hugging Face T5's on the same
  weights (tests/testdata/make_t5x_tiny_golden.py)."""
  golden = np.load(GOLDEN)
  model = t5.Transformer(FIXTURE_CFG)
  dec = golden['decoder_input_tokens']  # starts with 0, the start token
  targets = np.ones_like(dec)  # only their padding (none here) matters
  logits = jax.jit(lambda p: model.apply(
      {'params': p}, golden['encoder_input_tokens'], dec, targets,
      enable_dropout=False))(fixture_params)
  assert logits.shape == dec.shape + (32128,) and logits.dtype == np.float32
  logits = np.asarray(logits, np.float64)
  np.testing.assert_allclose(logits[..., golden['columns']],
                             golden['logits_columns'], rtol=0, atol=1e-4)
  np.testing.assert_allclose(
      np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) +
      logits.max(-1), golden['logsumexp'], rtol=0, atol=1e-4)
  # Positions differ (so the comparison is not of a constant).
  assert np.ptp(golden['logits_columns'][0, :, 0]) > 1e-3


def test_t5x_msgpack_round_trip_is_bit_exact(tmp_path, random_params):
  out = t5x.save_t5x_msgpack(random_params, str(tmp_path / 'ckpt.msgpack'))
  loaded = checkpoints.flatten_params(checkpoints.load_params(out))
  flat = checkpoints.flatten_params(random_params)
  assert loaded.keys() == flat.keys()
  for k in flat:
    np.testing.assert_array_equal(loaded[k], flat[k], err_msg=k)
  # A T5X model dir with checkpoint_<step>/ folders resolves to the latest.
  t5x.save_t5x_checkpoint(random_params, str(tmp_path / 'm' / 'checkpoint_5'))
  t5x.save_t5x_checkpoint({'x': np.zeros(1)}, str(tmp_path / 'm' /
                                                  'checkpoint_2'))
  assert t5x.resolve_checkpoint_file(str(tmp_path / 'm')).endswith(
      os.path.join('checkpoint_5', 'checkpoint'))
  assert checkpoints.detect_format(str(tmp_path / 'm')) == 't5x'


def _write_tensorstore_checkpoint(ckpt_dir, params, threshold):
  """Writes a T5X-layout checkpoint by hand: zarr via tensorstore + msgpack."""
  os.makedirs(ckpt_dir)
  target = {}
  for name, arr in checkpoints.flatten_params(params).items():
    arr = np.asarray(arr)
    if arr.size < threshold:
      target[name] = arr
      continue
    rel = 'target.' + name.replace('/', '.')
    # T5X writes bfloat16 for big models; cover the cast on read too.
    dtype = 'bfloat16' if name.startswith('decoder/logits_dense') else (
        'float32')
    store = ts.open({
        'driver': 'zarr', 'dtype': dtype,
        'kvstore': {'driver': 'file', 'path': os.path.join(ckpt_dir, rel)},
        'metadata': {'compressor': {'id': 'gzip'}, 'shape': list(arr.shape),
                     'chunks': [max(1, arr.shape[0] // 2)] + list(
                         arr.shape[1:])},
    }, create=True).result()
    store.write(arr.astype(store.dtype.numpy_dtype)).result()
    # The placeholder T5X leaves in the msgpack: the relative ts.Spec json.
    target[name] = {
        'driver': 'zarr', 'dtype': dtype,
        'kvstore': {'driver': 'file', 'path': rel},
        'metadata': {'compressor': {'id': 'gzip'}, 'shape': list(arr.shape),
                     'chunks': [max(1, arr.shape[0] // 2)] + list(
                         arr.shape[1:])},
    }
  state = {'version': 3, 'optimizer': {
      'target': checkpoints.unflatten_params(target),
      'state': {'step': np.asarray(1000), 'param_states': {}}}}
  with open(os.path.join(ckpt_dir, 'checkpoint'), 'wb') as f:
    f.write(serialization.msgpack_serialize(state))


def test_tensorstore_backed_checkpoint_loads(tmp_path, random_params):
  ckpt_dir = str(tmp_path / 'checkpoint_1000')
  _write_tensorstore_checkpoint(ckpt_dir, random_params, threshold=100)
  assert os.path.isdir(os.path.join(
      ckpt_dir, 'target.encoder.layers_0.mlp.wi_0.kernel'))
  loaded = checkpoints.flatten_params(checkpoints.load_params(
      str(tmp_path), expected_shapes=t5.param_shapes(RANDOM_CFG)))
  flat = checkpoints.flatten_params(random_params)
  for k in flat:
    want = flat[k]
    if k == 'decoder/logits_dense/kernel':
      want = np.asarray(want.astype(jax.numpy.bfloat16), np.float32)
    np.testing.assert_array_equal(loaded[k], want, err_msg=k)
    assert loaded[k].dtype == np.float32
  # recjax's own writer produces the same layout and reads back bit-exactly.
  t5x.save_t5x_checkpoint(random_params, str(tmp_path / 'own'),
                          tensorstore_min_bytes=512)
  assert os.path.isdir(str(tmp_path / 'own' /
                           'target.token_embedder.embedding'))
  own = checkpoints.flatten_params(checkpoints.load_params(
      str(tmp_path / 'own')))
  for k in flat:
    np.testing.assert_array_equal(own[k], flat[k], err_msg=k)
  # A missing zarr folder names the parameter.
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(str(tmp_path / 'own' / 'target.token_embedder.embedding'))
  with pytest.raises(FileNotFoundError, match='token_embedder/embedding'):
    checkpoints.load_params(str(tmp_path / 'own'))


def test_check_params_lists_every_problem(random_params):
  flat = checkpoints.flatten_params(random_params)
  del flat['encoder/layers_1/mlp/wo/kernel']
  del flat['decoder/decoder_norm/scale']
  flat['decoder/extra/kernel'] = np.zeros((2, 2), np.float32)
  flat['encoder/layers_0/attention/query/kernel'] = np.zeros((8, 13))
  with pytest.raises(ValueError) as err:
    checkpoints.check_params(flat, t5.param_shapes(RANDOM_CFG))
  msg = str(err.value)
  for part in ('2 missing', 'encoder/layers_1/mlp/wo/kernel',
               'decoder/decoder_norm/scale', '1 unexpected',
               'decoder/extra/kernel', '1 wrong shape',
               'encoder/layers_0/attention/query/kernel (checkpoint (8, 13), '
               'model (8, 12))'):
    assert part in msg, (part, msg)
  # Loading against a different architecture fails the same way.
  other = t5.T5Config(vocab_size=256, emb_dim=8, num_heads=4, head_dim=3,
                      mlp_dim=32, num_encoder_layers=3, num_decoder_layers=2)
  with pytest.raises(ValueError, match='encoder/layers_2/mlp/wo/kernel'):
    checkpoints.check_params(random_params, t5.param_shapes(other))


def test_partial_load_and_merge(tmp_path, random_params):
  flat = checkpoints.flatten_params(random_params)
  partial = {k: v for k, v in flat.items() if k.startswith('encoder/')}
  partial['adapter/kernel'] = np.ones((2, 2), np.float32)
  path = t5x.save_t5x_msgpack(checkpoints.unflatten_params(partial),
                              str(tmp_path / 'partial'))
  shapes = t5.param_shapes(RANDOM_CFG)
  with pytest.raises(ValueError, match='missing'):
    checkpoints.load_params(path, expected_shapes=shapes)
  loaded = checkpoints.load_params(path, expected_shapes=shapes, strict=False)
  assert set(checkpoints.flatten_params(loaded)) == {
      k for k in partial if k != 'adapter/kernel'}
  base = checkpoints.unflatten_params(
      {k: np.zeros(s, np.float32) for k, s in shapes.items()})
  merged = checkpoints.flatten_params(checkpoints.merge_params(base, loaded))
  np.testing.assert_array_equal(merged['encoder/encoder_norm/scale'],
                                flat['encoder/encoder_norm/scale'])
  assert not merged['decoder/decoder_norm/scale'].any()
  # Wrong shapes are never accepted, even when not strict.
  bad = dict(partial, **{'encoder/encoder_norm/scale': np.ones(3, np.float32)})
  path = t5x.save_t5x_msgpack(checkpoints.unflatten_params(bad),
                              str(tmp_path / 'bad'))
  with pytest.raises(ValueError, match='wrong shape'):
    checkpoints.load_params(path, expected_shapes=shapes, strict=False)


def test_unknown_path_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='not a Hugging Face'):
    checkpoints.load_params(str(tmp_path))
  (tmp_path / 'junk').write_bytes(b'\x00not msgpack')
  with pytest.raises(ValueError, match='junk'):
    checkpoints.load_params(str(tmp_path / 'junk'))
