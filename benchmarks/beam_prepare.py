"""Beam pipeline vs the single-process path: wall time and peak memory by log size.

For each size (default 1M and 5M synthetic interactions) runs, each in its own
subprocess, the whole `recjax prepare` work (synthetic log -> prepared dir ->
every task's TFRecord shards + vocabulary) twice: the single-process path
(`recjax.prompts.export.write_task_files`, its fork pool of 2) and the Beam
pipeline (`recjax.data.beam_prepare`, DirectRunner, 2 workers). Peak memory is
the peak of the summed RSS of the whole process tree (launcher, pool or Beam
workers), sampled from /proc every 0.2 s. Prints a table, then as its last
line one JSON object for the largest size: `interactions`, `beam_seconds`,
`single_seconds`, `beam_peak_rss_gib`, `single_peak_rss_gib` (and `sizes`,
every size's figures).

Goal: Beam peak memory <= 4 GiB at 5M and not growing with the log.

  .venv/bin/python benchmarks/beam_prepare.py [--sizes 1000000,5000000]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss(root: int) -> int:
  """Summed resident bytes of `root` and all its descendants (/proc)."""
  children: dict[int, list[int]] = {}
  rss: dict[int, int] = {}
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/stat", "rb") as f:
        stat = f.read()
      with open(f"/proc/{entry}/statm", "rb") as f:
        rss[int(entry)] = int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
      continue
    ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
    children.setdefault(ppid, []).append(int(entry))
  total, todo = 0, [root]
  while todo:
    pid = todo.pop()
    total += rss.get(pid, 0)
    todo.extend(children.get(pid, ()))
  return total


def _measure(cmd: list[str]) -> tuple[float, list[tuple[float, int]], str]:
  """(seconds, [(unix time, tree RSS bytes)] samples, stdout) of a subprocess."""
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  samples = []
  while proc.poll() is None:
    samples.append((time.time(), _tree_rss(proc.pid)))
    time.sleep(0.2)
  out = proc.stdout.read()
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
  return time.perf_counter() - start, samples, out


def _child(args) -> None:
  """One path on one size, in this process (and its workers)."""
  import logging  # pylint: disable=g-import-not-at-top
  logging.getLogger("apache_beam").setLevel(logging.WARNING)
  from recjax.data import beam_prepare  # pylint: disable=g-import-not-at-top
  from recjax.data.prepare import build_prepared  # pylint: disable=g-import-not-at-top
  from recjax.prompts import PromptConfig, export  # pylint: disable=g-import-not-at-top
  num_users = max(1, round(args.interactions / args.mean_length))
  data = build_prepared(
      "synthetic", None, kcore=args.kcore,
      options={"num_users": num_users, "num_items": args.items,
               "mean_sequence_length": args.mean_length, "seed": args.seed})
  with tempfile.TemporaryDirectory(prefix="recjax-beam-bench-",
                                   dir=args.tmp) as tmp:
    out = pathlib.Path(tmp)
    data.write_into(out)
    # The launcher's global steps (generate/load, k-core, id maps) are numpy
    # over whole columns; their peak is this process's high-water mark so far.
    build_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    write_start = time.time()
    kwargs = dict(config=PromptConfig(), seed=args.seed,
                  num_shards=args.num_shards)
    if args.child == "beam":
      manifest = beam_prepare.write_task_files(
          data, out, num_workers=args.workers, **kwargs)
    else:
      manifest = export.write_task_files(data, out, num_workers=args.workers,
                                         **kwargs)
    disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
  examples = sum(n for s in manifest["counts"].values() for n in s.values())
  print(json.dumps({"interactions": data.num_interactions,
                    "examples": examples, "disk_gib": disk / 2**30,
                    "build_peak_rss_gib": build_peak / 2**30,
                    "write_start": write_start}))


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default="1000000,5000000",
                 help="comma-separated log sizes (interactions before k-core)")
  p.add_argument("--paths", default="single,beam")
  p.add_argument("--mean_length", type=float, default=20.0)
  p.add_argument("--items", type=int, default=20_000)
  p.add_argument("--kcore", type=int, default=5)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--num_shards", type=int, default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--tmp", default=None, help="where the outputs are written")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--interactions", type=int, default=None,
                 help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    _child(args)
    return {}

  rows = []
  for size in [int(s) for s in args.sizes.split(",")]:
    row = {"requested": size}
    for path in args.paths.split(","):
      cmd = [sys.executable, __file__, "--child", path, "--interactions",
             str(size), "--mean_length", str(args.mean_length), "--items",
             str(args.items), "--kcore", str(args.kcore), "--workers",
             str(args.workers), "--seed", str(args.seed)]
      cmd += ["--num_shards", str(args.num_shards)] if args.num_shards else []
      cmd += ["--tmp", args.tmp] if args.tmp else []
      secs, samples, out = _measure(cmd)
      info = json.loads(out.strip().splitlines()[-1])
      peak = max(r for _, r in samples) / 2**30
      write_peak = max((r for t, r in samples if t >= info["write_start"]),
                       default=0) / 2**30
      row.update(interactions=info["interactions"], examples=info["examples"],
                 disk_gib=round(info["disk_gib"], 2),
                 build_peak_rss_gib=round(info["build_peak_rss_gib"], 3))
      row[f"{path}_seconds"] = round(secs, 1)
      row[f"{path}_peak_rss_gib"] = round(peak, 3)
      row[f"{path}_write_peak_rss_gib"] = round(write_peak, 3)
      print(f"  {size:,}: {path} {secs:.1f}s, peak tree RSS {peak:.2f} GiB "
            f"(writing the task files {write_peak:.2f} GiB; the launcher's "
            f"global steps before it {info['build_peak_rss_gib']:.2f} GiB)",
            file=sys.stderr, flush=True)
    rows.append(row)

  print(f"{'interactions':>12s} {'examples':>11s} {'single s':>9s} "
        f"{'beam s':>8s} {'single GiB':>11s} {'beam GiB':>9s} "
        f"{'beam write GiB':>15s} {'global steps GiB':>17s}")
  for r in rows:
    def f(key, fmt):
      return format(r[key], fmt) if key in r else "-"
    print(f"{r['interactions']:12,d} {r['examples']:11,d} "
          f"{f('single_seconds', '9.1f'):>9s} {f('beam_seconds', '8.1f'):>8s} "
          f"{f('single_peak_rss_gib', '11.2f'):>11s} "
          f"{f('beam_peak_rss_gib', '9.2f'):>9s} "
          f"{f('beam_write_peak_rss_gib', '15.2f'):>15s} "
          f"{f('build_peak_rss_gib', '17.2f'):>17s}")
  print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
        f"peak = summed RSS of each run's process tree; 'write' = while the "
        f"task files are written; 'global steps' = the launcher's numpy "
        f"steps before that, over whole columns)")
  last = rows[-1]
  result = {"interactions": last["interactions"],
            "beam_seconds": last.get("beam_seconds"),
            "single_seconds": last.get("single_seconds"),
            "beam_peak_rss_gib": last.get("beam_peak_rss_gib"),
            "single_peak_rss_gib": last.get("single_peak_rss_gib"),
            "sizes": rows}
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
