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

import json
import logging
import math
import os
import shutil
import struct
import tempfile
from typing import Any, Mapping, Optional

import ml_dtypes
import numpy as np

from recjax import checkpoints
from recjax.checkpoints import hf
from recjax.models import decoder_only

MODEL_TYPES = ('llama', 'qwen2', 'mistral')
_ARCHITECTURES = {'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM'}
_IGNORED_SUFFIXES = ('.rotary_emb.inv_freq',)  # old checkpoints' buffers


def read_hf_config(path_or_dict) -> dict:
  return hf._read_hf_config(path_or_dict)  # pylint: disable=protected-access


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
  h = read_hf_config(path_or_dict)
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
  _check_supported(hf_config)
  ckpt = decoder_config_from_hf(hf_config)
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


def _swap_rows(arr: np.ndarray, p: Optional[int], axis: int) -> np.ndarray:
  if not p:
    return arr
  arr = np.array(arr, copy=True)
  idx = [slice(None)] * arr.ndim
  a, b = list(idx), list(idx)
  a[axis], b[axis] = 0, p
  arr[tuple(a)], arr[tuple(b)] = arr[tuple(b)].copy(), arr[tuple(a)].copy()
  return arr


def hf_to_params(tensors: Mapping[str, np.ndarray],
                 config: decoder_only.DecoderOnlyConfig, *,
                 strict: bool = True) -> dict[str, np.ndarray]:
  """HF tensors -> flat float32 recjax params, checked against the model.

  strict: every missing, unexpected (unmappable HF name, listed by that name)
  or mis-shaped tensor -> one ValueError listing them all. strict=False drops
  unknown tensors with a warning and allows missing ones (partial load);
  wrong shapes are always errors.
  """
  table = hf_name_table(config)
  out, unknown = {}, []
  for name, arr in tensors.items():
    if name.endswith(_IGNORED_SUFFIXES):
      continue
    if name == 'lm_head.weight' and config.tie_word_embeddings:
      emb = tensors.get('model.embed_tokens.weight')
      if emb is not None and np.array_equal(np.asarray(arr, np.float32),
                                            np.asarray(emb, np.float32)):
        continue  # a tied checkpoint that also wrote the shared matrix
      unknown.append(name + ' (untied lm_head, but the model gin ties '
                     'embeddings)')
      continue
    if name not in table:
      unknown.append(name)
      continue
    path, transpose = table[name]
    arr = np.asarray(arr, dtype=np.float32)
    out[path] = np.ascontiguousarray(arr.T) if transpose else arr
  p = config.pad_swap_id
  if 'token_embedder/embedding' in out:
    out['token_embedder/embedding'] = _swap_rows(
        out['token_embedder/embedding'], p, 0)
  if 'decoder/logits_dense/kernel' in out:
    out['decoder/logits_dense/kernel'] = _swap_rows(
        out['decoder/logits_dense/kernel'], p, 1)
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
    hf_config = read_hf_config(path)
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
                   model_type: Optional[str] = None,
                   dtype: str = 'float32') -> dict:
  """config.json for transformers' LlamaForCausalLM / Qwen2ForCausalLM."""
  model_type = model_type or ('qwen2' if config.qkv_bias else 'llama')
  if model_type not in _ARCHITECTURES:
    raise ValueError(f'model_type={model_type!r}: export supports '
                     f'{sorted(_ARCHITECTURES)}')
  if model_type == 'llama' and config.qkv_bias:
    raise ValueError('q/k/v biases without an o_proj bias cannot be written '
                     "as a Llama checkpoint; use model_type='qwen2'")
  if model_type == 'qwen2' and not config.qkv_bias:
    raise ValueError("Qwen2 always has q/k/v biases; use model_type='llama'")
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


_NP_TO_ST = {np.dtype(np.float32): 'F32',
             np.dtype(ml_dtypes.bfloat16): 'BF16'}


def write_safetensors(tensors: Mapping[str, np.ndarray], path: str,
                      metadata: Optional[Mapping[str, str]] = None) -> None:
  """Writes a .safetensors file (8-byte header length, JSON header, data)."""
  header: dict[str, Any] = {'__metadata__': dict(metadata or {'format': 'pt'})}
  offset, blobs = 0, []
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])
    data = arr.astype(arr.dtype.newbyteorder('<')).tobytes()
    header[name] = {'dtype': _NP_TO_ST[arr.dtype], 'shape': list(arr.shape),
                    'data_offsets': [offset, offset + len(data)]}
    offset += len(data)
    blobs.append(data)
  raw = json.dumps(header, separators=(',', ':')).encode()
  raw += b' ' * (-len(raw) % 8)  # data starts 8-byte aligned
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(raw)))
    f.write(raw)
    for data in blobs:
      f.write(data)


def params_to_hf(params: Any, config: decoder_only.DecoderOnlyConfig,
                 dtype: str = 'float32') -> dict[str, np.ndarray]:
  """Nested or flat recjax params -> HF tensors (inverse of hf_to_params)."""
  if dtype not in ('float32', 'bfloat16'):
    raise ValueError(f"dtype={dtype!r}: expected 'float32' or 'bfloat16'")
  np_dtype = np.float32 if dtype == 'float32' else ml_dtypes.bfloat16
  flat = checkpoints.flatten_params(params)
  leftovers = sorted(k for k in flat if '/lora_' in k or k.startswith('lora_'))
  if leftovers:
    raise ValueError('params still hold LoRA adapters (merge them first): ' +
                     ', '.join(leftovers))
  checkpoints.check_params(flat, decoder_only.param_shapes(config))
  out = {}
  for name, (path, transpose) in hf_name_table(config).items():
    arr = np.asarray(flat[path], np.float32)
    if path == 'token_embedder/embedding':
      arr = _swap_rows(arr, config.pad_swap_id, 0)
    elif path == 'decoder/logits_dense/kernel':
      arr = _swap_rows(arr, config.pad_swap_id, 1)
    arr = arr.T if transpose else arr
    out[name] = np.ascontiguousarray(arr).astype(np_dtype)
  return out


def save_hf_decoder_checkpoint(params: Any,
                               config: decoder_only.DecoderOnlyConfig,
                               out_dir: str, *,
                               model_type: Optional[str] = None,
                               dtype: str = 'float32') -> str:
  """Writes `out_dir`/{config.json, model.safetensors} for transformers.

  model_type: 'llama' | 'qwen2'; None -> 'qwen2' iff config.qkv_bias. Written
  to a temporary dir beside `out_dir` and renamed at the end, so a crash
  never leaves a half-written checkpoint; an existing `out_dir` is an error.
  """
  if os.path.exists(out_dir):
    raise FileExistsError(f'{out_dir} already exists')
  hf_cfg = hf_config_dict(config, model_type, dtype)
  tensors = params_to_hf(params, config, dtype)
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix='.tmp_hf_export_', dir=parent)
  try:
    with open(os.path.join(tmp, 'config.json'), 'w') as f:
      json.dump(hf_cfg, f, indent=2, sort_keys=True)
    write_safetensors(tensors, os.path.join(tmp, 'model.safetensors'))
    os.chmod(tmp, 0o755)
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


__all__ = ['decoder_config_from_hf', 'check_config_matches', 'hf_name_table',
           'hf_to_params', 'load_hf_decoder_params', 'params_to_hf',
           'save_hf_decoder_checkpoint', 'write_safetensors', 'MODEL_TYPES']
