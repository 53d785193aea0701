"""Builds the golden Hugging Face decoder-only fixtures in tests/testdata/.

Run with the SEPARATE reference venv (torch never enters recjax's environment):

  python3 -m venv /tmp/refvenv
  /tmp/refvenv/bin/pip install torch==2.13.0 'transformers<5' safetensors numpy
  /tmp/refvenv/bin/python tests/testdata/make_hf_tiny_decoder.py

Made with transformers 4.57.6. Three random tiny models, weights rounded to
bfloat16 (small files; recjax's bfloat16 reading is exercised) and reference
logits computed in float32 from exactly those rounded weights:

  hf_tiny_llama   LlamaForCausalLM, multi-head (kv heads = heads), untied,
                  rope_theta 100 so every rotary frequency turns many times
                  within a few hundred positions.
  hf_tiny_llama3  LlamaForCausalLM, GQA (2 kv heads for 4), head_dim 16 !=
                  hidden/heads, Llama-3 `rope_scaling` with a short
                  original_max_position_embeddings (64) so the scaled, the
                  smoothed and the unchanged frequency bands all occur; tied;
                  saved SHARDED (index JSON + shards of <= 40KB).
  hf_tiny_qwen2   Qwen2ForCausalLM, GQA, q/k/v biases, tied.

Every weight is random, including layer-norm scales and biases (ones / zeros
by default), so a mix-up between tensors changes the logits. reference.npz:
  tokens [2, 12]                  logits [2, 12, V]     (no padding)
  tokens_padded, attention_mask   logits_padded         (row 1 right-padded)
  tokens_left_padded, attention_mask_left, logits_left_padded (row 1
                                  left-padded, default positions 0..L-1)
  tokens, position_ids >= 1000   logits_offset         (positions past 512,
                                  spaced 37 apart)
  long_tokens [1, 600]            logits_long_tail      (last 8 positions)
"""
from __future__ import annotations

import os

import numpy as np
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20240611
VOCAB = 128
BATCH, LEN, LONG, TAIL, PAD = 2, 12, 600, 8, 5
OFFSET = 1000


def _configs():
  common = dict(vocab_size=VOCAB, num_hidden_layers=2, intermediate_size=64,
                max_position_embeddings=2048, initializer_range=0.25,
                attention_dropout=0.0, bos_token_id=1, eos_token_id=2,
                pad_token_id=None)
  llama = transformers.LlamaConfig(
      hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
      rope_theta=100.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
      **common)
  llama3 = transformers.LlamaConfig(
      hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
      head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5,
      rope_scaling={'rope_type': 'llama3', 'factor': 8.0,
                    'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                    'original_max_position_embeddings': 64},
      tie_word_embeddings=True, **common)
  qwen2 = transformers.Qwen2Config(
      hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
      rope_theta=1000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
      use_sliding_window=False, **common)
  return {'hf_tiny_llama': (llama, transformers.LlamaForCausalLM, None),
          'hf_tiny_llama3': (llama3, transformers.LlamaForCausalLM, '40KB'),
          'hf_tiny_qwen2': (qwen2, transformers.Qwen2ForCausalLM, None)}


def _randomize(model):
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('norm.weight'):  # ones by default
        p.add_(0.3 * torch.randn_like(p))
      elif name.endswith('.bias'):  # zeros by default
        p.normal_(0.0, 0.3)
      p.copy_(p.to(torch.bfloat16).to(torch.float32))


def _logits(model, tokens, **kw):
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens, dtype=torch.long),
                 **kw).logits.numpy().astype(np.float32)


def build(name, config, cls, shard_size, seed):
  torch.manual_seed(seed)
  config._attn_implementation = 'eager'  # pylint: disable=protected-access
  model = cls(config).eval()
  _randomize(model)
  rng = np.random.RandomState(seed)
  tokens = rng.randint(0, VOCAB, size=(BATCH, LEN)).astype(np.int32)
  tokens[:, 0] = 1  # bos
  mask = np.ones((BATCH, LEN), np.int32)
  mask[1, LEN - PAD:] = 0
  tokens_padded = np.where(mask > 0, tokens, 0).astype(np.int32)
  mask_left = mask[:, ::-1].copy()
  tokens_left = np.where(mask_left > 0, tokens, 0).astype(np.int32)
  long_tokens = rng.randint(0, VOCAB, size=(1, LONG)).astype(np.int32)
  # Rotary attention sees only position differences: spread positions out
  # (gaps of 37, row 1 another 1000 on) so the logits depend on them.
  positions = (OFFSET + 1000 * np.arange(BATCH)[:, None] +
               37 * np.arange(LEN)[None, :])
  ref = dict(
      tokens=tokens, logits=_logits(model, tokens),
      tokens_padded=tokens_padded, attention_mask=mask,
      logits_padded=_logits(model, tokens_padded,
                            attention_mask=torch.tensor(mask)),
      tokens_left_padded=tokens_left, attention_mask_left=mask_left,
      logits_left_padded=_logits(model, tokens_left,
                                 attention_mask=torch.tensor(mask_left)),
      position_ids=positions.astype(np.int32),
      logits_offset=_logits(model, tokens,
                            position_ids=torch.tensor(positions)),
      long_tokens=long_tokens,
      logits_long_tail=_logits(model, long_tokens)[:, -TAIL:])
  out = os.path.join(HERE, name)
  os.makedirs(out, exist_ok=True)
  for f in os.listdir(out):
    os.remove(os.path.join(out, f))
  kw = {'max_shard_size': shard_size} if shard_size else {}
  model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True, **kw)
  gen = os.path.join(out, 'generation_config.json')
  if os.path.exists(gen):
    os.remove(gen)
  np.savez_compressed(os.path.join(out, 'reference.npz'), **ref)
  for f in os.listdir(out):  # safetensors writes 0600 files
    os.chmod(os.path.join(out, f), 0o644)
  print(name, sorted(os.listdir(out)), 'logit std %.2f' % ref['logits'].std())


def main():
  for i, (name, (config, cls, shard)) in enumerate(sorted(_configs().items())):
    build(name, config, cls, shard, SEED + i)


if __name__ == '__main__':
  main()
