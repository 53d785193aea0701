"""What the CLI-driven benchmarks share (ilm_ml100k.py, rsllm_lastfm.py).

`Runner` runs `python -m recjax.main ...` sub-commands, one log file each
under `<workdir>/logs/<stage>.log`, skipping finished stages with --resume;
`read_rows` reads a `recjax eval` predictions file; `mean_se` and
`paired_diff` are the per-user statistics (mean and standard error
std/sqrt(n); the mean and standard error of a paired per-user difference).
Pure Python / numpy: importing this module imports no JAX.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Progress lines worth repeating when a stage ends: the trainer's
# "[recjax] step N/M loss ..." and the baselines' "[bpr] epoch N ...".
_PROGRESS = re.compile(r"^\[recjax\] step|^\[\w+\] epoch")


def cpu_model() -> str:
  """The host's CPU as /proc/cpuinfo names it (every timing names it)."""
  try:
    for line in open("/proc/cpuinfo", encoding="utf-8"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


class StageError(RuntimeError):
  pass


class Runner:
  """Runs `recjax` sub-commands, one log file each, and reports progress."""

  def __init__(self, workdir: pathlib.Path, env: dict, resume: bool):
    self.workdir = workdir
    self.logs = workdir / "logs"
    self.logs.mkdir(parents=True, exist_ok=True)
    self.env = env
    self.resume = resume
    self.start = time.perf_counter()
    self.seconds: dict[str, float] = {}

  def __call__(self, stage: str, args: list[str], done: pathlib.Path,
               step: int | None = None) -> None:
    """`python -m recjax.main ARGS`, unless --resume and `done` exists (and,
    for an eval's metrics.json, was written for checkpoint step `step`)."""
    if self.resume and done.exists() and (step is None or json.loads(
        done.read_text(encoding="utf-8")).get("step") == step):
      print(f"[{stage}] kept {done} (--resume)", flush=True)
      return
    log = self.logs / f"{stage}.log"
    cmd = [sys.executable, "-m", "recjax.main", *args]
    print(f"[{stage}] recjax {args[0]} (log: {log})", flush=True)
    t = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
      f.write(shlex.join(cmd) + "\n\n")  # pastes into a shell
      f.flush()
      rc = subprocess.call(cmd, cwd=ROOT, env=self.env, stdout=f,
                           stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t
    self.seconds[stage] = round(dt, 1)
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    if rc != 0:
      tail = "\n".join(lines[-25:])
      raise StageError(f"{stage} failed (exit {rc}); see {log}:\n{tail}")
    last = ([l for l in lines if _PROGRESS.match(l)]
            or [l for l in lines if l.startswith("[recjax]")])
    note = f"; {last[-1].strip()}" if last else ""
    print(f"[{stage}] done in {dt:.0f}s (elapsed {self.elapsed():.0f}s)"
          f"{note}", flush=True)

  def elapsed(self) -> float:
    return time.perf_counter() - self.start


def start_runner(work: pathlib.Path, outputs: list[pathlib.Path],
                 prepared_dirs: list[pathlib.Path], resume: bool) -> Runner:
  """A Runner in `work` whose commands see `prepared_dirs` registered
  (RECJAX_DATA_DIR = their parent, RECJAX_PREPARED_DIRS); without `resume`
  the script's own `outputs` are removed first (never the whole dir)."""
  if not resume:
    for path in outputs:
      shutil.rmtree(path, ignore_errors=True)
  work.mkdir(parents=True, exist_ok=True)
  env = dict(os.environ, RECJAX_DATA_DIR=str(prepared_dirs[0].parent),
             RECJAX_PREPARED_DIRS=os.pathsep.join(map(str, prepared_dirs)),
             TF_CPP_MIN_LOG_LEVEL="3")
  return Runner(work, env, resume)


def read_rows(eval_dir: pathlib.Path, task: str) -> list[dict]:
  """The rows of `<eval_dir>/predictions/<task>.jsonl`, in file order."""
  path = eval_dir / "predictions" / f"{task}.jsonl"
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def per_user(eval_dir: pathlib.Path, dataset: str) -> dict[str, np.ndarray]:
  """Per-test-user recall@10, ndcg@10 (retrieval) and hit@1 (ranking) from
  a `recjax eval` dir's predictions.

  Also `targets`: the users' test items in file order (one retrieval and one
  ranking example per user, users in the same order in every prepared
  directory of the same data), to pair variants user by user.
  """
  from recjax.infer.metrics import rank_of  # pylint: disable=g-import-not-at-top
  ret = read_rows(eval_dir, f"{dataset}_retrieval")
  rank = read_rows(eval_dir, f"{dataset}_ranking")
  r = np.array([rank_of(x["target_item"], x["predictions"]) for x in ret])
  top10 = (r > 0) & (r <= 10)
  ndcg = np.where(top10, 1.0 / np.log2(np.maximum(r, 1) + 1.0), 0.0)
  return {"recall10": top10.astype(np.float64), "ndcg10": ndcg,
          "hit1": (np.array([x["rank"] for x in rank]) == 1).astype(
              np.float64),
          "targets": np.array([x["target_item"] for x in ret])}


def mean_se(x: np.ndarray) -> tuple[float, float]:
  """Mean and standard error std(ddof=1)/sqrt(n) (nan where undefined)."""
  x = np.asarray(x, np.float64)
  n = len(x)
  if n == 0:
    return float("nan"), float("nan")
  se = float(np.std(x, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
  return float(np.mean(x)), se


def paired_diff(a: dict, b: dict, metric: str, key: str = "targets") -> dict:
  """Mean and standard error of a[metric] - b[metric] over the same users.

  `a[key]` and `b[key]` identify the users row by row (ilm_ml100k: the test
  targets in file order); they must be equal.
  """
  if len(a[key]) != len(b[key]) or (
      np.asarray(a[key]) != np.asarray(b[key])).any():
    raise ValueError("variants were evaluated on different users")
  mean, se = mean_se(np.asarray(a[metric], np.float64) -
                     np.asarray(b[metric], np.float64))
  return {"diff": round(mean, 4), "se": round(se, 4),
          "z": round(mean / se, 2) if se and se > 0 else None}


def pick_rows(parser, value: str, table: dict) -> list[str]:
  """The comma-separated row names of `--rows`, each checked against
  `table` (a parser error naming the unknown one)."""
  names = [r for r in value.split(",") if r]
  for r in names:
    if r not in table:
      parser.error(f"--rows: unknown {r!r}; choose from {list(table)}")
  return names
