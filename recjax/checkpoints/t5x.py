"""T5X checkpoints (msgpack + optional tensorstore/zarr arrays) <-> params.

A T5X checkpoint is a directory `checkpoint_<step>/` holding a flax-msgpack
file `checkpoint` ({'version': 3, 'optimizer': {'target': PARAMS, 'state':
...}}). Small or unpartitioned arrays are stored inline. Partitioned arrays
(all large ones in the released FLAN-T5 checkpoints) are written by
tensorstore to a zarr folder beside the file, named by the '/'-path with '.'
(`target.encoder.layers_0.attention.query.kernel`), and the msgpack holds the
tensorstore spec instead of the array:

  {'driver': 'zarr', 'dtype': 'float32',
   'kvstore': {'driver': 'file', 'path': 'target.encoder...kernel'},
   'metadata': {'compressor': {'id': 'gzip'}, 'shape': [...], 'chunks': [...]}}

The path is relative to the checkpoint directory (gcs specs carry a dummy
bucket; older tensorstore versions put 'path' at the top level). Only
`optimizer/target` (the parameters) is read; optimizer state is ignored.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional

from flax import serialization
import numpy as np
import tensorstore as ts

from recjax.checkpoints import flatten_params
from recjax.checkpoints import unflatten_params

VERSION = 3


def _is_ts_spec(x: Any) -> bool:
  return isinstance(x, Mapping) and 'driver' in x and (
      'kvstore' in x or 'path' in x)


def _relative_path(spec: Mapping[str, Any]) -> str:
  kvstore = spec.get('kvstore')
  if isinstance(kvstore, Mapping) and 'path' in kvstore:
    path = kvstore['path']
  elif 'path' in spec:
    path = spec['path']
  else:
    raise ValueError(f'tensorstore spec without a path: {spec}')
  return str(path)


def _read_ts(ckpt_dir: str, spec: Mapping[str, Any], name: str) -> np.ndarray:
  rel = _relative_path(spec)
  full = rel if os.path.isabs(rel) else os.path.join(ckpt_dir, rel)
  if not os.path.isdir(full):
    raise FileNotFoundError(
        f'{ckpt_dir}: parameter {name} is stored in tensorstore folder {rel!r},'
        ' which is missing (copy the whole checkpoint directory)')
  driver = spec.get('driver', 'zarr')
  if driver == 'cast':
    driver = spec['base'].get('driver', 'zarr')
  store = ts.open({'driver': driver,
                   'kvstore': {'driver': 'file', 'path': full}},
                  open=True, read=True).result()
  return np.asarray(store.read().result())


def resolve_checkpoint_file(path: str) -> str:
  """File, `checkpoint_N/` dir, or a model dir of `checkpoint_*/` (latest)."""
  if os.path.isfile(path):
    return path
  if os.path.isfile(os.path.join(path, 'checkpoint')):
    return os.path.join(path, 'checkpoint')
  if os.path.isdir(path):
    steps = []
    for name in os.listdir(path):
      m = re.fullmatch(r'checkpoint_(\d+)', name)
      if m and os.path.isfile(os.path.join(path, name, 'checkpoint')):
        steps.append(int(m.group(1)))
    if steps:
      return os.path.join(path, f'checkpoint_{max(steps)}', 'checkpoint')
  raise FileNotFoundError(f'{path}: not a T5X checkpoint (no msgpack '
                          '`checkpoint` file, nor checkpoint_<step>/ folders)')


def is_t5x_checkpoint(path: str) -> bool:
  try:
    resolve_checkpoint_file(path)
    return True
  except FileNotFoundError:
    return False


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    key = f'{prefix}{k}'
    if isinstance(v, Mapping) and not _is_ts_spec(v):
      out.update(_flatten(v, key + '/'))
    else:
      out[key] = v
  return out


def load_t5x_params(path: str) -> dict[str, np.ndarray]:
  """T5X checkpoint -> flat {'encoder/layers_0/...': float32 numpy}."""
  file = resolve_checkpoint_file(path)
  ckpt_dir = os.path.dirname(os.path.abspath(file))
  with open(file, 'rb') as f:
    try:
      state = serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises several unrelated types.
      raise ValueError(f'{file}: not a flax msgpack T5X checkpoint: {e}') from e
  if not isinstance(state, Mapping) or 'optimizer' not in state:
    raise ValueError(f'{file}: no "optimizer" entry (keys: '
                     f'{sorted(state) if isinstance(state, Mapping) else "?"})')
  version = state.get('version', 0)
  if version < 2:
    raise ValueError(f'{file}: T5X checkpoint version {version} is too old '
                     '(recjax reads versions 2 and 3)')
  target = state['optimizer'].get('target')
  if target is None:
    raise ValueError(f'{file}: no optimizer/target (parameters) entry')
  out = {}
  for name, value in _flatten(target).items():
    if _is_ts_spec(value):
      arr = _read_ts(ckpt_dir, value, name)
    elif isinstance(value, np.ndarray) or np.isscalar(value):
      arr = np.asarray(value)
    else:
      raise ValueError(f'{file}: parameter {name} has unexpected type '
                       f'{type(value).__name__}')
    out[name] = np.asarray(arr, dtype=np.float32)
  return out


def _write(params: Mapping[str, Any], file: str, step: int,
           tensorstore_min_bytes: Optional[int]) -> str:
  ckpt_dir = os.path.dirname(os.path.abspath(file))
  os.makedirs(ckpt_dir, exist_ok=True)
  written = {}
  for name, arr in flatten_params(params).items():
    arr = np.asarray(arr)
    if tensorstore_min_bytes is not None and arr.nbytes >= tensorstore_min_bytes:
      rel = 'target.' + name.replace('/', '.')
      spec = {
          'driver': 'zarr',
          'dtype': arr.dtype.name,
          'kvstore': {'driver': 'file', 'path': rel},
          'metadata': {'compressor': {'id': 'gzip'}, 'shape': list(arr.shape),
                       'chunks': list(arr.shape)},
      }
      full = dict(spec, kvstore={'driver': 'file',
                                 'path': os.path.join(ckpt_dir, rel)})
      store = ts.open(full, create=True, delete_existing=True).result()
      store.write(arr).result()
      written[name] = spec
    else:
      written[name] = arr
  state = {'version': VERSION,
           'optimizer': {'target': unflatten_params(written),
                         'state': {'step': np.asarray(step, np.int64),
                                   'param_states': {}}}}
  tmp = file + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(serialization.msgpack_serialize(state))
  os.replace(tmp, file)  # never a half-written checkpoint file
  return file


def save_t5x_checkpoint(params: Mapping[str, Any], ckpt_dir: str, *,
                        step: int = 0,
                        tensorstore_min_bytes: Optional[int] = None) -> str:
  """Writes a T5X checkpoint directory (`ckpt_dir/checkpoint`, version 3).

  Arrays of at least tensorstore_min_bytes bytes go to zarr folders beside
  the msgpack with T5X's relative spec (None: everything inline). Optimizer
  state is written empty ({'step': step, 'param_states': {}}). Returns the
  msgpack file's path.
  """
  return _write(params, os.path.join(ckpt_dir, 'checkpoint'), step,
                tensorstore_min_bytes)


def save_t5x_msgpack(params: Mapping[str, Any], path: str, *,
                     step: int = 0) -> str:
  """One msgpack file at `path`, all arrays inline (like the T5X fixture)."""
  return _write(params, path, step, None)


__all__ = ['load_t5x_params', 'save_t5x_checkpoint', 'save_t5x_msgpack',
           'resolve_checkpoint_file', 'is_t5x_checkpoint']
