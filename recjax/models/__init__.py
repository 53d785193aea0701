"""recjax models, each a Flax module with logical axis names on every parameter:
`t5` (FLAN-T5 / T5.1.1, T5X-named parameters), `decoder_only` (Llama /
Qwen2), `lora` (adapters for both), `item_encoder` (ILM's Q-Former),
`hybrid` (RSLLM's projector over SASRec), `sasrec` and `mf` (the baselines'
recommenders)."""
from recjax.models.t5 import T5Config, Transformer  # noqa: F401
