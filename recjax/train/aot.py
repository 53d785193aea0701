"""Compile-ahead sizing: will this model, batch and mesh fit a TPU slice?

With the `libtpu` wheel installed (`pip install recjax[tpu_aot]`), JAX can
describe a TPU slice it is not running on (`jax.experimental.topologies`) and
XLA:TPU can compile for it. This module builds the abstract train state and
batch exactly as `trainer.train()` does (same `setup_state`, shardings,
`make_train_step`, optimizer and donation), lowers and compiles the real
train step and the real decode (`predict.predict_batch`, beam search) for
the slice's devices, and reads per-chip bytes (`memory_analysis`) and FLOPs
(`cost_analysis`) from the compiled executables. No TPU is needed, so a
user sees before renting a slice whether a configuration fits.

Nothing here reads data: batches are ShapeDtypeStructs of the feature
converter's model feature lengths.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import importlib.util
import math
import os
import re
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recjax.train import optimizers
from recjax.train import partitioning
from recjax.train import trainer

GiB = 1 << 30
PARTITIONINGS = ('1d', '2d')


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation, as a JAX device sees it (megacore: one device a chip).

  HBM and bf16 peak are Cloud TPU's published per-chip figures (v5e 16 GB,
  197 TFLOP/s; v4 32 GiB, 275 TFLOP/s; v5p 95 GB, 459 TFLOP/s); the runtime
  reserves a little of the HBM, so a configuration within a few per cent of
  the limit should be treated as not fitting.
  """
  name: str
  device_kind: str
  hbm_bytes: int
  peak_bf16_flops: float
  megacore: bool        # two TensorCores act as one device
  ndim: int             # 2: 2-D torus (v5e), 3: 3-D torus


CHIPS: Dict[str, Chip] = {
    'v4': Chip('v4', 'TPU v4', 32 * GiB, 275e12, True, 3),
    'v5e': Chip('v5e', 'TPU v5 lite', 16 * GiB, 197e12, False, 2),
    'v5p': Chip('v5p', 'TPU v5', 95 * GiB, 459e12, True, 3),
}
_CHIP_ALIASES = {'v5litepod': 'v5e', 'v5lite': 'v5e', 'v5': 'v5p'}


@dataclasses.dataclass(frozen=True)
class Topology:
  chip: Chip
  shape: Tuple[int, ...]

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)

  @property
  def name(self) -> str:
    """libtpu's topology name, e.g. 'v5e:16x16'."""
    return f'{self.chip.name}:{"x".join(str(d) for d in self.shape)}'

  @property
  def accelerator_type(self) -> str:
    """Cloud's name, e.g. v5e-256 (chips) or v4-128 (TensorCores)."""
    cores = self.num_chips * (2 if self.chip.megacore else 1)
    return f'{self.chip.name}-{cores}'


def _default_shape(chip: Chip, num_chips: int) -> Tuple[int, ...]:
  """Cloud's default slice shape: double the smallest axis (last on ties)."""
  if num_chips < 1 or num_chips & (num_chips - 1):
    raise ValueError(f'{chip.name}: {num_chips} chips is not a power of two; '
                     'give the shape instead, e.g. v4:4x4x12')
  shape = [1, 1] if chip.ndim == 2 else [2, 2, 1]
  if num_chips < math.prod(shape):
    raise ValueError(f'{chip.name} slices have at least {math.prod(shape)} '
                     f'chips (got {num_chips})')
  while math.prod(shape) < num_chips:
    smallest = min(shape)
    i = max(j for j, d in enumerate(shape) if d == smallest)
    shape[i] *= 2
  return tuple(shape)


def parse_topology(name: str) -> Topology:
  """'v5e:4x4', 'v4:4x4x4' (chips per axis) or 'v5e-256', 'v4-128', 'v5p-128'
  (Cloud accelerator types: chips for v5e, TensorCores for v4/v5p)."""
  m = re.fullmatch(r'\s*([a-z0-9]+?)\s*([:-])\s*([0-9x]+)\s*', name.lower())
  if not m or m.group(1) not in {**CHIPS, **_CHIP_ALIASES}:
    raise ValueError(f'Unknown TPU topology {name!r}: expected e.g. v5e:4x4, '
                     f'v4:4x4x4, v5e-256 or v4-128, with a chip in '
                     f'{sorted(CHIPS)}')
  chip = CHIPS[_CHIP_ALIASES.get(m.group(1), m.group(1))]
  if m.group(2) == ':':
    shape = tuple(int(d) for d in m.group(3).split('x'))
    if len(shape) != chip.ndim or min(shape) < 1:
      raise ValueError(f'{name!r}: a {chip.name} topology has {chip.ndim} '
                       'positive axes, e.g. '
                       f'{"4x4" if chip.ndim == 2 else "4x4x4"}')
    return Topology(chip, shape)
  if 'x' in m.group(3):
    raise ValueError(f'{name!r}: use {m.group(1)}:AxB.. for a shape')
  n = int(m.group(3))
  if chip.megacore:
    if n % 2:
      raise ValueError(f'{name!r}: {chip.name}-N counts TensorCores (2 a '
                       'chip); N must be even')
    n //= 2
  return Topology(chip, _default_shape(chip, n))


def libtpu_available() -> bool:
  return importlib.util.find_spec('libtpu') is not None


def _quiet_libtpu() -> None:
  """Loading libtpu off a TPU VM warns that it cannot find the VM's metadata,
  and a second process loading it fails on /tmp/libtpu_lockfile (guarding
  real chips); compile-only topologies need neither, so say so first."""
  on_tpu_vm = glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*')
  if on_tpu_vm:
    return
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5litepod-1')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')


def topology_devices(topology: Topology) -> list:
  """Compile-only devices of the slice (one per chip; megacore on v4/v5p)."""
  if not libtpu_available():
    raise RuntimeError('Compile-ahead sizing needs the libtpu wheel that '
                       'matches jax: pip install "recjax[tpu_aot]" (or '
                       '"jax[tpu]")')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  _quiet_libtpu()
  chip = topology.chip
  kwargs = dict(chip_config_name='megacore' if chip.megacore else 'default',
                num_slices=1)
  if chip.ndim == 3:
    kwargs['chips_per_host_bounds'] = tuple(min(2, d) for d in
                                            topology.shape[:2]) + (1,)
    kwargs['wrap'] = tuple(d >= 4 for d in topology.shape)
  devices = list(topologies.get_topology_desc(
      platform='tpu', topology_name=topology.name, **kwargs).devices)
  if len(devices) != topology.num_chips or any(
      d.device_kind != chip.device_kind for d in devices):
    raise RuntimeError(
        f'{topology.name}: libtpu gave {len(devices)} devices of kind '
        f'{devices[0].device_kind!r}; expected {topology.num_chips} '
        f'{chip.device_kind!r}')
  return devices


# ------------------------------------------------------------------ reports
@dataclasses.dataclass
class StepReport:
  """Per-chip figures of one compiled step (bytes, FLOPs, seconds)."""
  kind: str                        # 'train' | 'decode'
  parameter_bytes: int             # this chip's shard of the parameters
  optimizer_bytes: int             # ... of the optimizer state (train only)
  argument_bytes: Optional[int] = None   # all inputs, as compiled (padded)
  output_bytes: Optional[int] = None
  alias_bytes: Optional[int] = None      # outputs written over donated inputs
  temp_bytes: Optional[int] = None
  code_bytes: Optional[int] = None
  peak_bytes: Optional[int] = None       # arguments+outputs-aliased+temp+code
  hbm_bytes: int = 0
  fits: Optional[bool] = None            # None: not compiled (state only)
  flops: Optional[float] = None          # per chip per step
  roofline_seconds: Optional[float] = None  # flops / chip's bf16 peak
  compile_seconds: float = 0.0
  error: Optional[str] = None            # e.g. XLA's out-of-memory message

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class SizingReport:
  model: str
  topology: str
  accelerator_type: str
  num_chips: int
  mesh: Dict[str, int]
  partitioning: str
  num_params: int
  batch_size: int
  task_feature_lengths: Dict[str, int]
  remat_policy: Optional[str]
  num_microbatches: Optional[int]
  train: Optional[StepReport] = None
  decode: Optional[StepReport] = None
  # None: the whole model was compiled. (a, b): its compiled figures are
  # extrapolated in depth from compiles with a and b layers (see
  # `size_model_by_depth`).
  extrapolated_from_layers: Optional[Tuple[int, int]] = None

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def tree_bytes_per_device(abstract_tree: Any, shardings: Any) -> int:
  """Bytes one device holds of a sharded tree (its shard of every leaf)."""
  total = 0
  for x, s in zip(jax.tree_util.tree_leaves(abstract_tree),
                  jax.tree_util.tree_leaves(
                      shardings, is_leaf=lambda v: isinstance(
                          v, jax.sharding.Sharding))):
    total += math.prod(s.shard_shape(tuple(x.shape))) * np.dtype(
        x.dtype).itemsize
  return int(total)


def num_params(abstract_params: Any) -> int:
  return int(sum(math.prod(x.shape)
                 for x in jax.tree_util.tree_leaves(abstract_params)))


# XLA:TPU's two out-of-memory compile errors: the whole program's use, or
# (when temporaries alone exceed the HBM) its temporaries.
_OOM = (re.compile(r'Used ([0-9.]+)([KMGT]?) of ([0-9.]+)([KMGT]?) hbm'),
        re.compile(r'HLO temporaries \(([0-9.]+)([KMGT]?)\) exceeds available '
                   r'HBM \(([0-9.]+)([KMGT]?)\)'))
_UNIT = {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}


def _parse_oom(message: str) -> Optional[Tuple[int, int]]:
  """(used, capacity) bytes from XLA:TPU's out-of-memory compile error;
  used is the temporaries alone in the second form, a lower bound."""
  for pattern in _OOM:
    m = pattern.search(message)
    if m:
      return (int(float(m.group(1)) * _UNIT[m.group(2)]),
              int(float(m.group(3)) * _UNIT[m.group(4)]))
  return None


def _cost(compiled) -> Optional[float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


def _compile(lowered_fn: Callable[[], Any], report: StepReport,
             chip: Chip) -> StepReport:
  """Compiles and fills `report`; an out-of-memory compile is a 'no'."""
  start = time.time()
  try:
    compiled = lowered_fn().compile()
  except Exception as e:  # pylint: disable=broad-except
    report.compile_seconds = time.time() - start
    message = str(e)
    oom = _parse_oom(message)
    if oom is None and 'RESOURCE_EXHAUSTED' not in message:
      raise
    report.error = message.split('\n')[0][:500]
    if oom is not None:
      report.peak_bytes = oom[0]
    report.fits = False
    return report
  report.compile_seconds = time.time() - start
  mem = compiled.memory_analysis()
  report.argument_bytes = int(mem.argument_size_in_bytes)
  report.output_bytes = int(mem.output_size_in_bytes)
  report.alias_bytes = int(mem.alias_size_in_bytes)
  report.temp_bytes = int(mem.temp_size_in_bytes)
  report.code_bytes = int(mem.generated_code_size_in_bytes)
  report.peak_bytes = (report.argument_bytes + report.output_bytes -
                       report.alias_bytes + report.temp_bytes +
                       report.code_bytes)
  report.fits = report.peak_bytes <= chip.hbm_bytes
  report.flops = _cost(compiled)
  if report.flops is not None:
    report.roofline_seconds = report.flops / chip.peak_bf16_flops
  return report


# ------------------------------------------------------------------ compile
def logical_axis_rules(partitioning_name: str) -> partitioning.LogicalAxisRules:
  """'1d': T5X's 1-D rules (params split over 'model' only); '2d': 2-D
  parameter partitioning ('embed' also over 'data', ZeRO-3 like)."""
  if partitioning_name not in PARTITIONINGS:
    raise ValueError(f'partitioning={partitioning_name!r}: expected one of '
                     f'{PARTITIONINGS}')
  dims = 1 if partitioning_name == '1d' else 2
  return partitioning.standard_logical_axis_rules(
      activation_partitioning_dims=1, parameter_partitioning_dims=dims)


def with_remat(model: Any, remat_policy: Optional[str]) -> Any:
  """The model with its module config's remat_policy replaced (None: keep)."""
  config = getattr(model.module, 'config', None)
  if remat_policy is None or config is None:
    return model
  if not hasattr(config, 'remat_policy'):
    raise ValueError(f'{type(config).__name__} has no remat_policy')
  model = dataclasses.replace(model) if dataclasses.is_dataclass(model) else (
      _shallow_copy(model))
  model.module = model.module.clone(
      config=dataclasses.replace(config, remat_policy=remat_policy))
  return model


def _shallow_copy(obj):
  new = object.__new__(type(obj))
  new.__dict__.update(obj.__dict__)
  return new


def default_optimizer_fn(params, frozen_patterns: Sequence[str] = ()
                        ) -> optax.GradientTransformation:
  """The run gins' optimizer: T5X-default Adafactor, constant rate."""
  return optimizers.build_optimizer(
      optimizers.adafactor(learning_rate=optimizers.constant()),
      frozen_patterns=frozen_patterns, params=params)


def size_model(model: Any, topology: Topology | str, *,
               num_partitions: int = 1,
               partitioning_name: str = '1d',
               batch_size: int,
               task_feature_lengths: Mapping[str, int],
               remat_policy: Optional[str] = None,
               num_microbatches: Optional[int] = None,
               optimizer_fn: Optional[Callable[[Any],
                                               optax.GradientTransformation]]
               = None,
               frozen_patterns: Sequence[str] = (),
               pack: bool = True,
               train: bool = True,
               decode: bool = True,
               decode_batch_size: Optional[int] = None,
               num_beams: int = 4,
               model_name: str = '',
               compile: bool = True,  # pylint: disable=redefined-builtin
               devices: Optional[Sequence[Any]] = None) -> SizingReport:
  """Compiles the train step (and beam-search decode) for `topology`.

  Args:
    model: a `BaseModel` (e.g. `%MODEL` of a run gin).
    topology: a `Topology` or its name (see `parse_topology`).
    num_partitions: model-parallel size (T5X's NUM_PARTITIONS).
    partitioning_name: '1d' or '2d' (see `logical_axis_rules`).
    batch_size: global batch (all chips).
    task_feature_lengths: e.g. {'inputs': 512, 'targets': 64}; the model's
      feature converter turns them into model feature lengths.
    remat_policy: override of the module config's ('none'|'full'|'minimal').
    num_microbatches: gradient accumulation, as `train.num_microbatches`.
    optimizer_fn: params -> optax transformation (default: Adafactor),
      freezing what `train` freezes.
    frozen_patterns: `train.frozen_patterns` (LoRA's frozen base is added as
      `train` adds it), for the train step's gradients.
    pack: packed training batches (the run gins' default).
    train: compile the train step (False: its state bytes only, e.g. to
      size decoding alone).
    decode: also compile `predict_batch` (beam search, `num_beams`), inputs
      of length task_feature_lengths['inputs'], max_decode_length of
      'targets', batch `decode_batch_size` (default `batch_size`).
    compile: False gives only the state's per-chip bytes (exact, from the
      shardings; seconds instead of minutes): no temporaries, peak or FLOPs.
    devices: the slice's devices (default: `topology_devices(topology)`).
  """
  if isinstance(topology, str):
    topology = parse_topology(topology)
  devices = list(devices) if devices is not None else topology_devices(
      topology)
  model = with_remat(model, remat_policy)
  part = partitioning.Partitioner(
      num_partitions=num_partitions,
      logical_axis_rules=logical_axis_rules(partitioning_name),
      devices=devices)
  data = part.data_partitions
  micro = num_microbatches or 1
  if batch_size % (data * micro):
    raise ValueError(f'batch_size {batch_size} is not divisible by the '
                     f'data-parallel size {data} x num_microbatches {micro} '
                     f'({topology.num_chips} chips / num_partitions '
                     f'{num_partitions})')
  if decode and (decode_batch_size or batch_size) % data:
    raise ValueError(f'decode batch {decode_batch_size or batch_size} is not '
                     f'divisible by the data-parallel size {data}')
  model = model.for_feature_lengths(dict(task_feature_lengths), pack)
  converter = model.feature_converter_cls(pack=pack)
  lengths = converter.get_model_feature_lengths(dict(task_feature_lengths))
  input_shapes = {k: (1, v) for k, v in lengths.items()}
  frozen = trainer.training_frozen_patterns(model, frozen_patterns)
  optimizer_fn = optimizer_fn or functools.partial(default_optimizer_fn,
                                                   frozen_patterns=frozen)
  setup = trainer.setup_state(model, part, optimizer_fn, input_shapes,
                              jax.random.PRNGKey(0))
  abstract = setup.abstract_state
  shardings = setup.state_shardings
  config = getattr(model.module, 'config', None)
  report = SizingReport(
      model=model_name, topology=topology.name,
      accelerator_type=topology.accelerator_type,
      num_chips=topology.num_chips, mesh=dict(part.mesh.shape),
      partitioning=partitioning_name, num_params=num_params(abstract.params),
      batch_size=batch_size, task_feature_lengths=dict(task_feature_lengths),
      remat_policy=getattr(config, 'remat_policy', None),
      num_microbatches=num_microbatches)
  param_bytes = tree_bytes_per_device(abstract.params, shardings.params)
  opt_bytes = tree_bytes_per_device(abstract.opt_state, shardings.opt_state)
  report.train = StepReport('train', param_bytes, opt_bytes,
                            hbm_bytes=topology.chip.hbm_bytes)
  if decode:
    report.decode = StepReport('decode', param_bytes, 0,
                               hbm_bytes=topology.chip.hbm_bytes)
  if not compile:
    return report
  if train:
    report.train = _compile_train_step(model, part, setup, lengths,
                                       batch_size, num_microbatches, frozen,
                                       topology.chip, report.train)
  if decode:
    report.decode = _compile_decode(model, part, abstract.params,
                                    shardings.params, decode_batch_size or
                                    batch_size, task_feature_lengths,
                                    num_beams, topology.chip, report.decode)
  return report


def _compile_train_step(model, part, setup, lengths, batch_size,
                        num_microbatches, frozen, chip, report):
  """The train step, jitted exactly as trainer.train() jits it."""
  shardings = setup.state_shardings
  step_fn = trainer.make_train_step(model, setup.tx, num_microbatches,
                                    part.data_sharding(),
                                    frozen_patterns=frozen)
  batch_shardings = {k: part.data_sharding() for k in lengths}
  p_train_step = part.partition(
      step_fn, in_shardings=(shardings, batch_shardings, part.replicated()),
      out_shardings=(shardings, part.replicated()), donate_argnums=(0,))
  batch = {k: jax.ShapeDtypeStruct((batch_size, v), jnp.int32)
           for k, v in lengths.items()}
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
  return _compile(lambda: p_train_step.lower(setup.abstract_state, batch, rng),
                  report, chip)


def _compile_decode(model, part, abstract_params, param_shardings, b,
                    task_feature_lengths, num_beams, chip, report):
  """Beam search (`predict.predict_batch`) over a batch of `b` prompts."""
  from recjax.infer import predict  # pylint: disable=g-import-not-at-top
  decode_fn = functools.partial(
      predict.predict_batch, model, decode_method='beam',
      num_decodes=num_beams, max_decode_length=task_feature_lengths[
          'targets'])
  p_decode = part.partition(
      lambda params, batch: decode_fn(params, batch),
      in_shardings=(param_shardings,
                    {'encoder_input_tokens': part.data_sharding()}),
      out_shardings=part.data_sharding())
  prompts = {'encoder_input_tokens': jax.ShapeDtypeStruct(
      (b, task_feature_lengths['inputs']), jnp.int32)}
  return _compile(lambda: p_decode.lower(abstract_params, prompts), report,
                  chip)


# ------------------------------------------------------------------ depth
DEPTH_FIELDS = ('num_layers', 'num_encoder_layers', 'num_decoder_layers')
_LINEAR_FIELDS = ('argument_bytes', 'output_bytes', 'alias_bytes',
                  'temp_bytes', 'flops')


def model_depth(model: Any) -> int:
  """The number of layers of the model's stacks (encoder and decoder alike)."""
  config = getattr(model.module, 'config', None)
  depths = {getattr(config, f) for f in DEPTH_FIELDS if hasattr(config, f)}
  if len(depths) != 1:
    raise ValueError(f'{type(config).__name__}: expected one layer count '
                     f'over {DEPTH_FIELDS}, got {sorted(depths)}')
  return int(depths.pop())


def with_depth(model: Any, layers: int) -> Any:
  """The model with every layer stack cut (or grown) to `layers` layers."""
  config = model.module.config
  model_depth(model)
  fields = {f: int(layers) for f in DEPTH_FIELDS if hasattr(config, f)}
  model = dataclasses.replace(model) if dataclasses.is_dataclass(model) else (
      _shallow_copy(model))
  model.module = model.module.clone(config=dataclasses.replace(config,
                                                               **fields))
  return model


def _extrapolate(a: StepReport, b: StepReport, state: StepReport,
                 la: int, lb: int, depth: int, chip: Chip) -> StepReport:
  """`state`'s exact bytes plus the compiled fields of `a` (la layers) and
  `b` (lb layers) extended linearly to `depth` layers."""
  out = dataclasses.replace(state, compile_seconds=a.compile_seconds +
                            b.compile_seconds)
  for bad in (a, b):
    if bad.error is not None:  # a shallower model already fails to fit
      out.error, out.fits = bad.error, False
      out.peak_bytes = bad.peak_bytes
      return out
  if b.temp_bytes < a.temp_bytes:
    # XLA scheduled the shallower program differently (seen for XXL on
    # v4-128): a line through the two says nothing about the full depth.
    out.error = (f'temporaries shrink with depth ({a.temp_bytes / GiB:.2f} '
                 f'GiB at {la} layers, {b.temp_bytes / GiB:.2f} at {lb}): '
                 'no estimate; compile the whole model or other depths')
    return out
  for f in _LINEAR_FIELDS:
    va, vb = getattr(a, f), getattr(b, f)
    if va is None or vb is None:
      continue
    v = vb + (vb - va) * (depth - lb) / (lb - la)
    setattr(out, f, v if f == 'flops' else int(round(v)))
  # Generated code is not linear in depth: FLAN-T5-XL's 24-layer train step
  # compiles to 224 MB for v5e-16, about what its 3-layer one needs, while
  # the 2 -> 3 layer growth extended to 24 layers would say 1.9 GB. The
  # deeper compile's code size stands in for it.
  out.code_bytes = b.code_bytes
  out.peak_bytes = (out.argument_bytes + out.output_bytes - out.alias_bytes +
                    out.temp_bytes + out.code_bytes)
  out.fits = out.peak_bytes <= chip.hbm_bytes
  if out.flops is not None:
    out.roofline_seconds = out.flops / chip.peak_bf16_flops
  return out


def check_depths(model: Any, layers: Sequence[int]
                 ) -> Tuple[Tuple[int, int], int]:
  """((a, b), the model's depth) for `size_model_by_depth`; a ValueError
  that says what is wrong otherwise."""
  layers = tuple(int(x) for x in layers)
  if len(layers) != 2 or not 0 < layers[0] < layers[1]:
    raise ValueError('expected two layer counts 0 < a < b, e.g. 2,3')
  return layers, model_depth(model)


def size_model_by_depth(model: Any, topology: Topology | str, *,
                        layers: Tuple[int, int] = (2, 3),
                        **kwargs) -> SizingReport:
  """`size_model` for a deep model from two shallow compiles.

  Compiling a 24- to 32-layer model for a pod takes XLA:TPU 15+ minutes and
  18+ GB of host memory (FLAN-T5-XL for v5e-16 on the 2-core development
  machine); the same model with 2 and 3 layers compiles in a fraction of
  that. Every layer of a stack has the same shapes, shardings and program,
  so FLOPs, arguments and outputs grow by the same amount per layer, and
  so do temporaries when layers keep their activations (remat 'full' or
  'none': a layer's saved input or its activations). The compiled fields
  are therefore extended linearly in depth from the two compiles
  (generated code is not: it takes the deeper compile's); parameter and
  optimizer bytes are exact (from the full model's shardings). The default
  depths are 2 and 3: a 1-layer stack compiles to a different program
  (FLOPs per layer from 1 -> 2 are 12% under the steady step from 2 on,
  measured on FLAN-T5-tiny). Checked against whole-model compiles in
  tests/test_aot.py and the README. An estimate: near the HBM limit XLA may
  rematerialize more than the shallow models needed, so a 'NO' close to
  the limit can still fit; a pair whose temporaries shrink with depth gives
  no estimate (`_extrapolate`).

  Decoding is compiled whole: the same estimate fitted it poorly
  (FLAN-T5-XXL on v5e-256, 2-D: 1.77 GiB from 2 and 3 layers, 2.99 GiB
  whole), and the whole compile is cheap (10-140 s for the README's grid:
  the loop body is one decode step). `extrapolated_from_layers` therefore
  describes the train step only.
  """
  if isinstance(topology, str):
    topology = parse_topology(topology)
  (la, lb), depth = check_depths(model, layers)
  train = kwargs.pop('train', True)
  decode = kwargs.pop('decode', True)
  if depth <= lb or not kwargs.get('compile', True) or not train:
    return size_model(model, topology, train=train, decode=decode, **kwargs)
  # The whole model: its exact state, and its decoding compiled (if asked).
  full = size_model(model, topology, train=False, decode=decode, **kwargs)
  ra = size_model(with_depth(model, la), topology, decode=False, **kwargs)
  rb = size_model(with_depth(model, lb), topology, decode=False, **kwargs)
  full.train = _extrapolate(ra.train, rb.train, full.train, la, lb, depth,
                            topology.chip)
  full.extrapolated_from_layers = (la, lb)
  return full


# ------------------------------------------------------------------ gin
RUN_GIN_PREFIXES = ('finetune', 'pretrain', 'ilm', 'rsllm', 'quickstart')


def with_run_gin(gin_files: Sequence[str]) -> List[str]:
  """The gin files, plus runs/finetune.gin when none of them is a run gin
  (a model gin alone says nothing of the batch, lengths or optimizer)."""
  files = list(gin_files)
  if not any(os.path.basename(f).startswith(RUN_GIN_PREFIXES) for f in files):
    files.append('runs/finetune.gin')
  return files


def model_from_gin(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
                   gin_search_paths: Sequence[str] = ()) -> Dict[str, Any]:
  """The run's model, batch, lengths, partitions, optimizer from gin.

  Clears gin, parses the files (model gin first, then a run gin such as
  runs/finetune.gin, added when none is given) and reads what `train` would
  be called with, without building its partitioner (that needs the slice's
  devices) or any data.
  """
  import gin  # pylint: disable=g-import-not-at-top
  from recjax.train import gin_utils  # pylint: disable=g-import-not-at-top
  files = with_run_gin(gin_files)
  bindings = list(gin_bindings)
  if not any(b.replace(' ', '').startswith('MODEL_DIR=') for b in bindings):
    bindings.append("MODEL_DIR = '/tmp/recjax_aot_unused'")
  gin.clear_config()
  gin_utils.parse_gin_flags(files, bindings, gin_search_paths)
  train_bindings = gin.get_bindings('train', resolve_references=False)

  def resolve(key, default=None):
    value = train_bindings.get(key, default)
    if hasattr(value, 'scoped_configurable_fn'):
      fn = value.scoped_configurable_fn
      return fn() if value.evaluate else fn
    return value

  part_bindings = gin.get_bindings('partitioning.Partitioner',
                                   resolve_references=False)
  rule_bindings = gin.get_bindings('partitioning.standard_logical_axis_rules')
  learning_rate_fn = resolve('learning_rate_fn') or optimizers.constant()
  optimizer = resolve('optimizer') or optimizers.adafactor
  model = resolve('model')
  frozen = tuple(resolve('frozen_patterns', ()) or ())
  train_frozen = trainer.training_frozen_patterns(model, frozen)

  def optimizer_fn(params):
    return optimizers.build_optimizer(optimizer(learning_rate=learning_rate_fn),
                                      frozen_patterns=train_frozen,
                                      params=params)

  return dict(
      model=model,
      frozen_patterns=frozen,
      batch_size=int(resolve('batch_size')),
      task_feature_lengths=dict(resolve('task_feature_lengths')),
      num_microbatches=resolve('num_microbatches'),
      num_partitions=int(part_bindings.get('num_partitions') or 1),
      partitioning_name=('2d' if rule_bindings.get(
          'parameter_partitioning_dims', 1) == 2 else '1d'),
      optimizer_fn=optimizer_fn,
      pack=bool(resolve('pack', True)))


# ------------------------------------------------------------------ format
def _gib(x: Optional[int]) -> str:
  return '-' if x is None else f'{x / GiB:.2f}'


TABLE_HEADER = ('| model | slice | partitioning | mesh (data x model) | batch | '
                'remat | params GiB | opt GiB | temp GiB | train peak GiB | '
                'HBM GiB | fits | TFLOP/step/chip | roofline s | '
                'decode peak GiB | decode fits |')


def table_row(r: SizingReport) -> str:
  t, d = r.train, r.decode
  tflops = '-' if t.flops is None else f'{t.flops / 1e12:.1f}'
  roof = '-' if t.roofline_seconds is None else f'{t.roofline_seconds:.3f}'
  model = r.model + (' ~' if r.extrapolated_from_layers else '')
  return (f'| {model} | {r.accelerator_type} ({r.topology}) | '
          f'{r.partitioning} | {r.mesh["data"]}x{r.mesh["model"]} | '
          f'{r.batch_size} | {r.remat_policy} | {_gib(t.parameter_bytes)} | '
          f'{_gib(t.optimizer_bytes)} | {_gib(t.temp_bytes)} | '
          f'{_peak(t)} | {_gib(t.hbm_bytes)} | '
          f'{_fits(t.fits)} | {tflops} | {roof} | '
          f'{_peak(d) if d else "-"} | '
          f'{_fits(d.fits) if d else "-"} |')


def _peak(step: StepReport) -> str:
  """The peak; '>=' when XLA reported only the temporaries of a program
  that does not fit (a lower bound)."""
  lower = step.error is not None and 'HLO temporaries' in step.error
  return ('>=' if lower and step.peak_bytes else '') + _gib(step.peak_bytes)


def _fits(fits: Optional[bool]) -> str:
  return '?' if fits is None else ('yes' if fits else 'NO')


def format_table(reports: Sequence[SizingReport]) -> str:
  sep = '|' + '---|' * (TABLE_HEADER.count('|') - 1)
  return '\n'.join([TABLE_HEADER, sep] + [table_row(r) for r in reports])
