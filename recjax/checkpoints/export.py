"""`recjax export`: a recjax training checkpoint -> a Hugging Face folder.

  recjax export --gin_file=models/flan_t5_small.gin --gin_file=runs/lora.gin \
      --checkpoint=/tmp/run --output=/tmp/run_hf --merge_lora

Restores the params (not the optimizer state) of a recjax model dir or step
dir, folds LoRA adapters into their kernels (`--merge_lora`; Hugging Face
formats have no place for them, so a checkpoint with adapters needs it) and
writes `model.safetensors` + `config.json` that transformers loads:
decoder-only configs through `recjax.checkpoints.hf_decoder`, T5 configs by
inverting `hf.hf_name_table`; both through `hf.save_hf_dir`, which writes the
folder under a temporary name and renames it when complete.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Sequence

import flax.linen as nn
import numpy as np

from recjax import checkpoints
from recjax.checkpoints import hf
from recjax.checkpoints import hf_decoder
from recjax.models import decoder_only
from recjax.models import lora as lora_lib
from recjax.models import t5


# ------------------------------------------------------------------ T5
_HF_FEED_FORWARD = {('gelu', 'linear'): ('gated-gelu', 'gelu_new'),
                    ('relu',): ('relu', 'relu'),
                    ('relu', 'linear'): ('gated-relu', 'relu'),
                    ('silu', 'linear'): ('gated-silu', 'silu')}


def hf_t5_config(config, dtype: str = 'float32') -> dict:
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
      'torch_dtype': dtype,
  }


def t5_params_to_hf(params: Any, config,
                    dtype: str = 'float32') -> dict[str, np.ndarray]:
  """recjax T5 params -> HF tensor names (the inverse of `hf.hf_name_table`)."""
  flat = checkpoints.flatten_params(params)
  checkpoints.check_params(flat, t5.param_shapes(config))
  return hf.table_to_hf(flat, hf.hf_name_table(config), dtype)


# ------------------------------------------------------------------ any model
def _is_t5(config) -> bool:
  return isinstance(config, t5.T5Config)


def abstract_params(config) -> Any:
  """Unboxed ShapeDtypeStructs of the params of a T5 or decoder-only config."""
  module = t5 if _is_t5(config) else decoder_only
  return nn.unbox(module.abstract_variables(config))['params']


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
                      overwrite: bool = False) -> str:
  """Writes the HF folder `output` for a recjax checkpoint; returns its path."""
  if dtype not in hf.EXPORT_DTYPES:
    raise ValueError(f'--dtype={dtype!r}: expected one of '
                     f'{list(hf.EXPORT_DTYPES)}')
  params = restore_params(checkpoint, config)
  if lora_lib.has_lora(params):
    if not merge_lora:
      raise ValueError(
          f'{checkpoint} holds LoRA adapters ({lora_lib.lora_param_count(params):,}'
          ' parameters), which Hugging Face formats cannot hold: pass '
          '--merge_lora to fold them into the kernels')
    params = lora_lib.merge_lora(params, config.lora)
  if getattr(config, 'lora', None) is not None:
    config = dataclasses.replace(config, lora=None)
  if _is_t5(config):
    return hf.save_hf_dir(output, hf_t5_config(config, dtype),
                          t5_params_to_hf(params, config, dtype),
                          overwrite=overwrite)
  return hf_decoder.save_hf_decoder_checkpoint(params, config, output,
                                               dtype=dtype, overwrite=overwrite)


def run_export(gin_files: Sequence[str], gin_bindings: Sequence[str],
               gin_search_paths: Sequence[str], *, checkpoint: str,
               output: str, merge_lora: bool = False, dtype: str = 'float32',
               overwrite: bool = False) -> str:
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
                           dtype=dtype, overwrite=overwrite)
