"""Device mesh, T5X logical-axis rules and a jit-based partitioner.

The mesh always has the axes ('data', 'model'). Parameters carry logical axis
names (set by `nn.with_logical_partitioning` in the model); the rules below map
them onto mesh axes exactly as T5X's `standard_logical_axis_rules` does.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

from absl import logging
import flax.linen as nn
import gin
import jax
from jax.experimental import mesh_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

LogicalAxisRules = Sequence[Tuple[str, Optional[str]]]
DATA_AXIS = 'data'
MODEL_AXIS = 'model'


@gin.configurable(module='partitioning')
def standard_logical_axis_rules(
    activation_partitioning_dims: int = 1,
    parameter_partitioning_dims: int = 1,
    additional_rules: Optional[LogicalAxisRules] = None) -> LogicalAxisRules:
  """T5X's default logical-axis rules (same tables, same order).

  Args:
    activation_partitioning_dims: 2 also shards activations' 'embed' over
      'model'.
    parameter_partitioning_dims: 2 also shards parameters' 'embed' over
      'data' (2-D parameter sharding, ZeRO-3 like).
    additional_rules: appended after the standard rules.
  """
  if activation_partitioning_dims == 1 and parameter_partitioning_dims == 1:
    rules = [
        ('batch', 'data'),
        ('vocab', 'model'),
        ('embed', None),
        ('mlp', 'model'),
        ('heads', 'model'),
        ('kv', None),
        ('joined_kv', 'model'),
    ]
  elif activation_partitioning_dims == 2 and parameter_partitioning_dims == 1:
    rules = [
        ('batch', 'data'),
        ('vocab', 'model'),
        ('mlp', 'model'),
        ('heads', 'model'),
        ('kv', None),
        ('joined_kv', 'model'),
        ('embed', 'model'),
    ]
  elif activation_partitioning_dims == 1 and parameter_partitioning_dims == 2:
    rules = [
        ('batch', 'data'),
        ('vocab', 'model'),
        ('mlp', 'model'),
        ('heads', 'model'),
        ('kv', None),
        ('joined_kv', 'model'),
        ('embed', 'data'),
    ]
  elif activation_partitioning_dims == 2 and parameter_partitioning_dims == 2:
    rules = [
        ('batch', 'data'),
        ('vocab', 'model'),
        ('mlp', 'model'),
        ('heads', 'model'),
        ('kv', None),
        ('joined_kv', 'model'),
        ('embed', 'model'),
        ('embed', 'data'),
    ]
  else:
    raise ValueError(
        f'`activation_partitioning_dims` = {activation_partitioning_dims}, '
        f'`parameter_partitioning_dims` = {parameter_partitioning_dims} '
        'is not supported.')
  # Common rules for logical axes that are always replicated.
  rules.extend([
      ('relpos_buckets', None),
      ('abspos_buckets', None),
      ('length', None),
      ('layers', None),
      ('stack', None),
      ('mlp_activations', None),
      # Grouped-query attention's k/v heads (decoder_only.py): split like
      # 'heads' (replicated when the mesh axis does not divide them).
      ('kv_heads', 'model'),
      ('lora_rank', None),  # LoRA adapters: rank is tiny, keep it whole
  ])
  if additional_rules:
    rules.extend(additional_rules)
  return rules


def get_mesh(num_partitions: Optional[int] = None,
             model_parallel_submesh: Optional[Tuple[int, ...]] = None,
             mesh_shape: Optional[Tuple[int, int]] = None,
             devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ('data', 'model') mesh over `devices` (default: all devices).

  Exactly one of the size arguments may be set, as in T5X:
    * `num_partitions`: model-parallel size; data = #devices / num_partitions.
    * `model_parallel_submesh`: T5X's TPU (x, y, z, core) submesh; its product
      is the model-parallel size (device order comes from
      `mesh_utils.create_device_mesh`, which respects the TPU topology).
    * `mesh_shape`: explicit (data, model).
  With none set the mesh is pure data parallel (#devices, 1).
  """
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  given = [x is not None for x in (num_partitions, model_parallel_submesh,
                                    mesh_shape)]
  if sum(given) > 1:
    raise ValueError('Set only one of num_partitions, model_parallel_submesh, '
                     f'mesh_shape (got {num_partitions}, '
                     f'{model_parallel_submesh}, {mesh_shape}).')
  if model_parallel_submesh is not None:
    num_partitions = int(np.prod(model_parallel_submesh))
  if mesh_shape is None:
    num_partitions = num_partitions or 1
    if n % num_partitions:
      raise ValueError(f'{n} devices cannot be split into model-parallel groups '
                       f'of {num_partitions}.')
    mesh_shape = (n // num_partitions, num_partitions)
  mesh_shape = tuple(int(x) for x in mesh_shape)
  if len(mesh_shape) != 2 or math.prod(mesh_shape) != n:
    raise ValueError(f'mesh_shape {mesh_shape} does not cover {n} devices.')
  try:
    device_array = mesh_utils.create_device_mesh(
        mesh_shape, devices=devices, allow_split_physical_axes=True)
  except Exception:  # pylint: disable=broad-except
    device_array = np.asarray(devices).reshape(mesh_shape)
  return Mesh(device_array, (DATA_AXIS, MODEL_AXIS))


def _keystr(path) -> str:
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(str(k.name))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(k))
  return '/'.join(parts)


def _key_names(path) -> Tuple[str, ...]:
  return tuple(_keystr((k,)) for k in path)


@gin.configurable(module='partitioning')
class Partitioner:
  """Maps logical axis names to NamedShardings and jits partitioned functions.

  Attributes:
    mesh: the ('data', 'model') device mesh.
    logical_axis_rules: logical name -> mesh axis rules.
  """

  def __init__(self,
               num_partitions: Optional[int] = None,
               model_parallel_submesh: Optional[Tuple[int, ...]] = None,
               mesh_shape: Optional[Tuple[int, int]] = None,
               logical_axis_rules: Optional[LogicalAxisRules] = None,
               devices: Optional[Sequence[jax.Device]] = None):
    self.mesh = get_mesh(num_partitions, model_parallel_submesh, mesh_shape,
                         devices)
    self.logical_axis_rules = tuple(
        logical_axis_rules if logical_axis_rules is not None else
        standard_logical_axis_rules())
    self._warned = set()

  # --- sizes -----------------------------------------------------------------
  @property
  def data_partitions(self) -> int:
    return self.mesh.shape[DATA_AXIS]

  @property
  def model_partitions(self) -> int:
    return self.mesh.shape[MODEL_AXIS]

  def host_batch_size(self, global_batch_size: int) -> int:
    """Examples each host feeds per step (global / process_count)."""
    if global_batch_size % jax.process_count():
      raise ValueError(f'Batch size {global_batch_size} is not divisible by '
                       f'the {jax.process_count()} hosts.')
    if global_batch_size % self.data_partitions:
      raise ValueError(f'Batch size {global_batch_size} is not divisible by '
                       f'the data-parallel size {self.data_partitions}.')
    return global_batch_size // jax.process_count()

  def get_shard_info(self):
    """SeqIO ShardInfo for this host's share of the input."""
    import seqio  # pylint: disable=g-import-not-at-top
    return seqio.ShardInfo(index=jax.process_index(),
                           num_shards=jax.process_count())

  # --- shardings -------------------------------------------------------------
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def logical_to_mesh_spec(self, logical_spec: Optional[P],
                           shape: Tuple[int, ...], name: str = '') -> P:
    """Mesh PartitionSpec for a logical one; axes that do not divide are dropped.

    Dropping (replicating) an axis whose size the mesh axis does not divide
    keeps tiny models (e.g. 2 heads on an 8-way 'model' axis) runnable; it is
    logged once per parameter.
    """
    if logical_spec is None:
      return P()
    spec = nn.logical_to_mesh_axes(tuple(logical_spec), self.logical_axis_rules)
    out = []
    for dim, axis in zip(shape, tuple(spec) + (None,) * len(shape)):
      if axis is None:
        out.append(None)
        continue
      axes = axis if isinstance(axis, tuple) else (axis,)
      size = math.prod(self.mesh.shape[a] for a in axes)
      if dim % size:
        if name not in self._warned:
          self._warned.add(name)
          logging.warning('Replicating dim of size %d of %s (mesh axis %s has '
                          'size %d).', dim, name or logical_spec, axis, size)
        out.append(None)
      else:
        out.append(axis)
    while out and out[-1] is None:
      out.pop()
    return P(*out)

  def get_logical_specs(self, boxed_tree) -> Any:
    """Logical PartitionSpecs of a tree of (possibly boxed) variables."""
    return nn.get_partition_spec(boxed_tree)

  def param_shardings(self, boxed_or_abstract_params, logical_specs=None):
    """NamedShardings for params from their logical axis annotations.

    Args:
      boxed_or_abstract_params: params with `nn.LogicallyPartitioned` boxes, or
        unboxed (abstract) arrays when `logical_specs` is given.
      logical_specs: optional tree of logical PartitionSpecs.
    """
    if logical_specs is None:
      logical_specs = self.get_logical_specs(boxed_or_abstract_params)
      arrays = nn.unbox(boxed_or_abstract_params)
    else:
      arrays = boxed_or_abstract_params
    flat_specs = dict(
        jax.tree_util.tree_flatten_with_path(
            logical_specs, is_leaf=lambda x: isinstance(x, P) or x is None)[0])
    def one(path, x):
      spec = flat_specs.get(path)
      return NamedSharding(
          self.mesh, self.logical_to_mesh_spec(spec, np.shape(x), _keystr(path)))
    return jax.tree_util.tree_map_with_path(one, arrays)

  def opt_state_shardings(self, abstract_opt_state, params,
                          param_shardings) -> Any:
    """Shardings for an optax state, following the params it mirrors.

    A state leaf whose path ends with a parameter's path gets that parameter's
    sharding when shapes match (Adam moments, Adafactor `v`); Adafactor's
    factored `v_row`/`v_col` take the parameter's spec with the reduced
    dimension removed. Everything else (counts, placeholders) is replicated.
    """
    flat_params = {
        _key_names(p): (np.shape(x), s.spec)
        for (p, x), s in zip(
            jax.tree_util.tree_flatten_with_path(params)[0],
            jax.tree_util.tree_leaves(param_shardings))
    }
    max_len = max((len(k) for k in flat_params), default=0)

    def one(path, x):
      names = _key_names(path)
      shape = tuple(np.shape(x))
      for start in range(max(0, len(names) - max_len), len(names)):
        hit = flat_params.get(names[start:])
        if hit is None:
          continue
        pshape, pspec = hit
        spec = tuple(pspec) + (None,) * (len(pshape) - len(pspec))
        if shape == pshape:
          return NamedSharding(self.mesh, pspec)
        if len(shape) == len(pshape) - 1 and len(pshape) >= 2:
          order = np.argsort(pshape)
          if 'v_row' in names:
            removed = int(order[-1])
          elif 'v_col' in names:
            removed = int(order[-2])
          else:
            break
          new_spec = list(spec[:removed] + spec[removed + 1:])
          while new_spec and new_spec[-1] is None:
            new_spec.pop()
          if tuple(np.delete(np.asarray(pshape), removed)) == shape:
            return NamedSharding(self.mesh, P(*new_spec))
        break
      return self.replicated()

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)

  def data_sharding(self, ndim: int = 2) -> NamedSharding:
    """Batches are split over 'data' along their leading (batch) dimension."""
    del ndim
    return NamedSharding(self.mesh, P(DATA_AXIS))

  def batch_shardings(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
    return {k: self.data_sharding(np.ndim(v)) for k, v in batch.items()}

  def shard_batch(self, host_batch: Mapping[str, np.ndarray]
                 ) -> Mapping[str, jax.Array]:
    """Global jax.Arrays from this host's slice of the batch."""
    out = {}
    for k, v in host_batch.items():
      v = np.asarray(v)
      global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
      out[k] = jax.make_array_from_process_local_data(
          self.data_sharding(v.ndim), v, global_shape)
    return out

  # --- compilation -----------------------------------------------------------
  @contextlib.contextmanager
  def activation_rules(self):
    """Makes the models' `nn.with_logical_constraint`s real while tracing.

    Outside a mesh and rules context those constraints are no-ops, and XLA
    is then free to choose any layout for the activations around sharded
    weights (with 2-D parameter rules it gathers whole activations: see the
    README's "Scaling out"). Entered inside every function this partitioner
    jits, as T5X's partitioner does.
    """
    with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh), \
        nn.logical_axis_rules(self.logical_axis_rules):
      yield

  def with_activation_rules(self, fn: Callable) -> Callable:
    """`fn` traced under `activation_rules` (for a jit this class does not
    make, e.g. inference's cached ones)."""
    @functools.wraps(fn)
    def traced_under_rules(*args, **kwargs):
      with self.activation_rules():
        return fn(*args, **kwargs)
    return traced_under_rules

  def partition(self, fn: Callable, in_shardings, out_shardings,
                static_argnums=(), donate_argnums=()) -> Callable:
    """jax.jit with explicit shardings (T5X's `partition`, pjit's successor),
    traced under the activation rules."""
    return jax.jit(self.with_activation_rules(fn), in_shardings=in_shardings,
                   out_shardings=out_shardings, static_argnums=static_argnums,
                   donate_argnums=donate_argnums)

  def __repr__(self):
    return (f'Partitioner(mesh={dict(self.mesh.shape)}, '
            f'rules={list(self.logical_axis_rules)})')

