"""Training tokens/s of recjax's decoder-only LM beside HF's PyTorch Llama, + MFU.

The decoder-only counterpart of `train_throughput.py` (FLAN-T5), measured
the same way by the same code (its runner, interleaving, peak, matmul floor
and report are imported, not copied). For each config it trains the same
architecture, batch and lengths on the same CPU in the same run:

* recjax: `recjax.models.decoder_only.DecoderOnlyTransformer` in a
  `model_api.DecoderOnlyModel` (prefix LM, z-loss 1e-4), the trainer's own
  `make_train_step` jitted by `Partitioner.partition` over a mesh of all
  local devices with the state donated, recjax's T5X-default Adafactor at a
  constant lr 1e-3 (`train_throughput.RecjaxRunner`).
* PyTorch: `transformers.LlamaForCausalLM` (LlamaConfig with the same sizes,
  default SDPA attention) with `transformers.optimization.Adafactor(
  scale_parameter=True, relative_step=False, lr=1e-3)`, as the T5 benchmark's
  torch side, run by `benchmarks/_torch_llama_train.py` in a separate
  interpreter (`--torch_python`, default $RECJAX_TORCH_PYTHON or
  /tmp/refvenv/bin/python); without it recjax is reported alone (ratio null).

Configs (Llama architecture: RMSNorm, rotary, SwiGLU, GQA):
* tiny: `gin_configs/models/decoder_tiny.gin` (emb 64, 2 layers, 4 heads /
  2 kv heads of 16, mlp 128, vocab 32128, untied): 4.2M parameters, all but
  0.1M of them in the two vocabulary matrices.
* 100m: decoder_tiny.gin with the sizes of a small Llama: emb 768, 12
  layers, 12 heads / 4 kv heads (GQA 3:1, as Llama-3) of 64, mlp 2048,
  Llama-2's vocab 32000, tied embeddings (as Llama-3.2 and Qwen2.5's small
  sizes): 100.1M parameters.

Batch: one fixed prefix-LM batch, as `seqio.PrefixLMFeatureConverter` makes
it for `DecoderOnlyModel`: `batch` rows of `inputs + targets` random token
ids in [1, vocab), no padding and no packing (Hugging Face's Llama has no
segment-id packing outside flash-attention kernels), loss on the targets
only (PyTorch: labels -100 on the prefix). tokens/step = batch * (inputs +
targets), the trainer's `num_tokens` (every row is full length).

Fairness, as train_throughput.py: float32 activations and parameters in both
(bfloat16 is emulated on the CPU: slower, and it would compare XLA's and
torch's emulations; the gin's 'bfloat16' default is overridden); dropout 0;
torch gets the fastest thread count and OMP_WAIT_POLICY=PASSIVE; the same
glibc malloc settings on both sides (`--malloc_tuning both`); compile and
warm-up excluded; repeats alternate recjax / PyTorch and the median repeat is
reported.

Model FLOPs: exact matmul count of one forward pass (q, k, v with kv_heads,
o, QK^T and AV over the full [L, L] scores incl. the causal masked half, the
SwiGLU MLP's three matmuls, the logits over the whole sequence: both
frameworks compute logits at every position) x 3. MFU is against the measured
matmul peak (best of jnp.dot and torch.matmul 2048^3 float32), and the
`ratio_ceiling` = PyTorch step / the step's matmuls alone in XLA, both exactly
as train_throughput.py defines them.

  .venv/bin/python benchmarks/decoder_train_throughput.py
  .venv/bin/python benchmarks/decoder_train_throughput.py --configs 100m \
      --100m_batch 4 --100m_inputs 224 --100m_targets 32 --steps 2

The last stdout line is one JSON object: config, recjax_tokens_per_s,
pytorch_tokens_per_s, ratio (recjax / pytorch), mfu (recjax's),
ratio_ceiling for the '100m' row, malloc_tuning, plus `rows` with all rows.
Goal: ratio >= 1.2 and MFU >= 55% for 100m.
"""
from __future__ import annotations

import pathlib

import train_throughput as tt  # this directory is sys.path[0]

HELPER = pathlib.Path(__file__).resolve().parent / "_torch_llama_train.py"
# (batch, inputs, targets): a few minutes each on 2 idle cores.
DEFAULT_SHAPES = {"tiny": (32, 192, 64), "100m": (2, 224, 32)}
# DecoderOnlyConfig bindings over decoder_tiny.gin (see the module doc).
SIZES = {
    "tiny": {},
    "100m": {"emb_dim": 768, "num_layers": 12, "num_heads": 12,
             "num_kv_heads": 4, "head_dim": 64, "mlp_dim": 2048,
             "vocab_size": 32000, "tie_word_embeddings": True},
}


def load_config(name: str, dropout: float, dtype: str):
  """DecoderOnlyConfig: decoder_tiny.gin, SIZES[name], dtype/dropout."""
  from recjax.models import decoder_only  # pylint: disable=g-import-not-at-top
  if name not in SIZES:
    raise ValueError(f"unknown config {name!r}; expected one of {list(SIZES)}")
  bindings = [f"ACTIVATION_DTYPE = '{dtype}'", f"DROPOUT_RATE = {dropout}"]
  bindings += [f"DecoderOnlyConfig.{k} = {v!r}" for k, v in SIZES[name].items()]
  return tt.gin_config(decoder_only.DecoderOnlyConfig,
                       "models/decoder_tiny.gin", bindings)


def hf_arch(cfg) -> dict:
  """LlamaConfig keyword arguments for the same architecture."""
  if cfg.qkv_bias:
    raise ValueError(f"{cfg}: q/k/v biases are Qwen2's; LlamaForCausalLM "
                     "has none")
  arch = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.emb_dim,
          "intermediate_size": cfg.mlp_dim,
          "num_hidden_layers": cfg.num_layers,
          "num_attention_heads": cfg.num_heads,
          "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
          "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
          "tie_word_embeddings": cfg.tie_word_embeddings,
          "attention_dropout": cfg.dropout_rate, "hidden_act": "silu",
          "max_position_embeddings": 4096}
  if cfg.rope_scaling_dict:
    arch["rope_scaling"] = cfg.rope_scaling_dict
  return arch


def forward_matmuls(cfg, b: int, li: int, lt: int) -> list:
  """(groups, m, k, n) of every matmul of one forward pass (as
  train_throughput.forward_matmuls) over sequences of li + lt tokens."""
  d, f, v, n = cfg.emb_dim, cfg.mlp_dim, cfg.vocab_size, b * (li + lt)
  h, kv, dh, length = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, li + lt
  layer = [(1, n, d, h * dh), (1, n, d, kv * dh), (1, n, d, kv * dh),
           (b * h, length, dh, length), (b * h, length, length, dh),
           (1, n, h * dh, d), (1, n, d, f), (1, n, d, f), (1, n, f, d)]
  return layer * cfg.num_layers + [(1, n, d, v)]


def approx_6nd_flops(cfg, b: int, li: int, lt: int) -> float:
  """6 * (matmul params, logits counted once even when tied) * tokens."""
  d, hd, kvd = cfg.emb_dim, cfg.num_heads * cfg.head_dim, (
      cfg.num_kv_heads * cfg.head_dim)
  per_layer = 2 * d * hd + 2 * d * kvd + 3 * d * cfg.mlp_dim
  return 6.0 * (cfg.num_layers * per_layer + d * cfg.vocab_size) * b * (li + lt)


def make_batch(vocab: int, b: int, li: int, lt: int, seed: int) -> dict:
  """A PrefixLMFeatureConverter batch (unpacked) of random full rows."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  seq = rng.integers(1, vocab, (b, li + lt), dtype=np.int32)
  shifted = np.concatenate([np.zeros((b, 1), np.int32), seq[:, :-1]], 1)
  is_target = np.arange(li + lt) >= li
  return {"decoder_input_tokens": shifted, "decoder_target_tokens": seq,
          "decoder_loss_weights": np.broadcast_to(
              is_target, seq.shape).astype(np.int32),
          # The prefix and the first target position see the whole prefix
          # (only read with inputs_bidirectional_attention).
          "decoder_causal_attention": np.broadcast_to(
              np.arange(li + lt) <= li, seq.shape).astype(np.int32)}


def recjax_runner(cfg, b: int, li: int, lt: int, seed: int):
  from recjax.models import decoder_only  # pylint: disable=g-import-not-at-top
  from recjax.train import model_api  # pylint: disable=g-import-not-at-top
  model = model_api.DecoderOnlyModel(
      decoder_only.DecoderOnlyTransformer(cfg))
  return tt.RecjaxRunner(cfg, make_batch(cfg.vocab_size, b, li, lt, seed),
                         seed, model=model)


def bench_config(name: str, args, torch_python, jax_peak: float) -> dict:
  b, li, lt = (getattr(args, f"{name}_batch"), getattr(args, f"{name}_inputs"),
               getattr(args, f"{name}_targets"))
  cfg = load_config(name, args.dropout, args.dtype)
  return tt.bench_model(
      name, args, torch_python, jax_peak, b, li, lt,
      shapes=forward_matmuls(cfg, b, li, lt),
      flops_6nd=approx_6nd_flops(cfg, b, li, lt), arch=hf_arch(cfg),
      dropout=cfg.dropout_rate, dtype=cfg.dtype, helper=HELPER,
      make_recjax=lambda: recjax_runner(cfg, b, li, lt, args.seed))


def main(argv=None) -> dict:
  args = tt.parse_args(argv, __doc__, "tiny,100m",
                       f"comma-separated, of {list(SIZES)}", DEFAULT_SHAPES)
  torch_python, jax_peak = tt.prepare(args)
  rows = [bench_config(name.strip(), args, torch_python, jax_peak)
          for name in args.configs.split(",") if name.strip()]
  return tt.report(rows, args, "100m", goal=1.2)


if __name__ == "__main__":
  main()
