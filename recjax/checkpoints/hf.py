"""Hugging Face T5 / FLAN-T5 safetensors folders <-> recjax (T5X-named) params.

The mapping is an explicit name table (`hf_name_table`); every HF tensor must
map to one recjax path (or be a known alias of `shared.weight`), so a renamed
or unknown tensor is an error, not a silently random layer.

HF stores nn.Linear weights as [out, in]; T5X kernels are [in, out], hence the
transposes. HF T5 attention has no 1/sqrt(d) scaling either, so q/k/v map
unchanged. Relative attention biases live in block 0 only ([buckets, heads]);
T5X keeps one `relpos_bias/rel_embedding` [heads, buckets] per stack.

Logits: T5.1.1 / FLAN-T5 (`tie_word_embeddings: false`) have an untied
`lm_head.weight` -> `decoder/logits_dense/kernel`. Original T5 ties lm_head to
`shared` and multiplies the decoder output by d_model**-0.5 first; that is
exactly T5X's `logits_via_embedding=True`, which `t5_config_from_hf` selects
(pass `untie=True` to `hf_to_params` to get a scaled `logits_dense` instead).

The safetensors reader / writer, `map_tensors` / `table_to_hf` (a name table
applied either way) and `save_hf_dir` serve the decoder-only importer
(`hf_decoder`) and `recjax export` too.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Any, Callable, Mapping, Optional

import ml_dtypes
import numpy as np

from recjax.models import t5 as t5_lib

_ST_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16,
    'BF16': ml_dtypes.bfloat16, 'I64': np.int64, 'I32': np.int32,
    'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_,
}

_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}

_ACTIVATIONS = {
    # HF `feed_forward_proj` -> T5X mlp_activations. HF's gated-gelu runs
    # `gelu_new` (tanh approximation) = flax `nn.gelu(approximate=True)`.
    'gated-gelu': ('gelu', 'linear'),
    'gated-gelu_new': ('gelu', 'linear'),
    'relu': ('relu',),
    'gated-relu': ('relu', 'linear'),
    'gated-silu': ('silu', 'linear'),
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Reads one .safetensors file as read-only memory maps (bf16 via ml_dtypes).

  Own reader (the format is an 8-byte header length, a JSON header and raw
  little-endian data) so bfloat16 files load into numpy without torch, and a
  tensor is only paged in when it is converted.
  """
  with open(path, 'rb') as f:
    header_len = struct.unpack('<Q', f.read(8))[0]
    header = json.loads(f.read(header_len))
  base = 8 + header_len
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    dtype = info['dtype']
    if dtype not in _ST_DTYPES:
      raise ValueError(f'{path}: tensor {name!r} has unsupported dtype {dtype}')
    start, end = info['data_offsets']
    np_dtype = np.dtype(_ST_DTYPES[dtype]).newbyteorder('<')
    shape = tuple(info['shape'])
    if int(np.prod(shape)) * np_dtype.itemsize != end - start:
      raise ValueError(f'{path}: tensor {name!r}: {end - start} bytes do not '
                       f'hold {dtype}{list(shape)}')
    if end == start:
      out[name] = np.zeros(shape, np_dtype)
    else:
      out[name] = np.memmap(path, dtype=np_dtype, mode='r', offset=base + start,
                            shape=shape)
  return out


def write_safetensors(tensors: Mapping[str, np.ndarray], path: str,
                      metadata: Optional[Mapping[str, str]] = None) -> None:
  """Writes one .safetensors file (`read_safetensors`' format, any of its
  dtypes), tensors in name order, data 8-byte aligned."""
  header: dict[str, Any] = {'__metadata__': dict(metadata or {'format': 'pt'})}
  offset, arrays = 0, []
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])
    arr = arr.astype(arr.dtype.newbyteorder('<'), copy=False)
    st_dtype = _ST_NAMES.get(arr.dtype.newbyteorder('='))
    if st_dtype is None:
      raise ValueError(f'{path}: tensor {name!r} has unsupported dtype '
                       f'{arr.dtype}')
    header[name] = {'dtype': st_dtype, 'shape': list(arr.shape),
                    'data_offsets': [offset, offset + arr.nbytes]}
    offset += arr.nbytes
    arrays.append(arr)
  raw = json.dumps(header, separators=(',', ':')).encode()
  raw += b' ' * (-len(raw) % 8)
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(raw)))
    f.write(raw)
    for arr in arrays:
      f.write(arr.tobytes())


def read_safetensors_dir(path: str) -> dict[str, np.ndarray]:
  """All tensors of an HF snapshot dir: single file or index-json shards."""
  index = os.path.join(path, 'model.safetensors.index.json')
  single = os.path.join(path, 'model.safetensors')
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)['weight_map']
    tensors = {}
    for shard in sorted(set(weight_map.values())):
      shard_tensors = read_safetensors(os.path.join(path, shard))
      for name, arr in shard_tensors.items():
        if weight_map.get(name) == shard:
          tensors[name] = arr
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
      raise ValueError(f'{index}: tensors listed but not found in their shard:'
                       f' {missing}')
    return tensors
  if os.path.exists(single):
    return read_safetensors(single)
  shards = sorted(f for f in os.listdir(path) if f.endswith('.safetensors'))
  if not shards:
    raise FileNotFoundError(f'{path}: no model.safetensors, '
                            'model.safetensors.index.json or *.safetensors')
  tensors = {}
  for shard in shards:
    tensors.update(read_safetensors(os.path.join(path, shard)))
  return tensors


def read_hf_config(path_or_dict) -> dict:
  """A HF `config.json` as a dict, from its dir, its file or a dict."""
  if isinstance(path_or_dict, Mapping):
    return dict(path_or_dict)
  path = path_or_dict
  if os.path.isdir(path):
    path = os.path.join(path, 'config.json')
  with open(path) as f:
    return json.load(f)


def _logits_scaled(hf: Mapping[str, Any]) -> bool:
  """True when HF multiplies decoder outputs by d_model**-0.5 (tied T5)."""
  if 'scale_decoder_outputs' in hf:  # transformers >= 5 configs
    return bool(hf['scale_decoder_outputs'])
  return bool(hf.get('tie_word_embeddings', True))


def t5_config_from_hf(path_or_config, **overrides) -> t5_lib.T5Config:
  """HF `config.json` (dir, file or dict) -> T5Config (float32 unless overridden)."""
  hf = read_hf_config(path_or_config)
  if hf.get('model_type', 't5') not in ('t5', 'mt5'):
    raise ValueError(f'config.json model_type={hf.get("model_type")!r}: only '
                     't5/mt5 encoder-decoders are supported')
  proj = hf.get('feed_forward_proj', 'relu')
  if proj not in _ACTIVATIONS:
    raise ValueError(f'config.json feed_forward_proj={proj!r} is not supported'
                     f' (known: {sorted(_ACTIVATIONS)})')
  eps = hf.get('layer_norm_epsilon', 1e-6)
  if abs(eps - 1e-6) > 1e-12:
    raise ValueError(f'config.json layer_norm_epsilon={eps}: recjax T5 uses '
                     '1e-6')
  kwargs = dict(
      vocab_size=hf['vocab_size'],
      emb_dim=hf['d_model'],
      num_heads=hf['num_heads'],
      num_encoder_layers=hf['num_layers'],
      num_decoder_layers=hf.get('num_decoder_layers') or hf['num_layers'],
      head_dim=hf['d_kv'],
      mlp_dim=hf['d_ff'],
      mlp_activations=_ACTIVATIONS[proj],
      dropout_rate=hf.get('dropout_rate', 0.1),
      logits_via_embedding=_logits_scaled(hf),
      relative_attention_num_buckets=hf.get('relative_attention_num_buckets',
                                            32),
      relative_attention_max_distance=hf.get('relative_attention_max_distance',
                                             128),
  )
  kwargs.update(overrides)
  return t5_lib.T5Config(**kwargs)


def _layer_table(stack: str, i: int, gated: bool) -> dict[str, tuple[str, bool]]:
  """HF name -> (recjax path, transpose) for one block."""
  hf = f'{stack}.block.{i}.layer'
  rj = f'{stack}/layers_{i}'
  t = {}
  if stack == 'encoder':
    att = [(f'{hf}.0.SelfAttention', f'{rj}/attention',
            f'{hf}.0.layer_norm', f'{rj}/pre_attention_layer_norm')]
    mlp_idx = 1
  else:
    att = [(f'{hf}.0.SelfAttention', f'{rj}/self_attention',
            f'{hf}.0.layer_norm', f'{rj}/pre_self_attention_layer_norm'),
           (f'{hf}.1.EncDecAttention', f'{rj}/encoder_decoder_attention',
            f'{hf}.1.layer_norm', f'{rj}/pre_cross_attention_layer_norm')]
    mlp_idx = 2
  for hf_att, rj_att, hf_ln, rj_ln in att:
    for a, b in (('q', 'query'), ('k', 'key'), ('v', 'value'), ('o', 'out')):
      t[f'{hf_att}.{a}.weight'] = (f'{rj_att}/{b}/kernel', True)
    t[f'{hf_ln}.weight'] = (f'{rj_ln}/scale', False)
  wis = ('wi_0', 'wi_1') if gated else ('wi',)
  for w in wis + ('wo',):
    t[f'{hf}.{mlp_idx}.DenseReluDense.{w}.weight'] = (f'{rj}/mlp/{w}/kernel',
                                                      True)
  t[f'{hf}.{mlp_idx}.layer_norm.weight'] = (f'{rj}/pre_mlp_layer_norm/scale',
                                            False)
  return t


def hf_name_table(config: t5_lib.T5Config) -> dict[str, tuple[str, bool]]:
  """Every HF tensor name -> (recjax '/'-path, transpose?) for `config`."""
  gated = len(config.mlp_activations) > 1
  t = {'shared.weight': ('token_embedder/embedding', False)}
  for i in range(config.num_encoder_layers):
    t.update(_layer_table('encoder', i, gated))
  for i in range(config.num_decoder_layers):
    t.update(_layer_table('decoder', i, gated))
  for stack in ('encoder', 'decoder'):
    t[f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight'] = (
        f'{stack}/relpos_bias/rel_embedding', True)
  t['encoder.final_layer_norm.weight'] = ('encoder/encoder_norm/scale', False)
  t['decoder.final_layer_norm.weight'] = ('decoder/decoder_norm/scale', False)
  if not config.logits_via_embedding:
    t['lm_head.weight'] = ('decoder/logits_dense/kernel', True)
  return t


def map_tensors(tensors: Mapping[str, np.ndarray],
                table: Mapping[str, tuple[str, bool]], *,
                skip: Callable[[str], bool] = lambda name: False,
                copies: Optional[Mapping[str, tuple[str, str]]] = None
                ) -> tuple[dict[str, np.ndarray], list[str]]:
  """Applies a name table: ({recjax path: float32 array}, unmapped HF names).

  Shared by the T5 and decoder-only importers. `skip(name)`: tensors to
  ignore (aliases, buffers). `copies`: {HF name: (HF name of the tensor it
  may duplicate, why it is unexpected otherwise)} for names outside `table`;
  an exact copy (a tied checkpoint that also wrote the shared matrix) is
  dropped, anything else is reported as `name (why)`.
  """
  copies = copies or {}
  out, unknown = {}, []
  for name, arr in tensors.items():
    if skip(name):
      continue
    if name not in table:
      if name not in copies:
        unknown.append(name)
        continue
      original, why = copies[name]
      if original in tensors and np.array_equal(
          np.asarray(arr, np.float32), np.asarray(tensors[original],
                                                  np.float32)):
        continue
      unknown.append(f'{name} ({why})')
      continue
    path, transpose = table[name]
    arr = np.asarray(arr, dtype=np.float32)
    out[path] = np.ascontiguousarray(arr.T) if transpose else arr
  return out, unknown


# Tensors that HF may write as copies of `shared.weight`.
_SHARED_ALIASES = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')


def hf_to_params(tensors: Mapping[str, np.ndarray],
                 config: t5_lib.T5Config, *, hf_config: Optional[Mapping] = None,
                 untie: bool = False, strict: bool = True) -> dict[str, np.ndarray]:
  """HF tensors -> flat {'encoder/layers_0/...': float32 array}.

  untie: for tied HF models (HF scales decoder outputs by d_model**-0.5),
  produce `decoder/logits_dense/kernel = shared.T * d_model**-0.5` so the
  model can run with logits_via_embedding=False (then fine-tune untied).
  strict: unknown HF tensors are an error (listed); else they are ignored.
  """
  out, unknown = map_tensors(
      tensors, hf_name_table(config), skip=_SHARED_ALIASES.__contains__,
      copies={'lm_head.weight': (
          'shared.weight', 'config has logits_via_embedding=True, but '
          'lm_head differs from shared.weight')})
  if (not config.logits_via_embedding and
      'decoder/logits_dense/kernel' not in out and 'shared.weight' in tensors):
    # Tied HF model loaded untied (untie=True, or a config that says so).
    scaled = _logits_scaled(hf_config) if hf_config is not None else True
    if untie or hf_config is not None:
      scale = config.emb_dim**-0.5 if scaled else 1.0
      out['decoder/logits_dense/kernel'] = np.ascontiguousarray(
          np.asarray(tensors['shared.weight'], np.float32).T * np.float32(
              scale))
  if unknown and strict:
    raise ValueError('Hugging Face checkpoint has tensors recjax cannot map: '
                     + ', '.join(sorted(unknown)))
  return out


def load_hf_params(path: str, config: Optional[t5_lib.T5Config] = None, *,
                   untie: bool = False,
                   strict: bool = True) -> dict[str, np.ndarray]:
  """HF snapshot dir -> flat recjax params (float32 numpy).

  config defaults to `t5_config_from_hf(path)` (with logits_via_embedding
  turned off when untie=True).
  """
  hf_config = None
  if os.path.exists(os.path.join(path, 'config.json')):
    hf_config = read_hf_config(path)
  if config is None:
    if hf_config is None:
      raise FileNotFoundError(f'{path}: no config.json; pass config=')
    config = t5_config_from_hf(hf_config)
    if untie:
      config = dataclasses.replace(config, logits_via_embedding=False)
  tensors = read_safetensors_dir(path)
  return hf_to_params(tensors, config, hf_config=hf_config, untie=untie,
                      strict=strict)


# ----------------------------------------------------------------------------
# Export (recjax params -> a folder transformers loads).
# ----------------------------------------------------------------------------
EXPORT_DTYPES = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16}


def table_to_hf(flat: Mapping[str, Any], table: Mapping[str, tuple[str, bool]],
                dtype: str = 'float32') -> dict[str, np.ndarray]:
  """`map_tensors` inverted: flat recjax params -> {HF name: `dtype` array}."""
  if dtype not in EXPORT_DTYPES:
    raise ValueError(f'dtype={dtype!r}: expected one of {list(EXPORT_DTYPES)}')
  out = {}
  for name, (path, transpose) in table.items():
    arr = np.asarray(flat[path], np.float32)
    out[name] = np.ascontiguousarray(arr.T if transpose else arr).astype(
        EXPORT_DTYPES[dtype])
  return out


def save_hf_dir(out_dir: str, hf_config: Mapping[str, Any],
                tensors: Mapping[str, np.ndarray], *,
                overwrite: bool = False) -> str:
  """Writes `out_dir`/{config.json, model.safetensors}, atomically (a
  temporary sibling renamed when complete); an existing `out_dir` is an
  error unless `overwrite`."""
  from recjax.data.prepared import atomic_directory  # pylint: disable=g-import-not-at-top
  with atomic_directory(out_dir, overwrite=overwrite) as tmp:
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    with open(os.path.join(tmp, 'config.json'), 'w') as f:
      json.dump(dict(hf_config), f, indent=2, sort_keys=True)
    write_safetensors(tensors, os.path.join(tmp, 'model.safetensors'))
  return out_dir


def is_hf_dir(path: str) -> bool:
  if not os.path.isdir(path):
    return False
  names = os.listdir(path)
  return any(n.endswith('.safetensors') for n in names) or (
      'model.safetensors.index.json' in names)


__all__ = ['read_safetensors', 'read_safetensors_dir', 'write_safetensors',
           'read_hf_config', 't5_config_from_hf', 'hf_name_table',
           'map_tensors', 'hf_to_params', 'load_hf_params', 'table_to_hf',
           'save_hf_dir', 'is_hf_dir']
