"""A/B of recjax's training step: variants in separate processes, interleaved.

On shared cloud CPUs a step's time drifts by 20-30% within minutes, so two
variants timed one after the other cannot be compared. This starts one
process per variant (each builds and compiles the same step as
`train_throughput.py`: FLAN-T5 `--config`, float32, its default batch), then
times `--steps` steps in each process in turn, `--repeats` times, and prints
per variant the median and minimum s/step, the median over repeats of its
time divided by the first variant's in the same repeat (paired, so that the
machine's drift cancels), and per step the user CPU seconds, minor page
faults and kernel seconds of that process (user CPU shows work removed even
where it ran beside other work and the wall time cannot show it).

A variant is a string of space-separated KEY=VALUE environment settings;
ROOT=<dir> runs the recjax checkout in <dir> (e.g. a `git worktree` of an
older commit) instead of this one. Examples (the figures in
benchmarks/README.md):

  python benchmarks/train_step_ab.py 'RECJAX_MALLOC_TUNING=0' ''
  git worktree add /tmp/old <commit>
  python benchmarks/train_step_ab.py 'ROOT=/tmp/old' ''
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve()


def serve(config: str) -> None:
  """Child: build the step, then answer 'run N' lines with JSON timings."""
  root = pathlib.Path(os.environ.get("ROOT", HERE.parents[1]))
  sys.path[:0] = [str(root), str(root / "benchmarks")]
  from recjax import host_malloc  # pylint: disable=g-import-not-at-top
  host_malloc.tune()  # as recjax's entry points (RECJAX_MALLOC_TUNING=0: off)
  import train_throughput as tt  # pylint: disable=g-import-not-at-top
  cfg = tt.load_config(config, 0.0, "float32")
  b, li, lt = tt.DEFAULT_SHAPES[config]
  runner = tt.RecjaxRunner(cfg, tt.make_batch(cfg.vocab_size, b, li, lt, 0), 0)
  runner.run(2)  # compile + one warm-up step
  print(json.dumps({"ready": True}), flush=True)
  for line in sys.stdin:
    if not line.startswith("run "):
      break
    n = int(line.split()[1])
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds, _ = runner.run(n)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "s_per_step": seconds / n,
        "minflt_per_step": (after.ru_minflt - before.ru_minflt) / n,
        "sys_s_per_step": (after.ru_stime - before.ru_stime) / n,
        "user_s_per_step": (after.ru_utime - before.ru_utime) / n}),
          flush=True)


def main(argv=None) -> list:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("variants", nargs="+",
                 help="'KEY=VALUE ...' environment per variant ('' = as is)")
  p.add_argument("--config", default="small", choices=("tiny", "small"))
  p.add_argument("--repeats", type=int, default=6)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.serve:
    serve(args.config)
    return []

  procs = []
  for variant in args.variants:
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in variant.split())
    proc = subprocess.Popen(
        [sys.executable, str(HERE), "--serve", "--config", args.config, "x"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env=env)
    if not json.loads(proc.stdout.readline() or "{}").get("ready"):
      raise RuntimeError(f"variant {variant!r} failed to start")
    procs.append(proc)
    print(f"[train_step_ab] ready: {variant!r}", file=sys.stderr, flush=True)

  runs = [[] for _ in procs]
  for r in range(args.repeats):
    for proc, out in zip(procs, runs):
      proc.stdin.write(f"run {args.steps}\n")
      proc.stdin.flush()
      out.append(json.loads(proc.stdout.readline()))
    print(f"repeat {r + 1}: " + "  ".join(
        f"{o[-1]['s_per_step']:.3f}" for o in runs), flush=True)
  for proc in procs:
    proc.stdin.write("quit\n")
    proc.stdin.flush()
    proc.wait()

  rows = []
  base = [o["s_per_step"] for o in runs[0]]
  for variant, out in zip(args.variants, runs):
    s = [o["s_per_step"] for o in out]
    rows.append({"variant": variant, "median_s_per_step": statistics.median(s),
                 "min_s_per_step": min(s),
                 # Paired: repeat r of this variant ran right after repeat r
                 # of the first, so the drift of the machine mostly cancels.
                 "median_ratio_to_first": statistics.median(
                     a / b for a, b in zip(s, base)),
                 "user_s_per_step": statistics.median(
                     o["user_s_per_step"] for o in out),
                 "minflt_per_step": statistics.median(
                     o["minflt_per_step"] for o in out),
                 "sys_s_per_step": statistics.median(
                     o["sys_s_per_step"] for o in out)})
    print(f"{rows[-1]['median_s_per_step']:.3f} s/step median, "
          f"{rows[-1]['min_s_per_step']:.3f} min, "
          f"x{rows[-1]['median_ratio_to_first']:.3f} of the first (paired), "
          f"{rows[-1]['user_s_per_step']:.2f} user CPU s/step, "
          f"{rows[-1]['minflt_per_step']:.0f} page faults/step, "
          f"{rows[-1]['sys_s_per_step']:.2f} kernel s/step  [{variant!r}]")
  print(json.dumps(rows))
  return rows


if __name__ == "__main__":
  main()
