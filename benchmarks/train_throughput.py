"""Training tokens/s of recjax's FLAN-T5 beside Hugging Face's PyTorch T5, + MFU.

For each config (`gin_configs/models/flan_t5_{tiny,small}.gin` sizes) this
trains the same architecture, batch and input/target lengths on the same CPU
in the same run:

* recjax: `recjax.models.t5.Transformer` in an `EncoderDecoderModel`, the
  trainer's own `make_train_step` jitted by `Partitioner.partition` with the
  state donated (exactly what `train()` runs: forward, backward, z-loss,
  Adafactor update and the finite-check in one XLA program), recjax's
  T5X-default Adafactor at a constant lr 1e-3.
* PyTorch: `transformers.T5ForConditionalGeneration` (T5Config with
  feed_forward_proj='gated-gelu', tie_word_embeddings=False, the same sizes)
  with `transformers.optimization.Adafactor(scale_parameter=True,
  relative_step=False, lr=1e-3)`, T5's standard fine-tuning optimizer, run by
  `benchmarks/_torch_t5_train.py` in a separate interpreter (`--torch_python`,
  default $RECJAX_TORCH_PYTHON or /tmp/refvenv/bin/python). If that python is
  missing the script says so and reports recjax alone (ratio null).

Fairness: float32 activations and parameters for both (bfloat16 on the CPU is
emulated and slower, so it would penalise neither framework meaningfully but
makes the comparison noisier; the gins' 'bfloat16' default is overridden);
the same dropout rate (--dropout, default 0.0 = the gins' DROPOUT_RATE); both
may use every core (XLA's intra-op pool covers all cores by default; torch
gets the fastest of torch.set_num_threads(1..nproc), timed after its warm-up,
and OMP_WAIT_POLICY=PASSIVE unless set, see TorchRunner). The two frameworks never run at the same time:
the PyTorch process waits on a pipe while recjax runs and vice versa, and the
repeats alternate (recjax, torch, recjax, torch, ...) so that both see the
same background load.

Host memory: recjax's entry points tune glibc's malloc (recjax.host_malloc)
so that XLA:CPU's per-step temporaries are reused instead of being mmap'd and
page-faulted afresh every step. By default (--malloc_tuning both) the PyTorch
process gets the same settings through glibc's MALLOC_* variables, so the
comparison is like for like; PyTorch gains from them too. 'recjax' compares
recjax as launched with PyTorch as shipped, 'none' uses glibc's defaults.

Tokens: one fixed batch of full-length random token ids in [1, vocab) (no
padding, no packing), so tokens/step = batch * (inputs_length +
targets_length), which equals the trainer's `num_tokens` metric (non-padding
input + target tokens) and is what is counted for both frameworks.

Timing: compile + `--warmup_steps` steps are excluded; then `--repeats`
timings of `--steps` steps each (results fetched to the host at the end, so
every step is finished); the median repeat is reported.

Model FLOPs: an exact per-layer count of the matmul FLOPs of one forward pass
(q/k/v/o projections, the QK^T and AV attention products over the full
[L, L] score matrices incl. the causal decoder's masked half, cross-attention,
the gated-GELU MLP's three matmuls, the untied logits layer; 2 FLOPs per
multiply-add), times 3 for forward + backward. Elementwise ops, softmax,
norms and the optimizer are not counted. The `6 * matmul_params * tokens`
approximation is printed beside it for reference (it ignores attention
products and over-counts encoder-decoder models, whose decoder and logits
parameters only see target tokens, so it is not used for MFU).

Peak: median GFLOP/s of a `--matmul_size` square float32 matmul, timed in JAX
(jnp.dot, jitted) and in torch (torch.matmul, best of 1..nproc threads) on the
same machine, re-measured beside every repeat; MFU for both frameworks is
against the largest of these (the best the machine demonstrably did).

Matmul floor: the step's matmuls alone (every forward product of the FLOPs
count above, with its two gradient products, as one jitted program in JAX
and as torch.matmul calls in the PyTorch process), measured --repeats times
before the warm-up steps, the fastest kept. A step that runs these products
on XLA's matmul kernels cannot be faster than its floor, so `ratio_ceiling`
= PyTorch's step / XLA's floor bounds the ratio such a step could reach.
The floors are timed again after each repeat's steps, and the time outside
the matmul kernels is the median step minus the median of these interleaved
floors (the machine drifts by 20-30% within minutes, so the fastest floor,
timed minutes earlier, would overstate it).

  .venv/bin/python benchmarks/train_throughput.py
  .venv/bin/python benchmarks/train_throughput.py --configs small \
      --small_batch 8 --small_inputs 128 --small_targets 32 --steps 5

Reference venv (torch is never a recjax dependency; the CPU wheel is pinned):
  python3 -m venv /tmp/refvenv
  /tmp/refvenv/bin/pip install torch==2.13.0 'transformers<5' safetensors

The last stdout line is one JSON object: config, recjax_tokens_per_s,
pytorch_tokens_per_s, ratio (recjax / pytorch), mfu (recjax's),
ratio_ceiling for the 'small' row (the last row if 'small' was not run),
malloc_tuning, plus `rows` with all rows.
Goal: ratio >= 1.5 for small.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HELPER = pathlib.Path(__file__).resolve().parent / "_torch_t5_train.py"
DEFAULT_TORCH_PYTHON = os.environ.get("RECJAX_TORCH_PYTHON",
                                      "/tmp/refvenv/bin/python")
# Defaults that finish in a few minutes on 2 idle cores.
DEFAULT_SHAPES = {"tiny": (32, 256, 64), "small": (8, 128, 32)}


def _log(msg: str) -> None:
  print(f"[{pathlib.Path(sys.argv[0]).stem}] {msg}", file=sys.stderr, flush=True)


from _cli_runs import cpu_model  # noqa: E402,F401  (benchmarks/ on sys.path)


# ----------------------------------------------------------------- configs
def gin_config(make: Callable, gin_file: str, bindings: list):
  """`make()` (a gin-configurable config class) under a model gin + bindings,
  found as the trainer finds it (its `include`s resolve); gin left clear."""
  import gin  # pylint: disable=g-import-not-at-top
  from recjax.train import gin_utils  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  gin_utils.parse_gin_flags([gin_file], bindings, finalize_config=False)
  cfg = make()
  gin.clear_config()
  return cfg


def load_config(name: str, dropout: float, dtype: str):
  """T5Config from gin_configs/models/flan_t5_<name>.gin, float32 overrides."""
  from recjax.models import t5  # pylint: disable=g-import-not-at-top
  return gin_config(t5.T5Config, f"models/flan_t5_{name}.gin",
                    [f"ACTIVATION_DTYPE = '{dtype}'", f"DROPOUT_RATE = {dropout}"])


def hf_arch(cfg) -> dict:
  if tuple(cfg.mlp_activations) != ("gelu", "linear") or cfg.logits_via_embedding:
    raise ValueError(f"{cfg}: only gated-GELU, untied T5.1.1 maps onto "
                     "feed_forward_proj='gated-gelu', tie_word_embeddings=False")
  return {"d_model": cfg.emb_dim, "d_ff": cfg.mlp_dim, "d_kv": cfg.head_dim,
          "num_heads": cfg.num_heads, "num_layers": cfg.num_encoder_layers,
          "num_decoder_layers": cfg.num_decoder_layers,
          "vocab_size": cfg.vocab_size, "dropout_rate": cfg.dropout_rate}


def forward_matmuls(cfg, b: int, li: int, lt: int) -> list:
  """(groups, m, k, n) of every matmul of one forward pass, in model order.

  A [groups, m, k] x [groups, k, n] product; weight matmuls have groups=1 and
  m = tokens, attention's QK^T and AV have groups = batch * heads.
  """
  d, f, v = cfg.emb_dim, cfg.mlp_dim, cfg.vocab_size
  h, dh = cfg.num_heads, cfg.head_dim
  hd = h * dh
  n_in = len(cfg.mlp_activations)

  def mlp(tokens):
    return [(1, tokens, d, f)] * n_in + [(1, tokens, f, d)]

  def attn(lq, lk):  # q, k, v, QK^T, AV, out
    return ([(1, b * lq, d, hd), (1, b * lk, d, hd), (1, b * lk, d, hd),
             (b * h, lq, dh, lk), (b * h, lq, lk, dh), (1, b * lq, hd, d)])

  enc = (attn(li, li) + mlp(b * li)) * cfg.num_encoder_layers
  dec = (attn(lt, lt) + attn(lt, li) + mlp(b * lt)) * cfg.num_decoder_layers
  return enc + dec + [(1, b * lt, d, v)]


def matmul_train_flops(shapes: list) -> float:
  """3 x the FLOPs of forward products (g, m, k, n): forward + 2 gradients."""
  return 3.0 * sum(2 * g * m * k * n for g, m, k, n in shapes)


def train_flops(cfg, b: int, li: int, lt: int) -> float:
  """Exact matmul FLOPs of one training step (3 x forward; see module doc)."""
  return matmul_train_flops(forward_matmuls(cfg, b, li, lt))


def approx_6nd_flops(cfg, b: int, li: int, lt: int) -> float:
  """6 * (matmul params) * (input + target tokens): the rough rule."""
  d, f, v = cfg.emb_dim, cfg.mlp_dim, cfg.vocab_size
  hd = cfg.num_heads * cfg.head_dim
  mlp = d * f * (len(cfg.mlp_activations) + 1)
  n = (cfg.num_encoder_layers * (4 * d * hd + mlp) +
       cfg.num_decoder_layers * (8 * d * hd + mlp) + d * v)
  return 6.0 * n * b * (li + lt)


def make_batch(vocab: int, b: int, li: int, lt: int, seed: int) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  inputs = rng.integers(1, vocab, (b, li), dtype=np.int32)
  targets = rng.integers(1, vocab, (b, lt), dtype=np.int32)
  dec_in = np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], 1)
  return {"encoder_input_tokens": inputs, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": targets,
          "decoder_loss_weights": np.ones((b, lt), np.int32)}


# ----------------------------------------------------------------- JAX side
def jax_matmul_gflops(n: int, reps: int) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), jnp.float32)
  b = jax.random.normal(kb, (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    dot(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2.0 * n ** 3 / statistics.median(times) / 1e9


def jax_matmul_floor(shapes: list) -> Callable[[int], float]:
  """Timer (reps -> median seconds) of the training step's matmuls alone.

  For every forward matmul X[g,m,k] W[g,k,n] of `forward_matmuls`: the
  product, dX = dY W^T and dW = X^T dY (contracting n and m), on random
  inputs, all outputs returned. Nothing else of the step runs, so no step
  on XLA's matmuls can take less: the step time minus this is the time
  spent outside the matmul kernels.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  key = jax.random.PRNGKey(0)
  operands = []
  for i, (g, m, k, n) in enumerate(shapes):
    ka, kb, kc = jax.random.split(jax.random.fold_in(key, i), 3)
    operands.append((jax.random.normal(ka, (g, m, k)),
                     jax.random.normal(kb, (g, k, n)),
                     jax.random.normal(kc, (g, m, n))))
  batch = ((0,), (0,))

  @jax.jit
  def matmuls(operands):
    out = []
    for x, w, dy in operands:
      out.append(lax.dot_general(x, w, (((2,), (1,)), batch)))   # Y
      out.append(lax.dot_general(dy, w, (((2,), (2,)), batch)))  # dX
      out.append(lax.dot_general(x, dy, (((1,), (1,)), batch)))  # dW
    return out

  def seconds(reps: int) -> float:
    times = []
    for _ in range(reps):
      t0 = time.perf_counter()
      jax.block_until_ready(matmuls(operands))
      times.append(time.perf_counter() - t0)
    return statistics.median(times)

  seconds(1)  # compile
  return seconds


class RecjaxRunner:
  """The trainer's jitted, donated train step on one fixed batch.

  `model` is a `model_api.BaseModel`; None = FLAN-T5 `cfg` in an
  `EncoderDecoderModel` (decoder_train_throughput.py passes its own).
  """

  def __init__(self, cfg, batch: dict, seed: int, model=None):
    import jax  # pylint: disable=g-import-not-at-top
    from recjax.train import model_api, optimizers, partitioning, trainer  # pylint: disable=g-import-not-at-top,g-multiple-import
    self._jax = jax
    if model is None:
      from recjax.models import t5  # pylint: disable=g-import-not-at-top
      model = model_api.EncoderDecoderModel(t5.Transformer(cfg))
    partitioner = partitioning.Partitioner()
    shapes = {k: v.shape for k, v in batch.items()}
    rng = jax.random.PRNGKey(seed)
    setup = trainer.setup_state(
        model, partitioner,
        lambda _: optimizers.adafactor(
            learning_rate=optimizers.constant(1e-3)), shapes, rng)
    self.state = trainer.init_state(model, setup, partitioner, shapes, rng)
    self.params = sum(x.size for x in jax.tree_util.tree_leaves(
        self.state.params))
    step_fn = trainer.make_train_step(model, setup.tx, None,
                                      partitioner.data_sharding())
    batch_shardings = {k: partitioner.data_sharding() for k in batch}
    self.step = partitioner.partition(
        step_fn,
        in_shardings=(setup.state_shardings, batch_shardings,
                      partitioner.replicated()),
        out_shardings=(setup.state_shardings, partitioner.replicated()),
        donate_argnums=(0,))
    self.batch = partitioner.shard_batch(batch)
    self.rng = jax.random.PRNGKey(seed + 1)

  def run(self, n: int) -> tuple[float, float]:
    """(seconds, last loss) for n steps, all finished."""
    t0 = time.perf_counter()
    metrics = None
    for _ in range(n):
      self.state, metrics = self.step(self.state, self.batch, self.rng)
    loss = float(self._jax.device_get(metrics["loss"]))
    self._jax.block_until_ready(self.state)
    return time.perf_counter() - t0, loss


def recjax_runner(cfg, b: int, li: int, lt: int, seed: int) -> RecjaxRunner:
  """FLAN-T5 `cfg`'s runner on `make_batch`'s fixed batch (as
  decoder_train_throughput.recjax_runner for its model)."""
  return RecjaxRunner(cfg, make_batch(cfg.vocab_size, b, li, lt, seed), seed)


# ----------------------------------------------------------------- torch side
class TorchRunner:
  """The PyTorch helper process, driven over a pipe (see _torch_t5_train.py;
  `helper` is another script serving the same protocol)."""

  def __init__(self, python: str, arch: dict, b: int, li: int, lt: int,
               warmup: int, threads: int, matmul_size: int, seed: int,
               malloc_tuning: bool = False, helper: pathlib.Path = HELPER):
    cmd = [python, str(helper), "--arch", json.dumps(arch),
           "--batch_size", str(b), "--inputs_length", str(li),
           "--targets_length", str(lt), "--warmup_steps", str(warmup),
           "--threads", str(threads), "--matmul_size", str(matmul_size),
           "--seed", str(seed)]
    # libgomp's default busy-wait (OMP_WAIT_POLICY=ACTIVE) collapses when the
    # cores are shared: measured here with other jobs running, HF T5 small at
    # 2 threads took 32 s/step with ACTIVE vs 3.9 s/step with PASSIVE (tiny:
    # 3.0 vs 0.1). PASSIVE unless the caller chose a policy.
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if malloc_tuning:  # recjax.host_malloc's settings, via glibc's variables
      env.update(MALLOC_ARENA_MAX="1", MALLOC_MMAP_MAX_="0",
                 MALLOC_TRIM_THRESHOLD_=str(2**62))
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=env)
    self.info = self._read()
    if not self.info.get("ready"):
      raise RuntimeError(f"torch helper failed to start: {self.info}")

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      rc = self.proc.wait()
      raise RuntimeError(f"torch helper exited (rc={rc}); see stderr above")
    return json.loads(line)

  def run(self, n: int) -> tuple[float, float]:
    self.proc.stdin.write(f"run {n}\n")
    self.proc.stdin.flush()
    out = self._read()
    return out["seconds"], out["loss"]

  def matmul_gflops(self) -> float:
    self.proc.stdin.write("matmul\n")
    self.proc.stdin.flush()
    return self._read()["matmul_gflops"]

  def matmul_floor_s(self, shapes: list) -> float:
    self.proc.stdin.write(f"floor {json.dumps(shapes, separators=(',', ':'))}\n")
    self.proc.stdin.flush()
    return self._read()["floor_s"]

  def close(self) -> None:
    if self.proc.poll() is None:
      try:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)
      except (BrokenPipeError, subprocess.TimeoutExpired):
        self.proc.kill()


def torch_available(python: str) -> Optional[str]:
  """None if `python` can import torch and transformers, else the reason."""
  if not os.path.exists(python):
    return f"{python} does not exist"
  r = subprocess.run([python, "-c", "import torch, transformers"],
                     capture_output=True, text=True, check=False)
  if r.returncode:
    return f"{python} cannot import torch/transformers: {r.stderr.strip()[-300:]}"
  return None


# ----------------------------------------------------------------- main
def bench_config(name: str, args, torch_python: Optional[str],
                 jax_peak: float) -> dict:
  b, li, lt = (getattr(args, f"{name}_batch"), getattr(args, f"{name}_inputs"),
               getattr(args, f"{name}_targets"))
  cfg = load_config(name, args.dropout, args.dtype)
  return bench_model(
      name, args, torch_python, jax_peak, b, li, lt,
      shapes=forward_matmuls(cfg, b, li, lt),
      flops_6nd=approx_6nd_flops(cfg, b, li, lt), arch=hf_arch(cfg),
      dropout=cfg.dropout_rate, dtype=cfg.dtype,
      make_recjax=lambda: recjax_runner(cfg, b, li, lt, args.seed))


def bench_model(name: str, args, torch_python: Optional[str], jax_peak: float,
                b: int, li: int, lt: int, *, shapes: list, flops_6nd: float,
                arch: dict, dropout: float, dtype: str,
                make_recjax: Callable[[], RecjaxRunner],
                helper: pathlib.Path = HELPER) -> dict:
  """One table row: recjax's step and the torch `helper`'s, interleaved.

  `shapes` are the forward matmuls (g, m, k, n) of one step (the FLOPs count
  and the matmul floors); `arch` goes to the helper as --arch JSON.
  """
  tokens = b * (li + lt)
  flops = matmul_train_flops(shapes)
  _log(f"{name}: batch {b}, inputs {li}, targets {lt}, dropout "
       f"{dropout}, dtype {dtype}, {tokens} tokens/step, "
       f"{flops / 1e9:.1f} GFLOP/step")

  torch_runner = None
  if torch_python:
    t0 = time.perf_counter()
    torch_runner = TorchRunner(torch_python, arch, b, li, lt,
                               args.warmup_steps, args.threads,
                               args.matmul_size, args.seed,
                               malloc_tuning=args.malloc_tuning == "both",
                               helper=helper)
    _log(f"{name}: torch ready in {time.perf_counter() - t0:.1f}s "
         f"({torch_runner.info['params']} params, "
         f"{torch_runner.info['threads']} threads; s/step by threads "
         f"{torch_runner.info.get('s_per_step_by_threads')}, "
         f"OMP_WAIT_POLICY={torch_runner.info.get('omp_wait_policy')})")
  try:
    t0 = time.perf_counter()
    runner = make_recjax()
    runner.run(1)  # compile
    compile_s = time.perf_counter() - t0
    # The matmul floors before the warm-up, so that their large buffers are
    # allocated before, not between, the timed repeats.
    floor = jax_matmul_floor(shapes)
    jf = [floor(3) for _ in range(args.repeats)]
    tf = ([torch_runner.matmul_floor_s(shapes) for _ in range(args.repeats)]
          if torch_runner else [])
    if args.warmup_steps > 1:
      runner.run(args.warmup_steps - 1)
    _log(f"{name}: recjax ready in {time.perf_counter() - t0:.1f}s "
         f"(compile + first step {compile_s:.1f}s, {runner.params} params)")

    jt, tt, jfi, tfi = [], [], [], []  # steps; floors interleaved with them
    jax_peaks, torch_peaks = [jax_peak], []
    if torch_runner:
      torch_peaks.append(torch_runner.info["matmul_gflops"])
    for r in range(args.repeats):
      # The peak is re-measured beside every repeat and the best kept: on a
      # shared machine one early measurement can be far below the real peak.
      jax_peaks.append(jax_matmul_gflops(args.matmul_size, 5))
      if torch_runner:
        torch_peaks.append(torch_runner.matmul_gflops())
      s, loss = runner.run(args.steps)
      jt.append(s)
      jfi.append(floor(1))
      msg = f"{name} repeat {r + 1}/{args.repeats}: recjax {s / args.steps:.3f} s/step (loss {loss:.3f})"
      if torch_runner:
        s, loss = torch_runner.run(args.steps)
        tt.append(s)
        tfi.append(torch_runner.matmul_floor_s(shapes))
        msg += f", pytorch {s / args.steps:.3f} s/step (loss {loss:.3f})"
      _log(msg)
    jax_peak = max(jax_peaks)
    torch_peak = max(torch_peaks) if torch_peaks else None
    torch_threads = torch_runner.info["threads"] if torch_runner else None
  finally:
    if torch_runner:
      torch_runner.close()

  peak = max(jax_peak, torch_peak or 0.0)
  j_step = statistics.median(jt) / args.steps
  row = {"config": name, "batch": b, "inputs_length": li,
         "targets_length": lt, "dropout": dropout,
         "params": int(runner.params), "tokens_per_step": tokens,
         "gflop_per_step": flops / 1e9,
         "gflop_per_step_6nd": flops_6nd / 1e9,
         "recjax_s_per_step": j_step,
         "recjax_tokens_per_s": tokens / j_step,
         "recjax_gflops": flops / j_step / 1e9,
         "mfu": flops / j_step / 1e9 / peak,
         "pytorch_s_per_step": None, "pytorch_tokens_per_s": None,
         "pytorch_mfu": None, "ratio": None,
         "jax_matmul_gflops": jax_peak, "torch_matmul_gflops": torch_peak,
         "peak_gflops": peak, "pytorch_threads": torch_threads,
         "recjax_matmul_floor_s": min(jf), "pytorch_matmul_floor_s": None,
         "recjax_matmul_floor_interleaved_s": statistics.median(jfi),
         "pytorch_matmul_floor_interleaved_s": None,
         "ratio_ceiling": None,
         "recjax_repeats_s": jt, "pytorch_repeats_s": tt or None}
  if tt:
    t_step = statistics.median(tt) / args.steps
    row.update(pytorch_s_per_step=t_step, pytorch_tokens_per_s=tokens / t_step,
               pytorch_mfu=flops / t_step / 1e9 / peak, ratio=t_step / j_step,
               pytorch_matmul_floor_s=min(tf),
               pytorch_matmul_floor_interleaved_s=statistics.median(tfi),
               ratio_ceiling=t_step / min(jf))
  return row


def _fmt(x, spec: str) -> str:
  return "n/a" if x is None else format(x, spec)


def parse_args(argv, doc: str, configs: str, configs_help: str,
               shapes: dict) -> argparse.Namespace:
  """The flags shared with decoder_train_throughput.py; `shapes` maps each
  config name to its default (batch, inputs, targets)."""
  p = argparse.ArgumentParser(description=doc.split("\n")[0])
  p.add_argument("--configs", default=configs, help=configs_help)
  for name, (b, li, lt) in shapes.items():
    p.add_argument(f"--{name}_batch", type=int, default=b)
    p.add_argument(f"--{name}_inputs", type=int, default=li)
    p.add_argument(f"--{name}_targets", type=int, default=lt)
  p.add_argument("--steps", type=int, default=4, help="steps per timed repeat")
  p.add_argument("--repeats", type=int, default=5,
                 help="interleaved repeats; the median is reported (timings "
                 "on shared cloud CPUs drift by 20-30%% within minutes)")
  p.add_argument("--warmup_steps", type=int, default=5,
                 help="untimed steps first, for both (recjax: incl. the "
                 "compiling one); recjax's first 3-4 tiny steps ran 2-3x "
                 "slower than the later ones")
  p.add_argument("--dropout", type=float, default=0.0,
                 help="dropout rate for both frameworks (T5X fine-tuning: 0.1)")
  p.add_argument("--dtype", default="float32",
                 help="recjax activation dtype (torch is always float32)")
  p.add_argument("--torch_python", default=DEFAULT_TORCH_PYTHON,
                 help="interpreter with torch + transformers ('' = skip)")
  p.add_argument("--threads", type=int, default=0,
                 help="torch.set_num_threads for the PyTorch side; 0 = the "
                 "fastest of 1..nproc, timed by the helper after warm-up")
  p.add_argument("--matmul_size", type=int, default=2048)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--malloc_tuning", choices=("both", "recjax", "none"),
                 default="both",
                 help="glibc malloc settings of recjax.host_malloc, which "
                 "recjax's entry points apply: 'both' (default, like for "
                 "like) = PyTorch's process gets the same settings through "
                 "glibc's MALLOC_* variables; 'recjax' = recjax as launched "
                 "vs PyTorch as shipped; 'none' = glibc defaults for both")
  return p.parse_args(argv)


def prepare(args) -> tuple[Optional[str], float]:
  """Tunes malloc, checks the torch python; (torch python or None, jnp.dot
  GFLOP/s)."""
  if args.malloc_tuning != "none":
    # Before JAX starts its threads, exactly as recjax.main does.
    from recjax import host_malloc  # pylint: disable=g-import-not-at-top
    if not host_malloc.tune():
      _log("host_malloc.tune() had no effect (not glibc?)")

  torch_python = args.torch_python or None
  if torch_python:
    why = torch_available(torch_python)
    if why:
      print(f"NOTE: no PyTorch reference ({why}); reporting recjax alone, "
            "ratio null. Create it with: python3 -m venv /tmp/refvenv && "
            "/tmp/refvenv/bin/pip install torch==2.13.0 'transformers<5' "
            "safetensors", flush=True)
      torch_python = None

  import jax  # pylint: disable=g-import-not-at-top
  jax_peak = jax_matmul_gflops(args.matmul_size, 10)
  _log(f"jax {jax.__version__} on {jax.devices()}; jnp.dot {args.matmul_size}^3 "
       f"float32: {jax_peak:.1f} GFLOP/s")
  return torch_python, jax_peak


def report(rows: list, args, main_config: str, goal: float) -> dict:
  """Prints the table and the figures below it, then the JSON last line for
  the `main_config` row (the last row if it was not run)."""
  import jax  # pylint: disable=g-import-not-at-top
  print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}; jax "
        f"{jax.__version__}; float32; dropout {args.dropout}; median of "
        f"{args.repeats} x {args.steps} steps; malloc tuning: "
        f"{args.malloc_tuning}")
  head = (f"{'config':<7} {'batch':>5} {'in/tgt':>8} {'recjax tok/s':>13} "
          f"{'pytorch tok/s':>14} {'ratio':>6} {'recjax MFU':>11} "
          f"{'pytorch MFU':>12} {'peak GFLOP/s':>13}")
  print(head)
  print("-" * len(head))
  for r in rows:
    print(f"{r['config']:<7} {r['batch']:>5} "
          f"{str(r['inputs_length']) + '/' + str(r['targets_length']):>8} "
          f"{r['recjax_tokens_per_s']:>13.0f} "
          f"{_fmt(r['pytorch_tokens_per_s'], '.0f'):>14} "
          f"{_fmt(r['ratio'], '.2f'):>6} {r['mfu']:>11.1%} "
          f"{_fmt(r['pytorch_mfu'], '.1%'):>12} {r['peak_gflops']:>13.1f}")
  for r in rows:
    print(f"{r['config']}: {r['gflop_per_step']:.1f} GFLOP/step exact "
          f"({r['gflop_per_step_6nd']:.1f} by 6*N*D); peak = max(jnp.dot "
          f"{r['jax_matmul_gflops']:.1f}, torch.matmul "
          f"{_fmt(r['torch_matmul_gflops'], '.1f')}) GFLOP/s")
  for r in rows:
    print(f"{r['config']}: matmuls alone (forward + both gradients, no other "
          f"op) {r['recjax_matmul_floor_s']:.3f} s in XLA, "
          f"{_fmt(r['pytorch_matmul_floor_s'], '.3f')} s in torch; full step "
          f"{r['recjax_s_per_step']:.3f} s recjax, "
          f"{_fmt(r['pytorch_s_per_step'], '.3f')} s PyTorch; ratio ceiling "
          f"(PyTorch step / XLA matmuls alone) "
          f"{_fmt(r['ratio_ceiling'], '.2f')}")
    if r["pytorch_s_per_step"] is not None:
      jf, tf = (r["recjax_matmul_floor_interleaved_s"],
                r["pytorch_matmul_floor_interleaved_s"])
      j_out = r["recjax_s_per_step"] - jf
      t_out = r["pytorch_s_per_step"] - tf
      room = r["pytorch_s_per_step"] / goal - jf
      print(f"{r['config']}: matmuls alone, timed after each repeat's steps "
            f"(median): {jf:.3f} s in XLA, {tf:.3f} s in torch; outside the "
            f"matmul kernels: recjax {j_out:.3f} s, PyTorch {t_out:.3f} s per "
            f"step; a {goal}x step would leave {room:.3f} s for it")
  main_row = next((r for r in rows if r["config"] == main_config), rows[-1])
  result = {"config": main_row["config"],
            "recjax_tokens_per_s": main_row["recjax_tokens_per_s"],
            "pytorch_tokens_per_s": main_row["pytorch_tokens_per_s"],
            "ratio": main_row["ratio"], "mfu": main_row["mfu"],
            "ratio_ceiling": main_row["ratio_ceiling"],
            "malloc_tuning": args.malloc_tuning, "rows": rows}
  print(json.dumps(result), flush=True)
  return result


def main(argv=None) -> dict:
  args = parse_args(argv, __doc__, "tiny,small",
                    "comma-separated gin_configs/models/flan_t5_<name>.gin",
                    DEFAULT_SHAPES)
  torch_python, jax_peak = prepare(args)
  rows = [bench_config(name.strip(), args, torch_python, jax_peak)
          for name in args.configs.split(",") if name.strip()]
  return report(rows, args, "small", goal=1.5)


if __name__ == "__main__":
  main()
