"""Import of Hugging Face safetensors and T5X checkpoints into recjax params.

  from recjax.checkpoints import load_params
  from recjax.models import t5
  params = load_params(path, expected_shapes=t5.param_shapes(config))

`load_params` detects the format:
  * a Hugging Face snapshot dir (`model.safetensors`, or sharded
    `model-0000x-of-0000N.safetensors` + `model.safetensors.index.json`, plus
    `config.json`; `recjax.checkpoints.hf.t5_config_from_hf` reads the config);
  * a T5X checkpoint: the msgpack file, its `checkpoint_<step>/` dir, or a
    model dir holding `checkpoint_*/` (latest step), with inline and/or
    tensorstore (zarr) arrays.
recjax's own orbax training checkpoints are restored by the trainer.

Params come back as a nested dict of float32 numpy arrays in T5X naming
({'encoder': {'layers_0': {'attention': {'query': {'kernel': ...}}}}}),
usable as `{'params': params}` in `Transformer.apply`.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np

_SEP = '/'


def _key_name(k: Any) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def flatten_params(params: Any) -> dict[str, Any]:
  """Nested dict (or flat '/'-keyed dict, or boxed flax tree) -> flat dict."""
  try:
    from flax.core import meta  # pylint: disable=g-import-not-at-top
    params = meta.unbox(params)
  except Exception:  # pylint: disable=broad-except
    pass
  out = {}

  def walk(node, prefix):
    if isinstance(node, Mapping):
      for k, v in node.items():
        walk(v, f'{prefix}{_SEP}{k}' if prefix else str(k))
    else:
      out[prefix] = node

  walk(params, '')
  return out


def unflatten_params(flat: Mapping[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in flat.items():
    node = out
    parts = key.split(_SEP)
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = value
  return out


def _shape_of(x: Any) -> tuple:
  if hasattr(x, 'shape'):
    return tuple(x.shape)
  return tuple(x)  # already a shape


def check_params(params: Any, expected_shapes: Any, *,
                 allow_missing: bool = False,
                 allow_unexpected: bool = False) -> None:
  """Raises one ValueError listing ALL missing, unexpected and mis-shaped params.

  expected_shapes: flat {'a/b/kernel': shape} (e.g. `t5.param_shapes(cfg)`),
  or any nested tree of arrays / ShapeDtypeStructs / boxed params.
  """
  got = {k: _shape_of(v) for k, v in flatten_params(params).items()}
  flat_expected = flatten_params(expected_shapes)
  if all(isinstance(v, tuple) and all(isinstance(d, (int, np.integer))
                                      for d in v)
         for v in flat_expected.values()):
    want = {k: tuple(int(d) for d in v) for k, v in flat_expected.items()}
  else:
    want = {k: _shape_of(v) for k, v in flat_expected.items()}
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
  problems = []
  if missing and not allow_missing:
    problems.append(f'{len(missing)} missing: ' + ', '.join(missing))
  if unexpected and not allow_unexpected:
    problems.append(f'{len(unexpected)} unexpected: ' + ', '.join(unexpected))
  if wrong:
    problems.append(f'{len(wrong)} wrong shape: ' + ', '.join(
        f'{k} (checkpoint {got[k]}, model {want[k]})' for k in wrong))
  if problems:
    raise ValueError('Checkpoint parameters do not match the model: ' +
                     '; '.join(problems))


def detect_format(path: str) -> str:
  """'hf', 't5x' or 'orbax' for a checkpoint path; raises if unknown."""
  from recjax.checkpoints import hf, t5x  # pylint: disable=g-import-not-at-top
  if hf.is_hf_dir(path):
    return 'hf'
  if t5x.is_t5x_checkpoint(path):
    return 't5x'
  if os.path.isdir(path) and any(
      os.path.exists(os.path.join(path, n))
      for n in ('_CHECKPOINT_METADATA', '_METADATA', 'manifest.ocdbt')):
    return 'orbax'
  raise FileNotFoundError(
      f'{path}: not a Hugging Face safetensors dir nor a T5X checkpoint')


def load_params(path: str, *, expected_shapes: Any = None,
                strict: bool = True, config: Any = None,
                untie: bool = False) -> dict[str, Any]:
  """Loads a checkpoint into nested float32 numpy params (T5X names).

  expected_shapes: if given (e.g. `t5.param_shapes(config)`), the loaded tree
  is checked against it. strict=True: every missing, unexpected or mis-shaped
  parameter is an error (all listed at once). strict=False (partial load):
  missing ones are allowed (merge onto fresh init with `merge_params`),
  unexpected ones are dropped with a warning; wrong shapes are still errors.
  config / untie: passed to the HF importer (see `hf.load_hf_params`).
  """
  from recjax.checkpoints import t5x  # pylint: disable=g-import-not-at-top
  fmt = detect_format(path)
  if fmt == 'hf':
    flat = _load_hf(path, config, untie=untie, strict=strict)
  elif fmt == 't5x':
    flat = t5x.load_t5x_params(path)
  else:
    raise ValueError(f'{path}: orbax checkpoint; restore it with the recjax '
                     'trainer (recjax.train), not load_params')
  if expected_shapes is not None:
    check_params(flat, expected_shapes, allow_missing=not strict,
                 allow_unexpected=not strict)
    if not strict:
      want = set(flatten_params(expected_shapes))
      dropped = sorted(set(flat) - want)
      if dropped:
        logging.warning('%s: ignoring %d parameters the model does not have: '
                        '%s', path, len(dropped), ', '.join(dropped))
        flat = {k: v for k, v in flat.items() if k in want}
  return unflatten_params(flat)


def _load_hf(path: str, config: Any, *, untie: bool, strict: bool):
  """T5 dirs -> hf.py; Llama / Qwen2 / Mistral (config.json model_type) ->
  hf_decoder.py, which first checks `config` against config.json."""
  from recjax.checkpoints import hf, hf_decoder  # pylint: disable=g-import-not-at-top
  from recjax.models import decoder_only  # pylint: disable=g-import-not-at-top
  hf_config = {}
  if os.path.exists(os.path.join(path, 'config.json')):
    hf_config = hf.read_hf_config(path)
  is_decoder = hf_decoder.is_decoder_config(hf_config)
  if isinstance(config, decoder_only.DecoderOnlyConfig) or is_decoder:
    if hf_config and not is_decoder:
      raise ValueError(f'{path}: config.json model_type='
                       f'{hf_config.get("model_type")!r} is not a decoder-only '
                       f'model ({", ".join(hf_decoder.MODEL_TYPES)}) but the '
                       'model gin is a DecoderOnlyConfig')
    if config is not None and not isinstance(config,
                                             decoder_only.DecoderOnlyConfig):
      raise ValueError(f'{path}: a {hf_config.get("model_type")} checkpoint '
                       f'cannot load into a {type(config).__name__}')
    return hf_decoder.load_hf_decoder_params(path, config, strict=strict)
  return hf.load_hf_params(path, config, untie=untie, strict=strict)


def merge_params(base: Any, loaded: Any) -> dict[str, Any]:
  """Partial load: `loaded` values replace `base` ones (same '/'-paths)."""
  flat = flatten_params(base)
  for k, v in flatten_params(loaded).items():
    if k not in flat:
      raise ValueError(f'merge_params: {k} is not a parameter of the model')
    flat[k] = v
  return unflatten_params(flat)


__all__ = ['load_params', 'check_params', 'merge_params', 'detect_format',
           'flatten_params', 'unflatten_params']
