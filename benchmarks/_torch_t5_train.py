"""PyTorch reference half of `benchmarks/train_throughput.py` (a subprocess).

Runs under a *separate* interpreter with torch + transformers (never a recjax
dependency); it imports nothing from recjax. It builds Hugging Face's
`T5ForConditionalGeneration` with the architecture given as JSON, an
`Adafactor(scale_parameter=True, relative_step=False, lr=1e-3)` optimizer and
one fixed batch of full-length random token ids (no padding), warms up, then
serves timing requests so the parent can interleave its recjax repeats with
ours (both see the same background load):

  stdin  "run N"  -> stdout {"seconds": ..., "steps": N, "loss": ...}
  stdin  "matmul" -> stdout {"matmul_gflops": ...} (best of 1..nproc threads)
  stdin  "floor [[g,m,k,n],...]" -> stdout {"floor_s": ...} (the step's
         matmuls alone, at the chosen thread count)
  stdin  "quit"   -> exit 0

The first stdout line is {"ready": true, "params": ..., "matmul_gflops": ...,
"threads": ..., "versions": ...}. Every stdout line is one JSON object; all
other output goes to stderr.

Reference venv (CPU wheel; never let pip pick an unpinned torch):
  python3 -m venv /tmp/refvenv
  /tmp/refvenv/bin/pip install torch==2.13.0 'transformers<5' safetensors
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _emit(obj: dict) -> None:
  sys.stdout.write(json.dumps(obj) + "\n")
  sys.stdout.flush()


def _matmul_gflops(torch, n: int, reps: int) -> float:
  """Median float32 GFLOP/s of an n x n x n torch.matmul (peak reference;
  the caller takes the best over 1..nproc threads)."""
  a = torch.randn(n, n, dtype=torch.float32)
  b = torch.randn(n, n, dtype=torch.float32)
  torch.matmul(a, b)
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    torch.matmul(a, b)
    times.append(time.perf_counter() - t0)
  return 2.0 * n ** 3 / statistics.median(times) / 1e9


def _matmul_floor_s(torch, shapes: list, reps: int) -> float:
  """Median seconds of the step's matmuls alone: for every forward product
  X[g,m,k] W[g,k,n], Y = XW, dX = dY W^T and dW = X^T dY (as
  train_throughput.jax_matmul_floor)."""
  gen = torch.Generator().manual_seed(0)
  ops = [(torch.randn(g, m, k, generator=gen), torch.randn(g, k, n, generator=gen),
          torch.randn(g, m, n, generator=gen)) for g, m, k, n in shapes]

  def once():
    with torch.no_grad():
      return [(torch.matmul(x, w), torch.matmul(dy, w.transpose(1, 2)),
               torch.matmul(x.transpose(1, 2), dy)) for x, w, dy in ops]

  once()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    once()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def build_t5(torch, transformers, arch: dict, args):
  """(model, step): HF T5 and one Adafactor step on a fixed batch -> loss."""
  config = transformers.T5Config(
      d_model=arch["d_model"], d_ff=arch["d_ff"], d_kv=arch["d_kv"],
      num_heads=arch["num_heads"], num_layers=arch["num_layers"],
      num_decoder_layers=arch["num_decoder_layers"],
      vocab_size=arch["vocab_size"], dropout_rate=arch["dropout_rate"],
      feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      relative_attention_num_buckets=32, relative_attention_max_distance=128,
      decoder_start_token_id=0, pad_token_id=0)
  model = transformers.T5ForConditionalGeneration(config).to(torch.float32)
  gen = torch.Generator().manual_seed(args.seed)
  b, li, lt, v = (args.batch_size, args.inputs_length, args.targets_length,
                  arch["vocab_size"])
  input_ids = torch.randint(1, v, (b, li), generator=gen)
  labels = torch.randint(1, v, (b, lt), generator=gen)
  return model, adafactor_step(model, input_ids=input_ids,
                               attention_mask=torch.ones_like(input_ids),
                               labels=labels)


def adafactor_step(model, **inputs):
  """step() -> loss: forward on `inputs` (with labels), backward and one
  `Adafactor(scale_parameter=True, relative_step=False, lr=1e-3)` update,
  T5's standard fine-tuning optimizer."""
  from transformers.optimization import Adafactor  # pylint: disable=g-import-not-at-top
  model.train()
  optimizer = Adafactor(model.parameters(), scale_parameter=True,
                        relative_step=False, warmup_init=False, lr=1e-3)

  def step() -> float:
    out = model(**inputs)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(out.loss.detach())

  return step


def serve(build, doc: str, argv=None) -> int:
  """The helper protocol (module doc) around `build(torch, transformers,
  arch, args) -> (model, step)`; _torch_llama_train.py serves its own."""
  p = argparse.ArgumentParser(description=doc.split("\n")[0])
  p.add_argument("--arch", required=True,
                 help="JSON sizes for `build` (T5: d_model, d_ff, d_kv, "
                 "num_heads, num_layers, num_decoder_layers, vocab_size, "
                 "dropout_rate)")
  p.add_argument("--batch_size", type=int, required=True)
  p.add_argument("--inputs_length", type=int, required=True)
  p.add_argument("--targets_length", type=int, required=True)
  p.add_argument("--warmup_steps", type=int, default=2)
  p.add_argument("--threads", type=int, default=0,
                 help="torch.set_num_threads; 0 = the fastest of 1..nproc, "
                 "timed over 2 steps each after the warm-up")
  p.add_argument("--matmul_size", type=int, default=2048)
  p.add_argument("--matmul_reps", type=int, default=10)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)

  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(args.threads or os.cpu_count())
  torch.manual_seed(args.seed)
  model, step = build(torch, transformers, json.loads(args.arch), args)
  t0 = time.perf_counter()
  for _ in range(args.warmup_steps):
    step()
  warmup_s = time.perf_counter() - t0
  thread_s = {}
  if not args.threads:
    for n in range(1, (os.cpu_count() or 1) + 1):
      torch.set_num_threads(n)
      step()
      t1 = time.perf_counter()
      step()
      step()
      thread_s[n] = (time.perf_counter() - t1) / 2
    torch.set_num_threads(min(thread_s, key=thread_s.get))
  chosen = torch.get_num_threads()
  peak = 0.0
  for n in range(1, max(chosen, os.cpu_count() or 1) + 1):
    torch.set_num_threads(n)
    peak = max(peak, _matmul_gflops(torch, args.matmul_size, args.matmul_reps))
  torch.set_num_threads(chosen)
  _emit({"ready": True,
         "params": sum(p.numel() for p in model.parameters()),
         "matmul_gflops": peak, "threads": torch.get_num_threads(),
         "s_per_step_by_threads": thread_s,
         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
         "warmup_s": warmup_s,
         "versions": {"torch": torch.__version__,
                      "transformers": transformers.__version__}})

  for line in sys.stdin:
    cmd = line.split()
    if not cmd:
      continue
    if cmd[0] == "quit":
      return 0
    if cmd[0] == "matmul":  # best over thread counts, then restore.
      best = 0.0
      for n in range(1, max(chosen, os.cpu_count() or 1) + 1):
        torch.set_num_threads(n)
        best = max(best, _matmul_gflops(torch, args.matmul_size, 5))
      torch.set_num_threads(chosen)
      _emit({"matmul_gflops": best})
      continue
    if cmd[0] == "floor":  # at the chosen thread count
      _emit({"floor_s": _matmul_floor_s(torch, json.loads(cmd[1]), 3)})
      continue
    if cmd[0] != "run" or len(cmd) != 2:
      print(f"{sys.argv[0]}: bad command {line!r}", file=sys.stderr)
      return 2
    n = int(cmd[1])
    t0 = time.perf_counter()
    loss = 0.0
    for _ in range(n):
      loss = step()  # float() syncs: the step is complete when timed.
    _emit({"seconds": time.perf_counter() - t0, "steps": n, "loss": loss})
  return 0


def main(argv=None) -> int:
  return serve(build_t5, __doc__, argv)


if __name__ == "__main__":
  sys.exit(main())
