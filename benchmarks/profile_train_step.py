"""Where a recjax training step's time goes on the CPU: op time per XLA op.

Builds the step `train_throughput.py` times (FLAN-T5 `--config`, float32,
its default batch, glibc malloc tuned as the entry points do), traces
`--steps` steps with `jax.profiler.trace`, and sums the duration of every
XLA:CPU thunk, attributed through the compiled HLO to the JAX op that made
it (`op_name` metadata). Prints:

* the step's wall time while traced, and total op time split into matmuls
  (dot_general) and everything else, model vs optimizer;
* the `--top` non-matmul ops by JAX op and result shape, with their thunk
  counts (layer numbers folded: `layers_N`);
* the step's wall time split by what ran: a matmul thunk; only non-matmul
  thunks (with the `--top` ops that ran then, each charged its share); no
  thunk but the thread pool busy; nothing;
* untraced, `--floor_repeats` interleaved triples of the step (3 steps),
  the step's matmuls alone (`train_throughput.jax_matmul_floor`) and the
  optimizer's update alone (recjax's Adafactor on the step's 190 parameters,
  state donated), medians: the share of the step each takes, measured at
  the same moments (the machine's speed drifts by 20-30% within minutes, so
  a floor timed minutes before the steps cannot give it).

Op time exceeds wall time because XLA:CPU runs independent thunks side by
side on the cores, and a thunk that waits for a core is charged for the
wait. It also misses work: Eigen's dots (XLA:CPU sends the weight-gradient
products, X^T dY, to Eigen; YNNPACK takes the rest) and multi-threaded loops
run asynchronously on the thread pool, so their thunk's event ends before
their work does. The wall split sees that work as "pool only". Compare
categories within one run, and confirm a change with `train_step_ab.py`
(wall time) before believing it.

  .venv/bin/python benchmarks/profile_train_step.py --config small
  .venv/bin/python benchmarks/profile_train_step.py --config decoder_100m
(`decoder_tiny` / `decoder_100m`: decoder_train_throughput.py's configs.)
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
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve()
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]


def trace_events(trace_dir: str) -> list:
  """Complete ('X') events of the perfetto trace in trace_dir."""
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"),
                    recursive=True)
  if not files:
    raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
  with gzip.open(files[0]) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  return [e for e in events if e.get("ph") == "X"]


def thunk_times(events: list) -> collections.Counter:
  """Total microseconds per thunk name."""
  total = collections.Counter()
  for e in events:
    total[e["name"]] += e.get("dur", 0)
  return total


def pool_regions(events: list) -> list:
  """(start, end) of the thread pool's work regions, from its listener."""
  regions, open_at = [], {}
  marks = sorted((e for e in events
                  if e["name"] in ("ThreadpoolListener::StartRegion",
                                   "ThreadpoolListener::StopRegion")),
                 key=lambda e: e["ts"])
  for e in marks:
    tid = e.get("tid")
    if e["name"].endswith("StartRegion"):
      open_at[tid] = e["ts"]
    elif tid in open_at:
      regions.append((open_at.pop(tid), e["ts"]))
  return regions


def wall_split(ops: list, regions: list) -> tuple[dict, collections.Counter]:
  """Wall microseconds by what ran, over the span of the ops.

  ops: (start, end, key, is_matmul). Returns ({'matmul', 'other_only',
  'pool_only', 'idle'} -> us, us per key of the time when only non-matmul
  ops ran, each op charged an equal share of the moments it shared).
  """
  t0 = min(o[0] for o in ops)
  t1 = max(o[1] for o in ops)
  points = []
  for start, end, key, mm in ops:
    points += [(start, 1, "op", key, mm), (end, -1, "op", key, mm)]
  for start, end in regions:
    start, end = max(start, t0), min(end, t1)
    if end > start:
      points += [(start, 1, "pool", None, False),
                 (end, -1, "pool", None, False)]
  points.sort(key=lambda p: (p[0], p[1]))
  split = dict.fromkeys(("matmul", "other_only", "pool_only", "idle"), 0.0)
  per_op = collections.Counter()
  running = collections.Counter()
  n_matmul = n_ops = n_pool = 0
  last = t0
  for t, delta, kind, key, mm in points:
    dt = t - last
    if dt > 0:
      if n_matmul:
        split["matmul"] += dt
      elif n_ops:
        split["other_only"] += dt
        for k, c in running.items():
          if c:
            per_op[k] += dt * c / n_ops
      elif n_pool:
        split["pool_only"] += dt
      else:
        split["idle"] += dt
    last = max(last, t)
    if kind == "pool":
      n_pool += delta
    else:
      running[key] += delta
      n_ops += delta
      n_matmul += delta if mm else 0
  return split, per_op


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


def optimizer_alone(params):
  """Timer (steps -> median s) of recjax's Adafactor update alone on params.

  The trainer's optimizer (T5X-default Adafactor, constant learning rate),
  jitted with parameters and state donated, on a fixed gradient.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from recjax.train import optimizers  # pylint: disable=g-import-not-at-top
  tx = optimizers.adafactor(learning_rate=optimizers.constant(1e-3))
  grads = jax.tree_util.tree_map(lambda x: x * 1e-3, params)
  carry = [jax.tree_util.tree_map(lambda x: x.copy(), params)]
  carry.append(tx.init(carry[0]))

  @jax.jit
  def apply(p, s, g):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  apply = jax.jit(apply, donate_argnums=(0, 1))

  def seconds(steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
      carry[:] = apply(carry[0], carry[1], grads)
    jax.block_until_ready(carry)
    return (time.perf_counter() - t0) / steps

  seconds(2)  # compile + warm-up
  return seconds


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="small",
                 choices=("tiny", "small", "decoder_tiny", "decoder_100m"),
                 help="FLAN-T5 tiny/small, or decoder_train_throughput.py's "
                 "decoder-only configs (its default batch)")
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--top", type=int, default=20)
  p.add_argument("--floor_repeats", type=int, default=5)
  args = p.parse_args(argv)

  from recjax import host_malloc  # pylint: disable=g-import-not-at-top
  host_malloc.tune()
  import jax  # pylint: disable=g-import-not-at-top
  import train_throughput as tt  # pylint: disable=g-import-not-at-top
  bench, name = tt, args.config
  if name.startswith("decoder_"):
    import decoder_train_throughput as bench  # pylint: disable=g-import-not-at-top
    name = name[len("decoder_"):]
  cfg = bench.load_config(name, 0.0, "float32")
  b, li, lt = bench.DEFAULT_SHAPES[name]
  runner = bench.recjax_runner(cfg, b, li, lt, 0)
  runner.run(2)  # compile + warm-up
  names = hlo_op_names(
      runner.step.lower(runner.state, runner.batch, runner.rng)
      .compile().as_text())

  with tempfile.TemporaryDirectory() as trace_dir:
    t0 = time.perf_counter()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      runner.run(args.steps)
    wall = (time.perf_counter() - t0) / args.steps
    events = trace_events(trace_dir)
    times = thunk_times(events)

  def classify(thunk: str) -> tuple[str, str, str]:
    """(part, 'matmul' | 'other', key by op and shape) of a thunk."""
    op, shape = names[thunk]
    part = "model" if "Transformer" in op else "optimizer+loss"
    kind = "matmul" if (op.endswith("dot_general") or
                        thunk.startswith("dot")) else "other"
    short = re.sub(r"layers_\d+", "layers_N",
                   re.sub(r"^.*?Transformer\.", "", op).replace(
                       "jit(step_fn)/", ""))
    return part, kind, f"{short or '(no op_name)'} {shape} [{part}]"

  split = collections.Counter()
  others = collections.Counter()
  count = collections.Counter()
  for thunk, us in times.items():
    if thunk not in names:
      continue  # runtime events (executor, waits), not ops
    part, kind, key = classify(thunk)
    ms = us / 1e3 / args.steps
    split[(part, kind)] += ms
    count[(part, kind)] += 1
    if kind == "other":
      others[key] += ms
      count[key] += 1

  ops = []
  for e in events:
    if e["name"] in names:
      _, kind, key = classify(e["name"])
      ops.append((e["ts"], e["ts"] + e.get("dur", 0), key, kind == "matmul"))
  wall_us, other_only = wall_split(ops, pool_regions(events))
  wall_ms = {k: v / 1e3 / args.steps for k, v in wall_us.items()}

  total = sum(split.values())
  n_params = len(jax.tree_util.tree_leaves(runner.state.params))
  print(f"{args.config}: {wall:.3f} s/step wall while traced; "
        f"{total:.0f} ms of op time per step; {n_params} parameter arrays")
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
  print(f"\nwall time per step by what ran (ms; {sum(wall_ms.values()):.0f} "
        "from the first op to the last):")
  for k, label in (("matmul", "a matmul thunk"),
                   ("other_only", "only non-matmul thunks"),
                   ("pool_only", "no thunk, thread pool busy (async work: "
                                 "Eigen dots, parallel loops)"),
                   ("idle", "nothing")):
    print(f"{wall_ms[k]:8.0f}  {label}")
  print(f"\ntop {args.top} ops while only non-matmul thunks ran (ms of wall "
        "time per step, shared moments split evenly):")
  for op, us in other_only.most_common(args.top):
    print(f"{us / 1e3 / args.steps:8.1f}  {op[-110:]}")

  floor = tt.jax_matmul_floor(bench.forward_matmuls(cfg, b, li, lt))
  update = optimizer_alone(runner.state.params)
  steps_s, floors_s, updates_s = [], [], []
  for _ in range(args.floor_repeats):
    steps_s.append(runner.run(3)[0] / 3)
    floors_s.append(floor(1))
    updates_s.append(update(3))
  step_s, floor_s, update_s = (statistics.median(x) for x in
                               (steps_s, floors_s, updates_s))
  print(f"\nuntraced, {args.floor_repeats} interleaved repeats (medians): "
        f"step {step_s:.3f} s; its matmuls alone {floor_s:.3f} s = "
        f"{floor_s / step_s:.1%} of the step (a step of nothing but them "
        f"would be {step_s / floor_s:.2f}x as fast); the optimizer update "
        f"alone {update_s:.3f} s = {update_s / step_s:.1%}")
  result = {"config": args.config, "wall_s_per_step": wall,
            "untraced_s_per_step": step_s, "matmuls_alone_s": floor_s,
            "optimizer_alone_s": update_s,
            "parameters": n_params,
            "op_ms_per_step": total,
            "split_ms": {f"{p}/{k}": v for (p, k), v in split.items()},
            "wall_split_ms": wall_ms}
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
