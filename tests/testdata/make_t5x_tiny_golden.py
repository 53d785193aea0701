"""Golden logits of the real T5X fixture (../shared/testdata/t5x_tiny) from
Hugging Face's T5, for tests/test_checkpoints.py::test_t5x_fixture_forward.

Run with the SEPARATE reference venv (torch never enters recjax's
environment), as tests/testdata/make_hf_tiny_t5.py:

  /tmp/refvenv/bin/pip install torch==2.13.0 'transformers<5' msgpack numpy
  /tmp/refvenv/bin/python tests/testdata/make_t5x_tiny_golden.py [CHECKPOINT]

The T5X msgpack file is decoded here with msgpack alone (flax's layout:
ndarrays as ext type 1 holding (shape, dtype, bytes)), and T5X names are
mapped to Hugging Face's by a table written independently of
recjax/checkpoints/hf.py, so the golden checks recjax's reading and model
against a second implementation. Only a slice of the logits is stored (256
vocabulary columns and the log-partition per position) to keep it small.
"""
from __future__ import annotations

import os
import sys

import msgpack
import numpy as np
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CHECKPOINT = os.path.join(HERE, '..', '..', '..', 'shared', 'testdata',
                                  't5x_tiny', 'checkpoint')
OUT = os.path.join(HERE, 't5x_tiny_golden.npz')
SEED = 20241130
BATCH, ENC_LEN, DEC_LEN, NUM_COLUMNS = 2, 24, 10, 256


def _ext(code, data):
  if code in (1, 3):  # ndarray, numpy scalar
    shape, dtype, buf = msgpack.unpackb(data, raw=True)
    arr = np.frombuffer(buf, dtype=np.dtype(dtype.decode())).reshape(shape)
    return arr if code == 1 else arr[()]
  return msgpack.ExtType(code, data)


def _flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    k = k.decode() if isinstance(k, bytes) else k
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}/'))
    else:
      out[prefix + k] = np.asarray(v, np.float32)
  return out


def _hf_state_dict(t5x):
  """T5X parameter names -> Hugging Face T5ForConditionalGeneration names."""
  sd = {}
  t = lambda name: torch.tensor(t5x.pop(name).T.copy())
  emb = torch.tensor(t5x.pop('token_embedder/embedding'))
  sd['shared.weight'] = sd['encoder.embed_tokens.weight'] = emb
  sd['decoder.embed_tokens.weight'] = emb
  sd['lm_head.weight'] = t('decoder/logits_dense/kernel')
  attn = {'query': 'q', 'key': 'k', 'value': 'v', 'out': 'o'}
  mlp = ('wi_0', 'wi_1', 'wo')
  for stack, blocks in (('encoder', (
      ('pre_attention_layer_norm', 0, 'attention', 'SelfAttention'),
      ('pre_mlp_layer_norm', 1, 'mlp', None))), ('decoder', (
          ('pre_self_attention_layer_norm', 0, 'self_attention',
           'SelfAttention'),
          ('pre_cross_attention_layer_norm', 1, 'encoder_decoder_attention',
           'EncDecAttention'),
          ('pre_mlp_layer_norm', 2, 'mlp', None)))):
    sd[f'{stack}.final_layer_norm.weight'] = torch.tensor(
        t5x.pop(f'{stack}/{stack}_norm/scale'))
    sd[f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.'
       'weight'] = t(f'{stack}/relpos_bias/rel_embedding')
    for i in range(2):
      for norm, j, module, hf_module in blocks:
        pre = f'{stack}.block.{i}.layer.{j}'
        sd[f'{pre}.layer_norm.weight'] = torch.tensor(
            t5x.pop(f'{stack}/layers_{i}/{norm}/scale'))
        if hf_module is None:
          for w in mlp:
            sd[f'{pre}.DenseReluDense.{w}.weight'] = t(
                f'{stack}/layers_{i}/mlp/{w}/kernel')
        else:
          for ours, theirs in attn.items():
            sd[f'{pre}.{hf_module}.{theirs}.weight'] = t(
                f'{stack}/layers_{i}/{module}/{ours}/kernel')
  if t5x:
    raise ValueError(f'unmapped T5X parameters: {sorted(t5x)}')
  return sd


def main(path=DEFAULT_CHECKPOINT):
  with open(path, 'rb') as f:
    state = msgpack.unpackb(f.read(), ext_hook=_ext, raw=False,
                            strict_map_key=False)
  params = _flatten(state['optimizer']['target'])
  config = transformers.T5Config(
      vocab_size=32128, d_model=8, d_kv=3, d_ff=16, num_layers=2,
      num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=32,
      relative_attention_max_distance=128, dropout_rate=0.0,
      layer_norm_epsilon=1e-6, feed_forward_proj='gated-gelu',
      tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
      decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(config).eval()
  model.load_state_dict(_hf_state_dict(params), strict=True)

  rng = np.random.RandomState(SEED)
  enc = rng.randint(2, 32128, size=(BATCH, ENC_LEN)).astype(np.int32)
  dec = rng.randint(2, 32128, size=(BATCH, DEC_LEN)).astype(np.int32)
  dec[:, 0] = 0
  columns = np.sort(rng.choice(32128, NUM_COLUMNS, replace=False)).astype(
      np.int32)
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(enc, dtype=torch.long),
                   decoder_input_ids=torch.tensor(dec, dtype=torch.long)
                  ).logits.double()
  np.savez_compressed(
      OUT, encoder_input_tokens=enc, decoder_input_tokens=dec,
      columns=columns, logits_columns=logits[..., columns].numpy().astype(
          np.float32),
      logsumexp=torch.logsumexp(logits, -1).numpy().astype(np.float32))
  print('wrote', OUT, os.path.getsize(OUT), 'bytes')


if __name__ == '__main__':
  main(*sys.argv[1:])
