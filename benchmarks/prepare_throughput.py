"""How fast does a log become task files? Synthetic log -> prepared -> TFRecords.

Generates a synthetic log (default 1,000,000 interactions), runs
`recjax.data.prepare.build_prepared` and `recjax.prompts.export.write_task_files`
for every task and split (vocabulary included) into a temporary directory, and
prints a table of phases, then one JSON line with `interactions`, `seconds`,
`interactions_per_s`, `examples_per_s`, `peak_rss_gib`.

Goal: <= 120 s and <= 4 GiB on 2 cores for 1M interactions.

  .venv/bin/python benchmarks/prepare_throughput.py [--interactions 1000000]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_gib() -> tuple[float, float]:
  """(self, children) peak resident set sizes in GiB (Linux: kB units)."""
  own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  return own / 2**20, kids / 2**20


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--interactions", type=int, default=1_000_000)
  p.add_argument("--mean_length", type=float, default=20.0,
                 help="mean interactions per user (sets the user count)")
  p.add_argument("--items", type=int, default=20_000)
  p.add_argument("--kcore", type=int, default=5)
  p.add_argument("--workers", type=int, default=None)
  p.add_argument("--num_shards", type=int, default=None)
  p.add_argument("--vocab_size", type=int, default=4000)
  p.add_argument("--num_negatives", type=int, default=99)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--keep", type=str, default=None,
                 help="write into this directory instead of a temporary one")
  args = p.parse_args(argv)

  from recjax.data.prepare import build_prepared  # pylint: disable=g-import-not-at-top
  from recjax.prompts import PromptConfig  # pylint: disable=g-import-not-at-top
  from recjax.prompts.export import write_task_files  # pylint: disable=g-import-not-at-top

  rows = []
  t0 = time.perf_counter()
  num_users = max(1, round(args.interactions / args.mean_length))
  data = build_prepared(
      "synthetic", None, kcore=args.kcore,
      options={"num_users": num_users, "num_items": args.items,
               "mean_sequence_length": args.mean_length, "seed": args.seed})
  t1 = time.perf_counter()
  rows.append(("generate + prepare", t1 - t0, data.num_interactions))

  with tempfile.TemporaryDirectory(prefix="recjax-bench-") as tmp:
    out = pathlib.Path(args.keep or tmp)
    out.mkdir(parents=True, exist_ok=True)
    manifest = write_task_files(
        data, out, config=PromptConfig(num_negatives=args.num_negatives),
        seed=args.seed, num_shards=args.num_shards,
        vocab_size=args.vocab_size, num_workers=args.workers)
    t2 = time.perf_counter()
    disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
  examples = sum(n for splits in manifest["counts"].values()
                 for n in splits.values())
  rows.append(("prompts + TFRecords + vocab", t2 - t1, examples))
  for task, splits in manifest["counts"].items():
    rows.append((f"  {task}", None, sum(splits.values())))
  total = t2 - t0
  own, kids = _rss_gib()
  cpu = sum(getattr(resource.getrusage(who), f) for who in
            (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
            for f in ("ru_utime", "ru_stime"))

  print(f"{'phase':32s} {'seconds':>9s} {'examples':>12s}")
  for name, secs, n in rows:
    s = f"{secs:9.1f}" if secs is not None else " " * 9
    print(f"{name:32s} {s} {n:12,d}")
  print(f"{'total':32s} {total:9.1f}")
  print(f"{'cpu (user+sys, incl. workers)':32s} {cpu:9.1f}   "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
  print(f"interactions after {args.kcore}-core: {data.num_interactions:,} "
        f"({data.num_users:,} users, {data.num_items:,} items); "
        f"task files {disk / 2**20:,.0f} MiB; vocab {manifest['vocab_size']}; "
        f"peak RSS self {own:.2f} GiB, largest child {kids:.2f} GiB")
  result = {
      "interactions": int(data.num_interactions),
      "seconds": round(total, 2),
      "interactions_per_s": round(data.num_interactions / total, 1),
      "examples_per_s": round(examples / (t2 - t1), 1),
      "peak_rss_gib": round(own + kids, 3),
  }
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
