"""Hugging Face Llama / Qwen2 (/ Mistral) safetensors <-> recjax decoder params.

The mapping is an explicit name table (`hf_name_table`); every HF tensor must
map to one recjax path, so a renamed or unknown tensor is an error, not a
silently random layer. HF stores nn.Linear weights as [out, in]; recjax
kernels are [in, out] (T5X), hence the transposes; biases map unchanged.

  HF                                       recjax (decoder_only.py)
  model.embed_tokens.weight                token_embedder/embedding
  model.layers.{i}.input_layernorm         decoder/layers_{i}/pre_self_attention_layer_norm/scale
  model.layers.{i}.self_attn.{q,k,v,o}_proj  .../self_attention/{query,key,value,out}/kernel (+ q/k/v bias)
  model.layers.{i}.post_attention_layernorm  .../pre_mlp_layer_norm/scale
  model.layers.{i}.mlp.{gate,up,down}_proj   .../mlp/{wi_0,wi_1,wo}/kernel
  model.norm.weight                        decoder/decoder_norm/scale
  lm_head.weight                           decoder/logits_dense/kernel (untied only)

Token id 0: with `config.pad_swap_id = p`, recjax id 0 is HF id p and recjax
id p is HF id 0 (SeqIO pads with 0; Llama-3 / Qwen2 use 0 for a real token),
so rows 0 and p of the embedding (and of lm_head when untied) trade places on
import and back on export.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping, Optional

import numpy as np

from recjax import checkpoints
from recjax.checkpoints import hf
from recjax.models import decoder_only
from recjax.models import lora

MODEL_TYPES = ('llama', 'qwen2', 'mistral')
_ARCHITECTURES = {'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM'}
_IGNORED_SUFFIXES = ('.rotary_emb.inv_freq',)  # old checkpoints' buffers


def is_decoder_config(hf_config: Mapping[str, Any]) -> bool:
  return hf_config.get('model_type') in MODEL_TYPES


def _qkv_bias(hf_config: Mapping[str, Any]) -> bool:
  return hf_config.get('model_type') == 'qwen2' or bool(
      hf_config.get('attention_bias', False))


def _head_dim(hf_config: Mapping[str, Any]) -> int:
  return int(hf_config.get('head_dim') or
             hf_config['hidden_size'] // hf_config['num_attention_heads'])


def _check_supported(hf_config: Mapping[str, Any]) -> None:
  """Refuses HF options the recjax module does not implement."""
  problems = []
  mt = hf_config.get('model_type')
  if mt not in MODEL_TYPES:
    problems.append(f'model_type={mt!r} (supported: {list(MODEL_TYPES)})')
  act = hf_config.get('hidden_act', 'silu')
  if act != 'silu':
    problems.append(f'hidden_act={act!r} (only silu / SwiGLU)')
  if mt == 'llama' and hf_config.get('attention_bias'):
    problems.append('attention_bias=true (Llama puts a bias on o_proj too; '
                    'only q/k/v biases are supported)')
  if hf_config.get('mlp_bias'):
    problems.append('mlp_bias=true')
  if hf_config.get('use_sliding_window'):
    problems.append('use_sliding_window=true')
  if problems:
    raise ValueError('Unsupported Hugging Face decoder config: ' +
                     '; '.join(problems))
  if mt == 'mistral' and hf_config.get('sliding_window'):
    logging.warning('Mistral sliding_window=%s is not implemented: attention '
                    'is exact only up to that many tokens.',
                    hf_config['sliding_window'])


def decoder_config_from_hf(path_or_dict,
                           **overrides) -> decoder_only.DecoderOnlyConfig:
  """HF `config.json` (dir, file or dict) -> DecoderOnlyConfig.

  float32 activations by default (exact parity); `overrides` win.
  """
  h = hf.read_hf_config(path_or_dict)
  _check_supported(h)
  kwargs = dict(
      vocab_size=h['vocab_size'],
      emb_dim=h['hidden_size'],
      num_heads=h['num_attention_heads'],
      num_kv_heads=h.get('num_key_value_heads') or h['num_attention_heads'],
      head_dim=_head_dim(h),
      num_layers=h['num_hidden_layers'],
      mlp_dim=h['intermediate_size'],
      rms_norm_eps=h.get('rms_norm_eps', 1e-6),
      rope_theta=h.get('rope_theta', 10000.0),
      rope_scaling=h.get('rope_scaling'),
      qkv_bias=_qkv_bias(h),
      tie_word_embeddings=bool(h.get('tie_word_embeddings', False)),
      dtype='float32',
  )
  kwargs.update(overrides)
  return decoder_only.DecoderOnlyConfig(**kwargs)


def _close(a, b) -> bool:
  return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=0.0)


def check_config_matches(hf_config: Mapping[str, Any],
                         config: decoder_only.DecoderOnlyConfig) -> None:
  """Refuses a checkpoint whose config.json disagrees with the model gin.

  One ValueError naming every mismatch as `field: checkpoint X, model gin Y`
  (HF field names).
  """
  ckpt = decoder_config_from_hf(hf_config)  # refuses unsupported options
  fields = [  # (HF name, recjax name, comparator)
      ('vocab_size', 'vocab_size', None),
      ('hidden_size', 'emb_dim', None),
      ('num_attention_heads', 'num_heads', None),
      ('num_key_value_heads', 'num_kv_heads', None),
      ('head_dim', 'head_dim', None),
      ('num_hidden_layers', 'num_layers', None),
      ('intermediate_size', 'mlp_dim', None),
      ('rms_norm_eps', 'rms_norm_eps', _close),
      ('rope_theta', 'rope_theta', _close),
      ('rope_scaling', 'rope_scaling', None),
      ('tie_word_embeddings', 'tie_word_embeddings', None),
      ('q/k/v bias', 'qkv_bias', None),
  ]
  bad = []
  for hf_name, name, same in fields:
    a, b = getattr(ckpt, name), getattr(config, name)
    if not (same(a, b) if same else a == b):
      if name == 'rope_scaling':
        a, b = ckpt.rope_scaling_dict, config.rope_scaling_dict
      bad.append(f'{hf_name}: checkpoint {a}, model gin {b}')
  if bad:
    raise ValueError('Checkpoint config.json does not match the model gin: ' +
                     '; '.join(bad))


def hf_name_table(
    config: decoder_only.DecoderOnlyConfig) -> dict[str, tuple[str, bool]]:
  """Every HF tensor name -> (recjax '/'-path, transpose?) for `config`."""
  t = {'model.embed_tokens.weight': ('token_embedder/embedding', False),
       'model.norm.weight': ('decoder/decoder_norm/scale', False)}
  for i in range(config.num_layers):
    h, r = f'model.layers.{i}', f'decoder/layers_{i}'
    t[f'{h}.input_layernorm.weight'] = (
        f'{r}/pre_self_attention_layer_norm/scale', False)
    t[f'{h}.post_attention_layernorm.weight'] = (
        f'{r}/pre_mlp_layer_norm/scale', False)
    for a, b in (('q', 'query'), ('k', 'key'), ('v', 'value'), ('o', 'out')):
      t[f'{h}.self_attn.{a}_proj.weight'] = (
          f'{r}/self_attention/{b}/kernel', True)
      if config.qkv_bias and a != 'o':
        t[f'{h}.self_attn.{a}_proj.bias'] = (
            f'{r}/self_attention/{b}/bias', False)
    for a, b in (('gate', 'wi_0'), ('up', 'wi_1'), ('down', 'wo')):
      t[f'{h}.mlp.{a}_proj.weight'] = (f'{r}/mlp/{b}/kernel', True)
  if not config.tie_word_embeddings:
    t['lm_head.weight'] = ('decoder/logits_dense/kernel', True)
  return t


# recjax paths with a vocabulary axis (the rows `pad_swap_id` exchanges).
_VOCAB_AXIS = {'token_embedder/embedding': 0, 'decoder/logits_dense/kernel': 1}


def _swap_pad_rows(flat: Mapping[str, Any], p: Optional[int]) -> dict:
  """Rows 0 and p of every vocabulary axis exchanged (its own inverse)."""
  flat = dict(flat)
  for path, axis in _VOCAB_AXIS.items():
    if p and path in flat:
      perm = np.arange(flat[path].shape[axis])
      perm[[0, p]] = perm[[p, 0]]
      flat[path] = np.take(np.asarray(flat[path]), perm, axis=axis)
  return flat


def hf_to_params(tensors: Mapping[str, np.ndarray],
                 config: decoder_only.DecoderOnlyConfig, *,
                 strict: bool = True) -> dict[str, np.ndarray]:
  """HF tensors -> flat float32 recjax params, checked against the model.

  strict: every missing, unexpected (unmappable HF name, listed by that name)
  or mis-shaped tensor -> one ValueError listing them all. strict=False drops
  unknown tensors with a warning and allows missing ones (partial load);
  wrong shapes are always errors.
  """
  out, unknown = hf.map_tensors(
      tensors, hf_name_table(config),
      skip=lambda name: name.endswith(_IGNORED_SUFFIXES),
      copies={'lm_head.weight': ('model.embed_tokens.weight',
                                 'untied lm_head, but the model gin ties '
                                 'embeddings')})
  out = _swap_pad_rows(out, config.pad_swap_id)
  if unknown and not strict:
    logging.warning('ignoring %d Hugging Face tensors recjax does not map: %s',
                    len(unknown), ', '.join(sorted(unknown)))
    unknown = []
  check = dict(out)
  check.update({n: () for n in unknown})  # reported as 'unexpected: <HF name>'
  checkpoints.check_params(check, decoder_only.param_shapes(config),
                           allow_missing=not strict)
  return out


def load_hf_decoder_params(path: str,
                           config: Optional[
                               decoder_only.DecoderOnlyConfig] = None, *,
                           strict: bool = True) -> dict[str, np.ndarray]:
  """HF snapshot dir (single or sharded safetensors) -> flat recjax params.

  config defaults to `decoder_config_from_hf(path)`; a given config is first
  checked against the dir's config.json (`check_config_matches`).
  """
  cfg_file = os.path.join(path, 'config.json')
  if not os.path.exists(cfg_file):
    if config is None:
      raise FileNotFoundError(f'{path}: no config.json; pass config=')
  else:
    hf_config = hf.read_hf_config(path)
    if config is None:
      config = decoder_config_from_hf(hf_config)
    else:
      check_config_matches(hf_config, config)
  tensors = hf.read_safetensors_dir(path)
  try:
    return hf_to_params(tensors, config, strict=strict)
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from None


# ----------------------------------------------------------------------------
# Export.
# ----------------------------------------------------------------------------
def hf_config_dict(config: decoder_only.DecoderOnlyConfig,
                   dtype: str = 'float32') -> dict:
  """config.json for transformers: Qwen2ForCausalLM when the config has q/k/v
  biases (Llama's `attention_bias` would add one on o_proj too), else
  LlamaForCausalLM."""
  model_type = 'qwen2' if config.qkv_bias else 'llama'
  d = {
      'architectures': [_ARCHITECTURES[model_type]],
      'model_type': model_type,
      'vocab_size': config.vocab_size,
      'hidden_size': config.emb_dim,
      'intermediate_size': config.mlp_dim,
      'num_hidden_layers': config.num_layers,
      'num_attention_heads': config.num_heads,
      'num_key_value_heads': config.num_kv_heads,
      'head_dim': config.head_dim,
      'hidden_act': 'silu',
      'rms_norm_eps': config.rms_norm_eps,
      'rope_theta': config.rope_theta,
      'rope_scaling': config.rope_scaling_dict,
      'tie_word_embeddings': config.tie_word_embeddings,
      'attention_dropout': 0.0,
      'initializer_range': 0.02,
      'max_position_embeddings': 131072,
      'use_cache': True,
      'torch_dtype': dtype,
  }
  if model_type == 'llama':
    d.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
  else:
    d.update(use_sliding_window=False, sliding_window=None,
             max_window_layers=config.num_layers)
  return d


def params_to_hf(params: Any, config: decoder_only.DecoderOnlyConfig,
                 dtype: str = 'float32') -> dict[str, np.ndarray]:
  """Nested or flat recjax params -> HF tensors (inverse of hf_to_params)."""
  flat = checkpoints.flatten_params(params)
  leftovers = sorted(k for k in flat if lora.is_lora_path(k))
  if leftovers:
    raise ValueError('params still hold LoRA adapters (merge them first): ' +
                     ', '.join(leftovers))
  checkpoints.check_params(flat, decoder_only.param_shapes(config))
  return hf.table_to_hf(_swap_pad_rows(flat, config.pad_swap_id),
                        hf_name_table(config), dtype)


def save_hf_decoder_checkpoint(params: Any,
                               config: decoder_only.DecoderOnlyConfig,
                               out_dir: str, *, dtype: str = 'float32',
                               overwrite: bool = False) -> str:
  """Writes `out_dir`/{config.json, model.safetensors} for transformers.

  Written to a temporary dir beside `out_dir` and renamed at the end, so a
  crash never leaves a half-written checkpoint; an existing `out_dir` is an
  error unless `overwrite`.
  """
  return hf.save_hf_dir(out_dir, hf_config_dict(config, dtype),
                        params_to_hf(params, config, dtype),
                        overwrite=overwrite)


__all__ = ['decoder_config_from_hf', 'check_config_matches', 'hf_name_table',
           'hf_to_params', 'load_hf_decoder_params', 'params_to_hf',
           'save_hf_decoder_checkpoint', 'MODEL_TYPES']
