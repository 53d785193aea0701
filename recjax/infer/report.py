"""The quickstart's comparison: LM evaluations beside the classical baselines.

Reads what the other stages wrote and lays it out in one table and one figure:

* LM evaluations: `<eval_dir>/metrics.json` shaped
  `{"tasks": {"<ds>_retrieval": {"recall@5": ..}, "<ds>_ranking": {"hit@1": ..},
  "<ds>_rating": {"rmse": ..}}}`, or with the tasks under `metrics` as
  `recjax eval` writes them (`load_lm_metrics`);
* baselines: `<dir>/metrics.json` of `recjax baseline`, test split
  (`load_baseline_metrics`): the retrieval columns from their ranking of
  the full catalogue, the ranking columns from the LMs' own candidate lists
  when the baseline scored them;
* training curves: `<model_dir>/metrics.jsonl` of `recjax.train.metrics_writer`
  (`load_training_curve`).

A row's metrics are grouped by task: `{"retrieval": {"recall@5": ..},
"ranking": {"hit@1": ..}, "rating": {"rmse": ..}}`.

    python -m recjax.infer.report --lm rec=EVAL_DIR --lm rec_aux=EVAL_DIR \\
      --baseline pop=DIR --baseline sasrec=DIR \\
      --curves rec=MODEL_DIR --curves rec_aux=MODEL_DIR --output DIR

writes `results.md`, `results.json` and `results.png` into DIR (each
atomically) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import sys
from typing import Any, Mapping, Sequence

from recjax.data.prepared import atomic_write

TASKS = ("retrieval", "ranking", "rating")
# (task, metric key, column header); the table's and the figure's columns.
COLUMNS = (
    ("retrieval", "recall@5", "retrieval Recall@5"),
    ("retrieval", "recall@10", "retrieval Recall@10"),
    ("retrieval", "ndcg@5", "retrieval NDCG@5"),
    ("retrieval", "ndcg@10", "retrieval NDCG@10"),
    ("ranking", "hit@1", "ranking HitRate@1"),
    ("rating", "rmse", "rating RMSE"),
)
MISSING = "\u2013"  # en dash
# With one relevant item Recall@K == HitRate@K, so either name fills a column.
_SAME = {"recall": "hit", "hit": "recall"}
_METRIC_RE = re.compile(
    r"^(recall|hit|hitrate|hit_rate|hr|ndcg)\s*(?:@|_at_|_|)\s*(\d+)$")

Metrics = dict[str, dict[str, float]]


# --------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------
def metric_value(metrics: Mapping[str, Mapping[str, float]], task: str,
                 key: str) -> float | None:
  """`metrics[task][key]`, accepting hit@K for recall@K and back; None if absent."""
  group = metrics.get(task) or {}
  value = group.get(key)
  if value is None and "@" in key:
    name, k = key.split("@", 1)
    if name in _SAME:
      value = group.get(f"{_SAME[name]}@{k}")
  if value is None:
    return None
  value = float(value)
  return None if math.isnan(value) else value


def comparison_table(rows: Sequence[tuple[str, Mapping[str, Any]]],
                     digits: int = 4) -> str:
  """Markdown table, one row per (name, metrics); missing values are '–'."""
  header = ["model"] + [c[2] for c in COLUMNS]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * len(COLUMNS)) + "|"]
  for name, metrics in rows:
    cells = [str(name)]
    for task, key, _ in COLUMNS:
      v = metric_value(metrics, task, key)
      cells.append(MISSING if v is None else f"{v:.{digits}f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------
def _metrics_file(path: str | os.PathLike, name: str) -> pathlib.Path:
  p = pathlib.Path(path)
  if p.is_dir():
    p = p / name
  if not p.is_file():
    raise FileNotFoundError(f"{p}: no such file")
  return p


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e


def canonical_metric(name: str) -> str | None:
  """'Recall@5' -> 'recall@5', 'HR@1'/'hit_rate@1' -> 'hit@1', 'RMSE' -> 'rmse'."""
  n = name.strip().lower().rsplit("/", 1)[-1]
  if n in ("rmse", "mae", "mrr", "count", "valid_ratio", "invalid"):
    return n
  m = _METRIC_RE.match(n)
  if not m:
    return None
  kind = {"hitrate": "hit", "hit_rate": "hit", "hr": "hit"}.get(m[1], m[1])
  return f"{kind}@{int(m[2])}"


def _numbers(d: Mapping[str, Any]) -> dict[str, float]:
  """Canonical metric name -> float, from a (possibly nested) mapping."""
  out: dict[str, float] = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      for kk, vv in _numbers(v).items():
        out.setdefault(kk, vv)
      continue
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
      continue
    name = canonical_metric(str(k))
    if name is None:
      continue
    try:
      out[name] = float(v)
    except ValueError:
      continue
  return out


def _task_of(key: str) -> tuple[str, str] | None:
  """'<ds>_retrieval' (also '<ds>_retrieval_test', '<ds>/ranking') -> (ds, task)."""
  tokens = re.split(r"[^a-z0-9]+", key.lower())
  for i in range(len(tokens) - 1, -1, -1):
    if tokens[i] in TASKS:
      prefix = re.split(r"[^A-Za-z0-9]+", key)[:i]
      return "_".join(prefix), tokens[i]
  return None


def load_lm_metrics(eval_dir: str | os.PathLike,
                    dataset: str | None = None) -> Metrics:
  """Task-grouped metrics of an LM evaluation (`metrics.json` in `eval_dir`).

  The tasks are read from the file's `tasks` object, else its `metrics`
  object (`recjax eval`'s layout), else its top level. Task keys may carry a
  dataset prefix and a suffix (`<ds>_retrieval`, `<ds>_retrieval_test`);
  other keys are ignored. Metric names are normalised (`canonical_metric`).
  When several datasets are present, `dataset` picks one.
  """
  path = _metrics_file(eval_dir, "metrics.json")
  obj = _read_json(path)
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a JSON object")
  # `{"tasks": {..}}` as specified, `{"metrics": {..}}` as
  # `recjax.infer.evaluation.write_outputs` writes it, or the tasks at the top.
  tasks = next((obj[k] for k in ("tasks", "metrics")
                if isinstance(obj.get(k), Mapping)), obj)
  found: dict[str, dict[str, dict[str, float]]] = {}
  for key, value in tasks.items():
    dt = _task_of(str(key))
    if dt is None or not isinstance(value, Mapping):
      continue
    ds, task = dt
    if dataset is not None and ds != dataset:
      continue
    found.setdefault(task, {})[ds] = _numbers(value)
  out: Metrics = {}
  for task, by_ds in found.items():
    if len(by_ds) > 1:
      raise ValueError(f"{path}: {task} of several datasets {sorted(by_ds)}; "
                       "pass dataset= (--dataset) to pick one")
    out[task] = next(iter(by_ds.values()))
  if not out:
    raise ValueError(f"{path}: no <dataset>_retrieval/_ranking/_rating task"
                     + (f" for dataset {dataset!r}" if dataset else ""))
  return out


def load_baseline_metrics(directory: str | os.PathLike,
                          split: str = "test") -> Metrics:
  """A baseline's metrics of `split` (`metrics.json[split]`) as retrieval
  metrics, and its ranking of the LMs' candidates (`metrics.json["ranking"]`)
  when it has one."""
  path = _metrics_file(directory, "metrics.json")
  obj = _read_json(path)
  if not isinstance(obj, Mapping) or not isinstance(obj.get(split), Mapping):
    raise ValueError(f"{path}: field {split!r}: missing (not a baseline's "
                     "metrics.json?)")
  out = {"retrieval": _numbers(obj[split])}
  ranking = obj.get("ranking", {})
  if isinstance(ranking, Mapping) and isinstance(ranking.get(split), Mapping):
    out["ranking"] = _numbers(ranking[split])  # the LMs' candidate lists
  return out


def load_training_curve(model_dir: str | os.PathLike,
                        metric: str = "loss") -> dict[str, list[list[float]]]:
  """`{split: [[step, value], ...]}` from `<model_dir>/metrics.jsonl`.

  `train` always (possibly empty), other splits (e.g. `validation`) when they
  were written. A resumed run re-logs steps after its checkpoint: the last
  record of a step wins. Steps are sorted. Non-finite values are kept as NaN.
  """
  path = _metrics_file(model_dir, "metrics.jsonl")
  by_split: dict[str, dict[int, float]] = {"train": {}}
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
      if not isinstance(rec, Mapping) or metric not in rec:
        continue
      try:
        step, value = int(rec["step"]), float(rec[metric])
      except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}:{lineno}: field 'step'/{metric!r}: "
                         f"bad record ({e})") from e
      by_split.setdefault(str(rec.get("split", "train")), {})[step] = value
  return {s: [[float(k), v[k]] for k in sorted(v)] for s, v in by_split.items()}


# --------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------

def plot(curves: Mapping[str, Mapping[str, Sequence[Sequence[float]]]],
         rows: Sequence[tuple[str, Mapping[str, Any]]],
         path: str | os.PathLike) -> pathlib.Path:
  """PNG: training loss per LM run (left), grouped metric bars per model (right).

  `curves` maps a run name to `load_training_curve`'s output (train solid,
  validation dashed, one colour per run). The bars show the table's
  higher-is-better columns; RMSE (lower is better, another scale) goes into
  the model's legend label. Missing values draw no bar.
  """
  # The Agg canvas on a bare Figure: no pyplot, no global backend switch, so
  # this runs headless and does not disturb a caller's matplotlib state.
  import matplotlib  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(13, 4.8), dpi=100)
  FigureCanvasAgg(fig)
  ax_loss, ax_bar = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
  colors = matplotlib.colormaps["tab10"]

  for i, (name, curve) in enumerate(curves.items()):
    for split, points in curve.items():
      if not points:
        continue
      xs = [p[0] for p in points]
      ys = [p[1] for p in points]
      ax_loss.plot(xs, ys, color=colors(i % 10),
                   linestyle="-" if split == "train" else "--",
                   marker=None if split == "train" else "o", markersize=3,
                   label=f"{name} {split}")
  ax_loss.set_title("LM training loss")
  ax_loss.set_xlabel("step")
  ax_loss.set_ylabel("loss (per token)")
  if curves and any(any(c.values()) for c in curves.values()):
    ax_loss.legend(fontsize=8)
  else:
    ax_loss.text(0.5, 0.5, "no training curves", ha="center", va="center",
                 transform=ax_loss.transAxes)

  cols = [c for c in COLUMNS if c[1] != "rmse"]
  width = 0.8 / max(1, len(rows))
  for r, (name, metrics) in enumerate(rows):
    xs, hs = [], []
    for c, (task, key, _) in enumerate(cols):
      v = metric_value(metrics, task, key)
      if v is not None:
        xs.append(c - 0.4 + width * (r + 0.5))
        hs.append(v)
    rmse = metric_value(metrics, "rating", "rmse")
    label = name if rmse is None else f"{name} (RMSE {rmse:.3f})"
    ax_bar.bar(xs, hs, width=width, color=colors(r % 10), label=label)
  ax_bar.set_xticks(range(len(cols)))
  ax_bar.set_xticklabels([c[2].replace(" ", "\n", 1) for c in cols], fontsize=8)
  ax_bar.set_title("test metrics")
  ax_bar.set_ylim(bottom=0)
  if rows:
    ax_bar.legend(fontsize=8)
  fig.tight_layout()

  out = pathlib.Path(path)
  atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
  return out


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def _pairs(values: Sequence[str] | None, flag: str) -> list[tuple[str, str]]:
  out = []
  for v in values or ():
    name, sep, d = v.partition("=")
    if not sep or not name or not d:
      raise SystemExit(f"report: {flag} {v!r}: expected NAME=DIR")
    out.append((name, d))
  return out


def build_report(lm: Sequence[tuple[str, str]],
                 baselines: Sequence[tuple[str, str]],
                 curves: Sequence[tuple[str, str]], output_dir: str | os.PathLike,
                 dataset: str | None = None) -> dict[str, Any]:
  """Loads everything, writes results.{md,json,png}; returns results.json's content."""
  rows, sources = [], []
  for name, d in lm:
    rows.append((name, load_lm_metrics(d, dataset)))
    sources.append({"name": name, "kind": "lm", "dir": str(d)})
  for name, d in baselines:
    rows.append((name, load_baseline_metrics(d)))
    sources.append({"name": name, "kind": "baseline", "dir": str(d)})
  curve_data = {name: load_training_curve(d) for name, d in curves}
  table = comparison_table(rows)
  out = pathlib.Path(output_dir)
  results = {
      "columns": [{"task": t, "metric": k, "header": h} for t, k, h in COLUMNS],
      "rows": [dict(src, metrics=m) for src, (_, m) in zip(sources, rows)],
      "curves": curve_data,
      "curve_dirs": {name: str(d) for name, d in curves},
  }
  md = ["# Results", "", table]
  if curve_data:
    md.append("Final training loss (last logged step):\n")
    for name, c in curve_data.items():
      parts = [f"{s} {pts[-1][1]:.4f} @ step {int(pts[-1][0])}"
               for s, pts in c.items() if pts]
      md.append(f"* {name}: " + ("; ".join(parts) if parts else "no records"))
    md.append("")
  md.append("![results](results.png)\n")
  atomic_write(out / "results.md",
                lambda p: p.write_text("\n".join(md), encoding="utf-8"))
  atomic_write(out / "results.json", lambda p: p.write_text(
      json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8"))
  plot(curve_data, rows, out / "results.png")
  return results


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m recjax.infer.report",
      description="Compare LM evaluations with classical baselines.")
  parser.add_argument("--lm", action="append", metavar="NAME=EVAL_DIR",
                      help="LM evaluation output (metrics.json); repeatable.")
  parser.add_argument("--baseline", action="append", metavar="NAME=DIR",
                      help="`recjax baseline` output; repeatable.")
  parser.add_argument("--curves", action="append", metavar="NAME=MODEL_DIR",
                      help="Training run with metrics.jsonl; repeatable.")
  parser.add_argument("--dataset", default=None, help="Dataset prefix of the "
                      "LM task names when an evaluation holds several.")
  parser.add_argument("--output", required=True, help="Directory for "
                      "results.md, results.json and results.png.")
  args = parser.parse_args(argv)
  lm = _pairs(args.lm, "--lm")
  baselines = _pairs(args.baseline, "--baseline")
  curves = _pairs(args.curves, "--curves")
  if not lm and not baselines:
    parser.error("nothing to compare: pass --lm and/or --baseline")
  try:
    results = build_report(lm, baselines, curves, args.output, args.dataset)
  except (FileNotFoundError, ValueError) as e:
    print(f"report: {e}", file=sys.stderr)
    return 1
  rows = [(r["name"], r["metrics"]) for r in results["rows"]]
  print(comparison_table(rows), end="")
  print(f"[recjax] wrote {pathlib.Path(args.output) / 'results.md'}, "
        "results.json, results.png", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
