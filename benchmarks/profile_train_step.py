"""Where a recjax training step's time goes on the CPU: op time per XLA op.

Builds the step `train_throughput.py` times (FLAN-T5 `--config`, float32,
its default batch, glibc malloc tuned as the entry points do), traces
`--steps` steps with `jax.profiler.trace`, and sums the duration of every
XLA:CPU thunk, attributed through the compiled HLO to the JAX op that made
it (`op_name` metadata). Prints:

* the step's wall time while traced, and total op time split into matmuls
  (dot_general) and everything else, model vs optimizer;
* the `--top` non-matmul ops by JAX op and result shape, with their thunk
  counts (layer numbers folded: `layers_N`).

Op time exceeds wall time because XLA:CPU runs independent thunks side by
side on the cores, and a thunk that waits for a core is charged for the
wait; compare categories within one run, and confirm a change with
`train_step_ab.py` (wall time) before believing it.

  .venv/bin/python benchmarks/profile_train_step.py --config small
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve()
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]


def thunk_times(trace_dir: str) -> collections.Counter:
  """Total microseconds per thunk name in a perfetto trace."""
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"),
                    recursive=True)
  if not files:
    raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
  with gzip.open(files[0]) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  total = collections.Counter()
  for e in events:
    if e.get("ph") == "X":
      total[e["name"]] += e.get("dur", 0)
  return total


def hlo_op_names(hlo_text: str) -> dict:
  """Instruction name -> (JAX op_name, result shape), entry computation."""
  entry = hlo_text[hlo_text.index("ENTRY"):]
  names = {}
  for line in entry.split("\n"):
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) \w+\(", line)
    if m:
      op = re.search(r'op_name="([^"]*)"', line)
      names[m.group(1)] = (op.group(1) if op else "",
                           re.sub(r"\{.*\}", "", m.group(2)))
  return names


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="small", choices=("tiny", "small"))
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--top", type=int, default=20)
  args = p.parse_args(argv)

  from recjax import host_malloc  # pylint: disable=g-import-not-at-top
  host_malloc.tune()
  import jax  # pylint: disable=g-import-not-at-top
  import train_throughput as tt  # pylint: disable=g-import-not-at-top
  cfg = tt.load_config(args.config, 0.0, "float32")
  b, li, lt = tt.DEFAULT_SHAPES[args.config]
  runner = tt.RecjaxRunner(cfg, tt.make_batch(cfg.vocab_size, b, li, lt, 0), 0)
  runner.run(2)  # compile + warm-up
  names = hlo_op_names(
      runner.step.lower(runner.state, runner.batch, runner.rng)
      .compile().as_text())

  with tempfile.TemporaryDirectory() as trace_dir:
    t0 = time.perf_counter()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      runner.run(args.steps)
    wall = (time.perf_counter() - t0) / args.steps
    times = thunk_times(trace_dir)

  split = collections.Counter()
  others = collections.Counter()
  count = collections.Counter()
  for thunk, us in times.items():
    if thunk not in names:
      continue  # runtime events (executor, waits), not ops
    op, shape = names[thunk]
    part = "model" if "Transformer" in op else "optimizer+loss"
    kind = "matmul" if (op.endswith("dot_general") or
                        thunk.startswith("dot")) else "other"
    ms = us / 1e3 / args.steps
    split[(part, kind)] += ms
    count[(part, kind)] += 1
    if kind == "other":
      short = re.sub(r"layers_\d+", "layers_N",
                     re.sub(r"^.*?Transformer\.", "", op).replace(
                         "jit(step_fn)/", ""))
      key = f"{short or '(no op_name)'} {shape} [{part}]"
      others[key] += ms
      count[key] += 1

  total = sum(split.values())
  n_params = len(jax.tree_util.tree_leaves(runner.state.params))
  print(f"{args.config}: {wall:.3f} s/step wall while traced; "
        f"{total:.0f} ms of op time per step; {n_params} parameters")
  print(f"{'part':<16} {'matmul ms':>10} {'thunks':>7} {'other ms':>10} "
        f"{'thunks':>7}")
  for part in ("model", "optimizer+loss"):
    print(f"{part:<16} {split[(part, 'matmul')]:>10.0f} "
          f"{count[(part, 'matmul')]:>7} {split[(part, 'other')]:>10.0f} "
          f"{count[(part, 'other')]:>7}")
  print(f"\ntop {args.top} non-matmul ops, by op and result shape (ms of op "
        "time per step, thunks):")
  for op, ms in others.most_common(args.top):
    print(f"{ms:8.1f} {count[op]:5d}  {op[-110:]}")
  result = {"config": args.config, "wall_s_per_step": wall,
            "parameters": n_params,
            "op_ms_per_step": total,
            "split_ms": {f"{p}/{k}": v for (p, k), v in split.items()}}
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
