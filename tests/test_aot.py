"""Compile-ahead sizing (recjax.train.aot) on a TPU topology, without a TPU."""
import dataclasses
import math

import gin
import pytest

from recjax.models import t5
from recjax.train import aot

# Names the 1-D rules put on 'model'; 2-D also puts 'embed' on 'data'.
MODEL_AXES = {'vocab', 'mlp', 'heads', 'joined_kv'}


@pytest.mark.parametrize('name, canonical, shape, cloud', [
    ('v5e:2x2', 'v5e:2x2', (2, 2), 'v5e-4'),
    ('v5e-16', 'v5e:4x4', (4, 4), 'v5e-16'),
    ('v5e-256', 'v5e:16x16', (16, 16), 'v5e-256'),
    ('v5litepod-32', 'v5e:4x8', (4, 8), 'v5e-32'),
    ('v4-128', 'v4:4x4x4', (4, 4, 4), 'v4-128'),   # 128 TensorCores, 64 chips
    ('v4-32', 'v4:2x2x4', (2, 2, 4), 'v4-32'),
    ('v5p-128', 'v5p:4x4x4', (4, 4, 4), 'v5p-128'),
    ('v5p-256', 'v5p:4x4x8', (4, 4, 8), 'v5p-256'),
    ('v4:4x4x8', 'v4:4x4x8', (4, 4, 8), 'v4-256'),
])
def test_parse_topology(name, canonical, shape, cloud):
  t = aot.parse_topology(name)
  assert (t.name, t.shape, t.accelerator_type) == (canonical, shape, cloud)
  assert t.num_chips == math.prod(shape)


@pytest.mark.parametrize('name, message', [
    ('v9:4x4', 'Unknown TPU topology'),
    ('v5e:4x4x4', 'a v5e topology has 2 positive axes'),
    ('v4-127', 'must be even'),
    ('v5e-24', 'not a power of two'),
])
def test_parse_topology_errors(name, message):
  with pytest.raises(ValueError, match=message):
    aot.parse_topology(name)


def _expected_param_bytes(config, model_size, data_size, two_d):
  """Per-chip float32 bytes from the logical axis names, by hand."""
  axes = t5.logical_axes(config)
  shapes = t5.param_shapes(config)
  total = 0
  import jax
  flat = jax.tree_util.tree_flatten_with_path(
      axes, is_leaf=lambda x: x is None or isinstance(
          x, jax.sharding.PartitionSpec))[0]
  for path, spec in flat:
    shape = shapes['/'.join(k.key for k in path)]
    size = math.prod(shape)
    used = set()
    for dim, name in zip(shape, tuple(spec or ())):
      if name in MODEL_AXES and 'model' not in used and dim % model_size == 0:
        used.add('model')
        size //= model_size
      elif (two_d and name == 'embed' and 'data' not in used and
            dim % data_size == 0):
        used.add('data')
        size //= data_size
    total += 4 * size
  return total


@pytest.fixture(scope='module')
def tiny():
  cfg = aot.model_from_gin(['models/flan_t5_tiny.gin'],
                           ['VOCAB_SIZE = 256'])
  yield cfg
  gin.clear_config()


@pytest.fixture(scope='module')
def devices():
  pytest.importorskip('libtpu', reason='libtpu is not installed: pip install '
                      "'.[tpu_aot]' to compile for TPU topologies")
  return aot.topology_devices(aot.parse_topology('v5e:2x2'))


def test_topology_devices(devices):
  assert len(devices) == 4
  assert {d.device_kind for d in devices} == {'TPU v5 lite'}


def test_two_d_parameter_bytes_by_hand(tiny, devices):
  """Per-chip state bytes follow the rules: no compile needed for this."""
  import jax
  from recjax.train import partitioning
  from recjax.train import trainer
  config = tiny['model'].module.config
  assert config.vocab_size == 256
  for part, two_d in (('1d', False), ('2d', True)):
    p = partitioning.Partitioner(
        num_partitions=2, logical_axis_rules=aot.logical_axis_rules(part),
        devices=devices)
    setup = trainer.setup_state(tiny['model'], p, aot.default_optimizer_fn,
                                {'encoder_input_tokens': (1, 8),
                                 'decoder_input_tokens': (1, 8),
                                 'decoder_target_tokens': (1, 8)},
                                jax.random.PRNGKey(0))
    got = aot.tree_bytes_per_device(setup.abstract_state.params,
                                    setup.state_shardings.params)
    assert got == _expected_param_bytes(config, 2, 2, two_d), part
  total = 4 * aot.num_params(setup.abstract_state.params)
  assert total == 4 * sum(math.prod(s) for s in t5.param_shapes(
      config).values())
  assert _expected_param_bytes(config, 2, 2, True) < _expected_param_bytes(
      config, 2, 2, False) < total


def test_compile_tiny_on_v5e_2x2(tiny, devices):
  r = aot.size_model(tiny['model'], 'v5e:2x2', num_partitions=2,
                     partitioning_name='1d', batch_size=8,
                     task_feature_lengths={'inputs': 32, 'targets': 8},
                     optimizer_fn=tiny['optimizer_fn'], num_beams=2,
                     model_name='tiny', devices=devices)
  config = tiny['model'].module.config
  assert r.mesh == {'data': 2, 'model': 2}
  assert r.num_params == sum(math.prod(s) for s in
                             t5.param_shapes(config).values())
  t = r.train
  # Every kernel of the tiny model divides by 2: each chip holds half of
  # them, and all of the replicated layer norms and nothing else.
  assert t.parameter_bytes == _expected_param_bytes(config, 2, 2, False)
  replicated = 4 * sum(math.prod(s) for k, s in t5.param_shapes(
      config).items() if 'layer_norm' in k or k.endswith('norm/scale'))
  assert t.parameter_bytes == (4 * r.num_params - replicated) // 2 + replicated
  assert t.error is None and t.fits
  assert t.hbm_bytes == 16 * aot.GiB
  # The compiled inputs hold at least the state and this chip's batch
  # (TPU layouts pad small arrays); the donated state is updated in place.
  batch_bytes = 8 * 4 * (8 // 2) * 32  # 8 int32 features of [4, <=32]
  assert t.argument_bytes >= t.parameter_bytes + t.optimizer_bytes
  assert t.argument_bytes <= 4 * (t.parameter_bytes + t.optimizer_bytes +
                                  batch_bytes)
  assert t.alias_bytes >= t.parameter_bytes
  assert 0 < t.peak_bytes < t.hbm_bytes
  assert t.flops > 0
  assert t.roofline_seconds == pytest.approx(t.flops / 197e12)
  d = r.decode
  assert d.error is None and d.fits
  assert d.parameter_bytes == t.parameter_bytes and d.optimizer_bytes == 0
  assert d.argument_bytes >= d.parameter_bytes
  row = aot.table_row(r)
  assert '| tiny | v5e-4 (v5e:2x2) | 1d | 2x2 | 8 |' in row and '| yes |' in row
  # Without compiling: the same state bytes, nothing else known.
  s = aot.size_model(tiny['model'], 'v5e:2x2', num_partitions=2,
                     batch_size=8, task_feature_lengths={'inputs': 32,
                                                         'targets': 8},
                     optimizer_fn=tiny['optimizer_fn'], compile=False,
                     devices=devices)
  assert (s.train.parameter_bytes, s.train.optimizer_bytes) == (
      t.parameter_bytes, t.optimizer_bytes)
  assert s.train.fits is None and s.train.peak_bytes is None
  assert s.decode.parameter_bytes == t.parameter_bytes


def test_extrapolate_is_linear_in_depth():
  chip = aot.parse_topology('v5e-16').chip
  state = aot.StepReport('train', parameter_bytes=600, optimizer_bytes=60,
                         hbm_bytes=1000)
  one = aot.StepReport('train', 100, 10, argument_bytes=120, output_bytes=110,
                       alias_bytes=110, temp_bytes=50, code_bytes=5,
                       flops=2e12, compile_seconds=1.0)
  two = aot.StepReport('train', 200, 20, argument_bytes=220, output_bytes=210,
                       alias_bytes=210, temp_bytes=80, code_bytes=7,
                       flops=3e12, compile_seconds=2.0)
  got = aot._extrapolate(one, two, state, 1, 2, 6, chip)
  # Per layer: +100 arguments, +100 outputs and aliases, +30 temp, +1e12
  # FLOPs; 6 layers = 2 layers + 4 more. Code: the 2-layer compile's.
  assert (got.argument_bytes, got.output_bytes, got.alias_bytes,
          got.temp_bytes, got.code_bytes) == (620, 610, 610, 200, 7)
  assert got.flops == 7e12
  assert got.peak_bytes == 620 + 610 - 610 + 200 + 7
  assert (got.parameter_bytes, got.optimizer_bytes) == (600, 60)
  assert got.fits and got.compile_seconds == 3.0
  assert got.roofline_seconds == pytest.approx(7e12 / chip.peak_bf16_flops)
  oom = aot.StepReport('train', 100, 10, peak_bytes=2 ** 40, fits=False,
                       error='RESOURCE_EXHAUSTED: ...')
  got = aot._extrapolate(one, oom, state, 1, 2, 6, chip)
  assert got.fits is False and got.error.startswith('RESOURCE_EXHAUSTED')
  shrinking = dataclasses.replace(two, temp_bytes=40)
  got = aot._extrapolate(one, shrinking, state, 1, 2, 6, chip)
  assert got.fits is None and got.peak_bytes is None and got.flops is None
  assert 'temporaries shrink with depth' in got.error


def test_depth_extrapolation_against_the_full_compile(tiny, devices):
  """Sizing a 4-layer model from 2- and 3-layer compiles: the state is
  exact, FLOPs too (every layer from the second on is the same program),
  temporaries within 10% of compiling all 4 layers."""
  model = aot.with_depth(tiny['model'], 4)
  assert aot.model_depth(model) == 4
  assert aot.model_depth(tiny['model']) == tiny[
      'model'].module.config.num_encoder_layers
  kwargs = dict(num_partitions=2, partitioning_name='2d', batch_size=8,
                task_feature_lengths={'inputs': 32, 'targets': 8},
                optimizer_fn=tiny['optimizer_fn'], decode=False,
                model_name='tiny', devices=devices)
  full = aot.size_model(model, 'v5e:2x2', **kwargs)
  est = aot.size_model_by_depth(model, 'v5e:2x2', **kwargs)
  assert est.extrapolated_from_layers == (2, 3)
  assert full.extrapolated_from_layers is None
  assert est.num_params == full.num_params
  f, e = full.train, est.train
  assert (e.parameter_bytes, e.optimizer_bytes) == (f.parameter_bytes,
                                                     f.optimizer_bytes)
  assert e.argument_bytes == f.argument_bytes
  assert e.flops == pytest.approx(f.flops, rel=1e-3)
  assert e.temp_bytes == pytest.approx(f.temp_bytes, rel=0.1)
  # The tiny model's code does grow with depth (unlike a large model's, see
  # aot._extrapolate): the estimate is short by at most the code.
  assert f.peak_bytes - f.code_bytes < e.peak_bytes < 1.1 * f.peak_bytes
  assert '| tiny ~ |' in aot.table_row(est)
  state = aot.size_model_by_depth(model, 'v5e:2x2', compile=False, **kwargs)
  assert state.train.fits is None and state.extrapolated_from_layers is None
  assert state.train.parameter_bytes == f.parameter_bytes


def test_decode_alone_and_decode_compiled_whole_by_depth(tiny, devices):
  """train=False compiles beam search only (the train columns keep the
  state); size_model_by_depth compiles decoding whole, train from 2 + 3."""
  model = aot.with_depth(tiny['model'], 4)
  kwargs = dict(num_partitions=2, partitioning_name='2d', batch_size=8,
                task_feature_lengths={'inputs': 32, 'targets': 8},
                optimizer_fn=tiny['optimizer_fn'], num_beams=2,
                model_name='tiny', devices=devices)
  alone = aot.size_model(model, 'v5e:2x2', train=False, **kwargs)
  assert alone.train.fits is None and alone.train.temp_bytes is None
  assert alone.train.parameter_bytes == alone.decode.parameter_bytes > 0
  d = alone.decode
  assert d.error is None and d.fits and d.flops > 0
  row = aot.table_row(alone)
  assert row.split('|')[-3].strip() == f'{d.peak_bytes / aot.GiB:.2f}'
  assert row.split('|')[10].strip() == '-'  # train peak: not compiled
  est = aot.size_model_by_depth(model, 'v5e:2x2', **kwargs)
  assert est.extrapolated_from_layers == (2, 3)
  assert est.train.temp_bytes is not None
  for f in ('argument_bytes', 'output_bytes', 'temp_bytes', 'code_bytes',
            'peak_bytes', 'flops'):
    assert getattr(est.decode, f) == getattr(d, f), f
  same = aot.size_model_by_depth(model, 'v5e:2x2', train=False, **kwargs)
  assert same.extrapolated_from_layers is None
  assert same.decode.temp_bytes == d.temp_bytes


def test_lora_sizes_the_adapters_state_only(tiny, devices):
  """With runs/lora.gin the optimizer state is the adapters' alone, as
  train() freezes the base (with the default optimizer too)."""
  lora = aot.model_from_gin(['models/flan_t5_tiny.gin', 'runs/finetune.gin',
                             'runs/lora.gin'], ['VOCAB_SIZE = 256'])
  kw = dict(num_partitions=1, batch_size=8, compile=False, devices=devices,
            task_feature_lengths={'inputs': 32, 'targets': 8})
  full = aot.size_model(tiny['model'], 'v5e:2x2',
                        optimizer_fn=tiny['optimizer_fn'], **kw)
  r = aot.size_model(lora['model'], 'v5e:2x2',
                     optimizer_fn=lora['optimizer_fn'],
                     frozen_patterns=lora['frozen_patterns'], **kw)
  adapter_bytes = 4 * (r.num_params - full.num_params)
  assert adapter_bytes > 0
  # lora.gin's AdamW: two moments of the adapters plus a counter.
  assert 2 * adapter_bytes <= r.train.optimizer_bytes < 2 * adapter_bytes + 64
  assert r.train.optimizer_bytes < full.train.optimizer_bytes
  # The default optimizer (Adafactor, unfactored for small adapters) freezes
  # the base too: one moment of the adapters.
  default = aot.size_model(lora['model'], 'v5e:2x2', **kw)
  assert adapter_bytes <= default.train.optimizer_bytes < adapter_bytes + 4096


def test_cli_bad_topology_is_one_line():
  import subprocess
  import sys
  pytest.importorskip('libtpu', reason='libtpu is not installed')
  out = subprocess.run(
      [sys.executable, '-m', 'recjax.main', 'aot',
       '--gin_file=models/flan_t5_tiny.gin', '--topology=v9:4x4'],
      capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (
      "recjax aot: Unknown TPU topology 'v9:4x4': expected e.g. v5e:4x4, "
      "v4:4x4x4, v5e-256 or v4-128, with a chip in ['v4', 'v5e', 'v5p']")


def test_cli_bad_extrapolate_depth_is_one_line():
  import subprocess
  import sys
  pytest.importorskip('libtpu', reason='libtpu is not installed')
  out = subprocess.run(
      [sys.executable, '-m', 'recjax.main', 'aot',
       '--gin_file=models/flan_t5_tiny.gin', '--topology=v5e:2x2',
       '--extrapolate_depth=3,2'], capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (
      'recjax aot: --extrapolate_depth=3,2: expected two layer counts '
      '0 < a < b, e.g. 2,3')


def test_cli_decode_alone():
  import json
  import subprocess
  import sys
  pytest.importorskip('libtpu', reason='libtpu is not installed')
  base = [sys.executable, '-m', 'recjax.main', 'aot',
          '--gin_file=models/flan_t5_tiny.gin', '--topology=v5e:2x2',
          '--gin_bindings=VOCAB_SIZE = 256', '--batch_size=8',
          '--gin_bindings=TASK_FEATURE_LENGTHS = '
          "{'inputs': 32, 'targets': 8}", '--notrain']
  out = subprocess.run(base + ['--nodecode'], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (
      'recjax aot: --notrain --nodecode leaves nothing to compile')
  out = subprocess.run(base, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  (r,) = json.loads(out.stdout.strip().splitlines()[-1])['results']
  assert r['train']['temp_bytes'] is None and r['train']['fits'] is None
  assert r['train']['parameter_bytes'] == r['decode']['parameter_bytes'] > 0
  assert r['decode']['fits'] is True and r['decode']['flops'] > 0


def test_parse_oom_reads_both_xla_messages():
  # As XLA:TPU words them (libtpu 0.0.42): the program's use, or its
  # temporaries alone when those exceed the HBM before anything else.
  used = ('RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of '
          'memory in memory space hbm. Used 30.30G of 15.75G hbm. Exceeded '
          'hbm capacity by 14.55G.')
  temps = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory '
           'required for HLO temporaries (31.42G) exceeds available HBM '
           '(15.75G).')
  assert aot._parse_oom(used) == (int(30.30 * aot.GiB), int(15.75 * aot.GiB))
  assert aot._parse_oom(temps) == (int(31.42 * aot.GiB), int(15.75 * aot.GiB))
  assert aot._parse_oom('RESOURCE_EXHAUSTED: something else') is None
  step = aot.StepReport('decode', 0, 0, peak_bytes=int(31.42 * aot.GiB),
                        fits=False, error=temps)
  assert aot._peak(step) == '>=31.42'
  step.error = used
  assert aot._peak(step) == '31.42'
