"""PyTorch reference half of `benchmarks/decoder_train_throughput.py`.

Runs under a separate interpreter with torch + transformers (never a recjax
dependency) and imports nothing from recjax. It builds Hugging Face's
`LlamaForCausalLM` from `--arch` (LlamaConfig keyword arguments as JSON),
float32, default attention implementation (SDPA), with
`Adafactor(scale_parameter=True, relative_step=False, lr=1e-3)` as
`_torch_t5_train.py` uses for T5, on one fixed prefix-LM batch: `batch_size`
rows of `inputs_length + targets_length` random token ids in [1, vocab), no
padding, no packing, the loss on the targets only (labels -100 on the
prefix; the model shifts labels itself), as recjax's `DecoderOnlyModel`
trains a `PrefixLMFeatureConverter` batch. Timing requests and output are
`_torch_t5_train.serve`'s protocol (see its module doc).
"""
from __future__ import annotations

import sys

from _torch_t5_train import adafactor_step, serve  # sys.path[0] is here


def build_llama(torch, transformers, arch: dict, args):
  """(model, step): HF Llama and one Adafactor step on a fixed batch -> loss."""
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**arch))
  model = model.to(torch.float32)
  gen = torch.Generator().manual_seed(args.seed)
  b, li, lt = args.batch_size, args.inputs_length, args.targets_length
  input_ids = torch.randint(1, arch["vocab_size"], (b, li + lt), generator=gen)
  labels = input_ids.clone()
  labels[:, :li] = -100  # predicted from position li-1 on: lt targets
  return model, adafactor_step(model, input_ids=input_ids,
                               attention_mask=torch.ones_like(input_ids),
                               labels=labels)


if __name__ == "__main__":
  sys.exit(serve(build_llama, __doc__))
