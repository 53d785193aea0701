"""Builds the golden Hugging Face T5.1.1 fixture in tests/testdata/hf_tiny_t5/.

Run with a SEPARATE reference venv (torch never enters recjax's environment):

  python3 -m venv /tmp/refvenv
  /tmp/refvenv/bin/pip install torch==2.13.0 'transformers<5' safetensors numpy
  /tmp/refvenv/bin/python tests/testdata/make_hf_tiny_t5.py

transformers 4.x is required: 5.x always ties T5's lm_head to `shared` (its
config forces tie_word_embeddings=True), so it cannot build a genuinely untied
T5.1.1 / FLAN-T5 model. The fixture was made with transformers 4.57.6.

The model is a random T5.1.1-style `T5ForConditionalGeneration` (gated-gelu,
untied logits) with weights rounded to bfloat16, so the committed safetensors
file stays small (and recjax's bfloat16 safetensors reading is exercised); the
reference logits are computed in float32 from exactly those rounded weights.
The encoder (160 tokens) is longer than max_distance (128) and the decoder (24)
longer than its exact-bucket range (16), so the logarithmic buckets and the
clamp at the last bucket are both exercised by the parity test.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import transformers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'hf_tiny_t5')
SEED = 20240611
BATCH, ENC_LEN, DEC_LEN = 2, 160, 24


def main():
  torch.manual_seed(SEED)
  config = transformers.T5Config(
      vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2,
      num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=32,
      relative_attention_max_distance=128, dropout_rate=0.0,
      layer_norm_epsilon=1e-6, feed_forward_proj='gated-gelu',
      tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
      decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'layer_norm' in name:  # ones by default: perturb so a mix-up shows
        p.add_(0.2 * torch.randn_like(p))
      p.copy_(p.to(torch.bfloat16).to(torch.float32))

  rng = np.random.RandomState(SEED)
  enc = rng.randint(2, 128, size=(BATCH, ENC_LEN)).astype(np.int32)
  dec = rng.randint(2, 128, size=(BATCH, DEC_LEN)).astype(np.int32)
  dec[:, 0] = 0  # decoder start token
  targets = rng.randint(2, 128, size=(BATCH, DEC_LEN)).astype(np.int32)
  enc_padded = enc.copy()
  enc_padded[1, ENC_LEN - 40:] = 0  # second example: 40 padding positions
  mask = (enc_padded > 0).astype(np.int64)

  with torch.no_grad():
    logits = model(input_ids=torch.tensor(enc, dtype=torch.long),
                   decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits
    logits_masked = model(
        input_ids=torch.tensor(enc_padded, dtype=torch.long),
        attention_mask=torch.tensor(mask),
        decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits

  os.makedirs(OUT, exist_ok=True)
  model.to(torch.bfloat16).save_pretrained(OUT, safe_serialization=True)
  for extra in ('generation_config.json',):
    if os.path.exists(os.path.join(OUT, extra)):
      os.remove(os.path.join(OUT, extra))
  np.savez_compressed(
      os.path.join(OUT, 'reference.npz'), encoder_input_tokens=enc,
      encoder_input_tokens_padded=enc_padded, decoder_input_tokens=dec,
      decoder_target_tokens=targets,
      logits=logits.numpy().astype(np.float32),
      logits_masked=logits_masked.numpy().astype(np.float32))
  print('wrote', sorted(os.listdir(OUT)))


if __name__ == '__main__':
  main()
