"""`recjax export`: a recjax training checkpoint -> a Hugging Face folder.

  recjax export --gin_file=models/flan_t5_small.gin --gin_file=runs/lora.gin \
      --checkpoint=/tmp/run --output=/tmp/run_hf --merge_lora

Restores the params (not the optimizer state) of a recjax model dir or step
dir, folds LoRA adapters into their kernels (`--merge_lora`; Hugging Face
formats have no place for them, so a checkpoint with adapters needs it) and
writes `model.safetensors` + `config.json` that transformers loads:
decoder-only configs through `recjax.checkpoints.hf_decoder`, T5 configs by
inverting `hf.hf_name_table`. The folder is written under a temporary name
and renamed when complete.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from recjax.models import lora as lora_lib

DTYPES = ('float32', 'bfloat16')
_ST_NAMES = {np.dtype(np.float32): 'F32', np.dtype(np.float16): 'F16',
             np.dtype(np.int32): 'I32', np.dtype(np.int64): 'I64'}


def _st_dtype(dtype) -> str:
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  if np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16):
    return 'BF16'
  if np.dtype(dtype) not in _ST_NAMES:
    raise ValueError(f'safetensors: unsupported dtype {dtype}')
  return _ST_NAMES[np.dtype(dtype)]


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Optional[Mapping[str, str]] = None) -> None:
  """One .safetensors file (8-byte header length, JSON header, raw LE data)."""
  header: dict[str, Any] = {'__metadata__': dict(metadata or {'format': 'pt'})}
  offset = 0
  arrays = []
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])
    arr = arr.astype(arr.dtype.newbyteorder('<'), copy=False)
    header[name] = {'dtype': _st_dtype(arr.dtype), 'shape': list(arr.shape),
                    'data_offsets': [offset, offset + arr.nbytes]}
    offset += arr.nbytes
    arrays.append(arr)
  blob = json.dumps(header, separators=(',', ':')).encode('utf-8')
  blob += b' ' * (-len(blob) % 8)  # keep the data 8-byte aligned
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(blob)))
    f.write(blob)
    for arr in arrays:
      f.write(arr.tobytes())


def _cast(arr: np.ndarray, dtype: str) -> np.ndarray:
  if dtype not in DTYPES:
    raise ValueError(f'dtype={dtype!r}: expected one of {DTYPES}')
  if dtype == 'bfloat16':
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    return np.asarray(arr, np.float32).astype(ml_dtypes.bfloat16)
  return np.asarray(arr, np.float32)


# ------------------------------------------------------------------ T5
_HF_FEED_FORWARD = {('gelu', 'linear'): ('gated-gelu', 'gelu_new'),
                    ('relu',): ('relu', 'relu'),
                    ('relu', 'linear'): ('gated-relu', 'relu'),
                    ('silu', 'linear'): ('gated-silu', 'silu')}


def hf_t5_config(config) -> dict:
  """The `config.json` of T5ForConditionalGeneration for a T5Config."""
  acts = tuple(config.mlp_activations)
  if acts not in _HF_FEED_FORWARD:
    raise ValueError(f'T5Config.mlp_activations={acts}: no Hugging Face '
                     f'feed_forward_proj for it (known: {list(_HF_FEED_FORWARD)})')
  proj, act = _HF_FEED_FORWARD[acts]
  return {
      'architectures': ['T5ForConditionalGeneration'],
      'model_type': 't5',
      'vocab_size': config.vocab_size,
      'd_model': config.emb_dim,
      'd_kv': config.head_dim,
      'd_ff': config.mlp_dim,
      'num_heads': config.num_heads,
      'num_layers': config.num_encoder_layers,
      'num_decoder_layers': config.num_decoder_layers,
      'feed_forward_proj': proj,
      'dense_act_fn': act,
      'is_gated_act': len(acts) > 1,
      'relative_attention_num_buckets': config.relative_attention_num_buckets,
      'relative_attention_max_distance': config.relative_attention_max_distance,
      'layer_norm_epsilon': 1e-6,
      'dropout_rate': config.dropout_rate,
      'tie_word_embeddings': bool(config.logits_via_embedding),
      'is_encoder_decoder': True,
      'decoder_start_token_id': 0,
      'pad_token_id': 0,
      'eos_token_id': 1,
      'use_cache': True,
  }


def t5_params_to_hf(params: Any, config) -> dict[str, np.ndarray]:
  """recjax T5 params -> HF tensor names (the inverse of `hf.hf_name_table`)."""
  from recjax import checkpoints  # pylint: disable=g-import-not-at-top
  from recjax.checkpoints import hf  # pylint: disable=g-import-not-at-top
  flat = checkpoints.flatten_params(params)
  table = hf.hf_name_table(config)
  want = {path for path, _ in table.values()}
  missing = sorted(want - set(flat))
  unexpected = sorted(set(flat) - want)
  if missing or unexpected:
    raise ValueError(f'T5 params do not match the config: missing {missing}, '
                     f'unexpected {unexpected}')
  out = {}
  for name, (path, transpose) in table.items():
    arr = np.asarray(flat[path], np.float32)
    out[name] = np.ascontiguousarray(arr.T) if transpose else arr
  return out


def save_hf_t5_checkpoint(params: Any, config, out_dir: str, *,
                          dtype: str = 'float32') -> None:
  """Writes `model.safetensors` + `config.json` of a T5ForConditionalGeneration."""
  tensors = {k: _cast(v, dtype) for k, v in t5_params_to_hf(params,
                                                            config).items()}
  os.makedirs(out_dir, exist_ok=True)
  write_safetensors(os.path.join(out_dir, 'model.safetensors'), tensors)
  hf_config = hf_t5_config(config)
  hf_config['torch_dtype'] = dtype
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)


# ------------------------------------------------------------------ any model
def _is_t5(config) -> bool:
  from recjax.models import t5  # pylint: disable=g-import-not-at-top
  return isinstance(config, t5.T5Config)


def abstract_params(config) -> Any:
  """Unboxed ShapeDtypeStructs of the params of a T5 or decoder-only config."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  if _is_t5(config):
    from recjax.models import t5  # pylint: disable=g-import-not-at-top
    return nn.unbox(t5.abstract_variables(config))['params']
  from recjax.models import decoder_only  # pylint: disable=g-import-not-at-top
  return nn.unbox(decoder_only.abstract_variables(config))['params']


def restore_params(checkpoint: str, config) -> Any:
  """Params of a recjax model/step dir as host numpy (one device, no sharding).

  A checkpoint with adapters needs `config.lora` (the LoRA gin it was trained
  with); a config with LoRA restores a checkpoint without adapters as its
  base weights.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top,g-importing-member
  from recjax.train import checkpointing  # pylint: disable=g-import-not-at-top
  from recjax.train import trainer  # pylint: disable=g-import-not-at-top
  if not trainer.is_recjax_dir(checkpoint):
    raise FileNotFoundError(f'--checkpoint={checkpoint}: not a recjax model '
                            'dir or step dir (expected checkpoints/<step>/state)')
  has = trainer.recjax_dir_has_lora(checkpoint)
  if has and getattr(config, 'lora', None) is None:
    raise ValueError(
        f'{checkpoint} holds LoRA adapters but the model gin sets no LoRA: give '
        'the LoRA gin it was trained with (--gin_file=runs/lora.gin and its '
        'LORA_* bindings) so the adapters can be merged')
  if not has and getattr(config, 'lora', None) is not None:
    config = dataclasses.replace(config, lora=None)
  abstract = abstract_params(config)
  mesh = Mesh(np.asarray(jax.devices()[:1]), ('data',))
  sharding = NamedSharding(mesh, PartitionSpec())
  target = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
      abstract)
  params = checkpointing.restore_params_from_recjax_dir(checkpoint, target)
  return jax.tree_util.tree_map(np.asarray, jax.device_get(params))


def export_checkpoint(config, checkpoint: str, output: str, *,
                      merge_lora: bool = False, dtype: str = 'float32',
                      overwrite: bool = False,
                      model_type: Optional[str] = None) -> str:
  """Writes the HF folder `output` for a recjax checkpoint; returns its path."""
  from recjax.data.prepared import atomic_directory  # pylint: disable=g-import-not-at-top
  if dtype not in DTYPES:
    raise ValueError(f'--dtype={dtype!r}: expected one of {DTYPES}')
  params = restore_params(checkpoint, config)
  if lora_lib.has_lora(params):
    if not merge_lora:
      raise ValueError(
          f'{checkpoint} holds LoRA adapters ({lora_lib.lora_param_count(params):,}'
          ' parameters), which Hugging Face formats cannot hold: pass '
          '--merge_lora to fold them into the kernels')
    lora_lib.check_targets(params, config.lora)
    params = lora_lib.merge_lora(params, config.lora)
  base_config = config
  if getattr(config, 'lora', None) is not None:
    base_config = dataclasses.replace(config, lora=None)
  with atomic_directory(output, overwrite=overwrite) as tmp:
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    if _is_t5(base_config):
      if model_type not in (None, 't5'):
        raise ValueError(f'model_type={model_type!r} for a T5 config')
      save_hf_t5_checkpoint(params, base_config, str(tmp), dtype=dtype)
    else:
      from recjax.checkpoints import hf_decoder  # pylint: disable=g-import-not-at-top
      sub = os.path.join(str(tmp), 'hf')  # it refuses an existing dir
      hf_decoder.save_hf_decoder_checkpoint(params, base_config, sub,
                                            model_type=model_type, dtype=dtype)
      for name in os.listdir(sub):
        os.replace(os.path.join(sub, name), os.path.join(str(tmp), name))
      os.rmdir(sub)
  return output


def run_export(gin_files: Sequence[str], gin_bindings: Sequence[str],
               gin_search_paths: Sequence[str], *, checkpoint: str,
               output: str, merge_lora: bool = False, dtype: str = 'float32',
               overwrite: bool = False,
               model_type: Optional[str] = None) -> str:
  """`recjax export`: the model config from gin (MODEL_CONFIG, LORA), then
  `export_checkpoint`."""
  import gin  # pylint: disable=g-import-not-at-top
  from recjax.train import gin_utils  # pylint: disable=g-import-not-at-top
  # Modules that register gin configurables must be imported before gin locks.
  from recjax.train import trainer  # pylint: disable=g-import-not-at-top,unused-import
  if not gin_files:
    raise ValueError('Give the model gin the checkpoint was trained with, e.g. '
                     '--gin_file=models/flan_t5_small.gin (and '
                     '--gin_file=runs/lora.gin for a LoRA run)')
  gin_utils.parse_gin_flags(gin_files, gin_bindings, gin_search_paths,
                            skip_unknown=True)
  try:
    config = gin.query_parameter('%MODEL_CONFIG').scoped_configurable_fn()
  except ValueError as e:
    raise ValueError(f'{list(gin_files)}: no MODEL_CONFIG macro; the first '
                     '--gin_file must be a model gin (gin_configs/models/)'
                     ) from e
  print(f'[recjax] exporting {checkpoint} -> {output}'
        f'{" (LoRA merged)" if merge_lora else ""}', file=sys.stderr)
  return export_checkpoint(config, checkpoint, output, merge_lora=merge_lora,
                           dtype=dtype, overwrite=overwrite,
                           model_type=model_type)
