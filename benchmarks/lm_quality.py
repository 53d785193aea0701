"""LM recommendation quality against budget, beside Pop, BPR-MF and SASRec.

Question: at which training budget does each LM recipe reach which level on
the same split and candidates as the classical recommenders, and where does
its validation stop improving? Targets (README "LM quality"): every LM row
above Pop; the best LM row at or above BPR-MF; the moonshot, an LM row at
SASRec's NDCG@10 on synthetic retrieval.

Everything goes through the `recjax` CLI, as a user runs it:

1. `recjax prepare` of the dataset once per item format the recipes need
   (`synthetic`: the quickstart's world and prompt settings; `ml100k`:
   `../shared/data/ml-100k`, read in place), with the same split, history
   length and 20 ranking candidates.
2. `recjax baseline` Pop, BPR-MF and SASRec on the title_id directory (the
   split and the ranking prompts' candidate lists are the same in every
   directory of one dataset: they depend on the data and seed, not on the
   format).
3. For each recipe, one `recjax train` run to the largest budget, keeping
   the checkpoint of every rung of the ladder (`--steps`), with the
   validation loss every rung / 4 steps.
4. `recjax eval` of every rung's checkpoint on the test split (retrieval:
   20 constrained beams over the catalogue trie; ranking: the 20 candidates
   by likelihood), per-user metrics from the predictions, standard errors
   std/sqrt(n). Recipes are chosen with `--split validation` (the same
   metrics on the validation users, baselines included) and the validation
   loss; the test figures are reported, never tuned on.

Budgets are stated in steps and in the measured training seconds to reach
them (the sum of the trainer's logged step times: compile included, start-up
and evaluation excluded), on the host's CPU, which the report names.

Usage:
  .venv/bin/python benchmarks/lm_quality.py                  # synthetic, rec + rec_aux
  .venv/bin/python benchmarks/lm_quality.py --quick          # smoke run (~5 min)
  .venv/bin/python benchmarks/lm_quality.py --dataset ml100k --steps 300,1000,3000
  .venv/bin/python benchmarks/lm_quality.py --recipes rec_aux,rec_aux_token \\
      --gin "--gin.LEARNING_RATE=0.01"
  # a recipe variant chosen on validation (its own data: --data_tag)
  .venv/bin/python benchmarks/lm_quality.py --split validation --tag _lr01 \\
      --gin=--gin.LEARNING_RATE=0.01 --data_tag _rank5 \\
      --prepare_flag=--prompt=ranking_prefixes_per_user=5
  # every rung's ranking also scored under the retrieval prompt (same users
  # and candidates; the paired gain over the listing prompt)
  .venv/bin/python benchmarks/lm_quality.py --ranking_under_retrieval_prompt
Outputs go to --workdir (logs, checkpoints, evals) with lm_quality.png. The
last stdout line is one JSON object: {dataset: {recipe or baseline: {steps:
{metric: value, metric_se: se, train_seconds, validation_loss}}}, ...}.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _cli_runs import (StageError, cpu_model, mean_se,  # noqa: E402
                       paired_diff, per_user, read_rows, start_runner)
import numpy as np  # noqa: E402

# name -> (model gin, item format, mixture suffix, label)
RECIPES = {
    "rec": ("models/flan_t5_tiny.gin", "title_id", "rec",
            "tiny FLAN-T5, rec"),
    "rec_aux": ("models/flan_t5_tiny.gin", "title_id", "rec_aux",
                "tiny FLAN-T5, rec+aux"),
    "rec_aux_token": ("models/flan_t5_tiny.gin", "token", "rec_aux",
                      "tiny FLAN-T5, rec+aux, item tokens"),
    "rec_aux_title_token": ("models/flan_t5_tiny.gin", "title_token",
                            "rec_aux", "tiny FLAN-T5, rec+aux, title + token"),
    "decoder_rec_aux": ("models/decoder_tiny.gin", "title_id", "rec_aux",
                        "tiny decoder-only, rec+aux"),
}
BASELINES = ("pop", "bpr", "sasrec")
METRICS = ("recall10", "ndcg10", "hit1")
METRIC_LABELS = {"recall10": "retrieval Recall@10",
                 "ndcg10": "retrieval NDCG@10",
                 "hit1": "ranking HitRate@1 (20 candidates)"}
QUICK = dict(steps="20,40", num_examples=64, sasrec_epochs=1, bpr_epochs=5)


def binary_se(p: float, n: int) -> float:
  """The standard error of a mean of n 0/1 values with mean p (ddof=1):
  exact for Recall@10 and HitRate@1, which the baselines report as means."""
  return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")


def ranking_per_user(eval_dir: pathlib.Path, task: str) -> dict:
  """Per-user hit@1 of a ranking task's predictions, with the users'
  targets (to pair variants) and candidate lists."""
  rows = read_rows(eval_dir, task)
  return {"hit1": np.array([x["rank"] == 1 for x in rows], np.float64),
          "targets": np.array([x["target_item"] for x in rows]),
          "candidates": [sorted(x["candidates"]) for x in rows]}


def retrieval_prompt_gain(listed: pathlib.Path, listed_task: str,
                          scored: pathlib.Path, scored_task: str) -> dict:
  """HitRate@1 of the same users' same candidates scored under the
  retrieval prompt (`scored`, a `ranking_candidates_in_prompt=False`
  directory's ranking task), and its paired gain over the listing
  prompt's (`listed`), each with its standard error."""
  a = ranking_per_user(listed, listed_task)
  b = ranking_per_user(scored, scored_task)
  if a["candidates"] != b["candidates"]:
    raise ValueError(f"{listed} and {scored}: the ranking examples differ "
                     "(users, targets or candidates)")
  mean, se = mean_se(b["hit1"])
  gain = paired_diff(b, a, "hit1")
  return {"hit1_retrieval_prompt": round(mean, 4),
          "hit1_retrieval_prompt_se": round(se, 4),
          "hit1_gain": gain["diff"], "hit1_gain_se": gain["se"]}


def baseline_row(out: pathlib.Path, split: str = "test") -> dict:
  doc = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
  test, ranking = doc[split], doc.get("ranking", {}).get(split, {})
  n = int(test["count"])
  row = {"recall10": test["hit@10"], "ndcg10": test["ndcg@10"],
         "hit1": ranking.get("hit@1", float("nan")), "n": n,
         "train_seconds": doc.get("wall_seconds")}
  for m in ("recall10", "hit1"):
    row[f"{m}_se"] = binary_se(row[m], n)
  row["ndcg10_se"] = None  # the baselines write no per-user NDCG
  return {k: (round(v, 4) if isinstance(v, float) else v)
          for k, v in row.items()}


def train_seconds(model_dir: pathlib.Path) -> dict[int, float]:
  """step -> training seconds to reach it, from the logged step rates."""
  out, total, last = {}, 0.0, 0
  for line in open(model_dir / "metrics.jsonl", encoding="utf-8"):
    m = json.loads(line)
    if m.get("split") == "train" and m.get("steps_per_sec"):
      total += (m["step"] - last) / m["steps_per_sec"]
      last = m["step"]
      out[m["step"]] = total
  return out


def validation_losses(model_dir: pathlib.Path) -> dict[int, float]:
  out = {}
  for line in open(model_dir / "metrics.jsonl", encoding="utf-8"):
    m = json.loads(line)
    if m.get("split") == "validation" and "loss" in m:
      out[m["step"]] = m["loss"]
  return out


def nearest(table: dict[int, float], step: int):
  """The value logged at the last step <= `step` (None if none)."""
  steps = [s for s in table if s <= step]
  return round(table[max(steps)], 4) if steps else None


def plot(path: pathlib.Path, dataset: str, results: dict, labels: dict):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for ax, m in zip(axes, METRICS):
    for name, rows in results.items():
      if name in BASELINES:
        ax.axhline(rows["all"][m], ls="--", lw=1, color={
            "pop": "gray", "bpr": "tab:olive", "sasrec": "black"}[name],
                   label=labels[name])
        continue
      xs = [r["train_seconds"] / 60 for r in rows.values()]
      ys = [r[m] for r in rows.values()]
      es = [r[f"{m}_se"] for r in rows.values()]
      ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=labels[name])
    ax.set_xscale("log")
    ax.set_xlabel("training CPU-minutes (this host; log scale)")
    ax.set_title(f"{dataset}: {METRIC_LABELS[m]}")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dataset", default="synthetic",
                 choices=("synthetic", "ml100k"))
  p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" /
                                       "ml-100k"),
                 help="ml100k: the RecBole atomic files")
  p.add_argument("--workdir", default="/tmp/recjax_lm_quality")
  p.add_argument("--recipes", default="rec,rec_aux",
                 help=f"comma-separated, from {sorted(RECIPES)}")
  p.add_argument("--steps", default="200,600,2000",
                 help="the budget ladder: training steps (batch 16 packed "
                 "rows of runs/quickstart.gin), ascending")
  p.add_argument("--gin", action="append", default=[],
                 help="extra flags for every LM training run (a recipe "
                 "variant, e.g. --gin=--gin.LEARNING_RATE=0.01)")
  p.add_argument("--tag", default="",
                 help="suffix of the recipes' run names (variants side by "
                 "side in one workdir)")
  p.add_argument("--prepare_flag", action="append", default=[],
                 help="extra `recjax prepare` flag of the LM directories "
                 "(a data variant, e.g. --prepare_flag="
                 "--prompt=ranking_prefixes_per_user=5); needs --data_tag")
  p.add_argument("--data_tag", default="",
                 help="suffix of the prepared directories' names (their "
                 "tasks' names follow)")
  p.add_argument("--split", default="test", choices=("test", "validation"),
                 help="the split every row is evaluated on: choose recipes "
                 "on validation, report test")
  p.add_argument("--ranking_under_retrieval_prompt", action="store_true",
                 help="also score every rung's ranking candidates under the "
                 "retrieval prompt (a second directory prepared with "
                 "--prompt=ranking_candidates_in_prompt=false in the same "
                 "vocabulary; subword formats only): HitRate@1 and its "
                 "paired gain over the listing prompt")
  p.add_argument("--sasrec_epochs", type=int, default=10)
  p.add_argument("--bpr_epochs", type=int, default=0,
                 help="0 = BPR-MF's own default (early stopping)")
  p.add_argument("--num_examples", type=int, default=None,
                 help="test users per task (default: all)")
  p.add_argument("--quick", action="store_true",
                 help="smoke run: " + ", ".join(f"{k}={v}"
                                                for k, v in QUICK.items()))
  p.add_argument("--resume", action="store_true",
                 help="keep finished stages found in --workdir")
  args = p.parse_args(argv)
  if args.quick:
    for k, v in QUICK.items():
      setattr(args, k, v)
  recipes = [r for r in args.recipes.split(",") if r]
  for r in recipes:
    if r not in RECIPES:
      p.error(f"--recipes: unknown {r!r}; choose from {sorted(RECIPES)}")
  if args.prepare_flag and not args.data_tag:
    p.error("--prepare_flag: give --data_tag too (the variant's directory "
            "names must differ from the default data's)")
  ladder = sorted({int(s) for s in args.steps.split(",")})
  if not ladder or ladder[0] <= 0:
    p.error("--steps: positive step counts, e.g. 200,600,2000")
  period = math.gcd(*ladder)

  work = pathlib.Path(args.workdir).resolve()
  data_root = work / "data"
  name = args.dataset
  formats = sorted({"title_id"} | {RECIPES[r][1] for r in recipes})
  dirs = {f: data_root / ((name if f == "title_id" else f"{name}_{f}") +
                          args.data_tag) for f in formats}
  # the same tasks with ranking scored under the retrieval prompt, in the
  # vocabulary of their format's directory (item-token formats train their
  # own, so they are left out)
  scored_dirs = ({f: d.with_name(d.name + "_rankret") for f, d in dirs.items()
                  if "token" not in f}
                 if args.ranking_under_retrieval_prompt else {})
  ev_suffix = "" if args.split == "test" else f"_{args.split}"
  name_of = {r: f"{r}{args.data_tag}{args.tag}" for r in recipes}
  runs = {r: work / f"train_{name_of[r]}" for r in recipes}
  outputs = [work / "logs", *dirs.values(), *scored_dirs.values(),
             *runs.values(),
             *(work / f"baseline_{b}" for b in BASELINES)]
  outputs += [work / f"eval_{name_of[r]}_{s}{ev_suffix}" for r in recipes
              for s in ladder]
  outputs += [work / f"eval_{name_of[r]}_{s}_rankret{ev_suffix}"
              for r in recipes if RECIPES[r][1] in scored_dirs for s in ladder]
  if args.dataset == "ml100k":
    data_dir = pathlib.Path(args.data).resolve()
    if not (data_dir / "ml-100k.inter").is_file():
      print(f"ml-100k not found at {data_dir}; nothing to benchmark.")
      print(json.dumps({"skipped": f"no data at {data_dir}"}))
      return 0
    source = ["--source=recbole", f"--input={data_dir}"]
  else:
    source = ["--source=synthetic"]
  run = start_runner(work, outputs,
                     list(dirs.values()) + list(scored_dirs.values()),
                     args.resume)
  cpu = cpu_model()
  print(f"LM quality on {name}: recipes {recipes}, ladder {ladder} steps; "
        f"workdir {work}; host CPU: {cpu}", flush=True)
  lengths = "{'inputs': 512, 'targets': 16}"
  try:
    # 1. prepare: one directory per item format, the same split and seed;
    #    the token formats reuse nothing (each trains its own vocabulary).
    def prepare(label, d, fmt, *extra):
      run(label, ["prepare", *source, f"--name={d.name}", f"--output={d}",
                  "--overwrite", "--max_history=10", "--num_negatives=19",
                  "--prompt=mim_examples_per_user=10",
                  "--prompt=bpr_pairs_per_user=10", f"--item_format={fmt}",
                  *args.prepare_flag, *extra], d / "tasks" / "manifest.json")

    for fmt, d in dirs.items():
      prepare(f"prepare_{fmt}{args.data_tag}", d, fmt)
    for fmt, d in scored_dirs.items():  # the same, in fmt's vocabulary
      prepare(f"prepare_{fmt}{args.data_tag}_rankret", d, fmt,
              "--prompt=ranking_candidates_in_prompt=false",
              f"--vocab={dirs[fmt] / 'vocab' / 'spiece.model'}")
    # 2. baselines, on the title_id directory
    for b in BASELINES:
      out = work / f"baseline_{b}"
      extra = ({"sasrec": [f"--epochs={args.sasrec_epochs}"],
                "bpr": ([f"--epochs={args.bpr_epochs}"]
                        if args.bpr_epochs else [])}.get(b, []))
      run(f"baseline_{b}", ["baseline", f"--model={b}",
                            f"--data={dirs['title_id']}", f"--output={out}",
                            "--overwrite", *extra], out / "metrics.json")
    # 3. train each recipe to the top of the ladder, a checkpoint per rung
    for r in recipes:
      gin, fmt, mix, _ = RECIPES[r]
      out = runs[r]
      run(f"train_{name_of[r]}", [
          "train", f"--gin_file={gin}", "--gin_file=runs/quickstart.gin",
          f"--gin.MIXTURE_OR_TASK_NAME='{dirs[fmt].name}_{mix}'",
          f"--gin.MODEL_DIR='{out}'", f"--gin.TRAIN_STEPS={ladder[-1]}",
          f"--gin.TASK_FEATURE_LENGTHS={lengths}",
          f"--gin.SAVING_PERIOD={period}",
          f"--gin.KEEP_CHECKPOINTS={ladder[-1] // period + 1}",
          f"--gin.EVAL_PERIOD={max(1, period // 4)}", "--gin.EVAL_STEPS=8",
          f"--gin.train.log_every={math.gcd(period, 25)}",
          *args.gin], out / "checkpoints" / str(ladder[-1]) /
          "commit_success.txt")
      # 4. evaluate every rung on the test split
      def evaluate(label, mixture, step, ev):
        a = ["eval", f"--gin_file={gin}", "--gin_file=runs/eval.gin",
             "--gin.ACTIVATION_DTYPE='float32'",
             "--gin.evaluate.auto_vocab_size=True",
             f"--gin.MIXTURE_OR_TASK_NAME='{mixture}'",
             f"--gin.TASK_FEATURE_LENGTHS={lengths}",
             f"--gin.CHECKPOINT_PATH='{out / 'checkpoints' / str(step)}'",
             f"--gin.EVAL_OUTPUT_DIR='{ev}'",
             f"--gin.EVAL_SPLIT='{args.split}'"]
        if args.num_examples:
          a.append(f"--gin.NUM_EXAMPLES={args.num_examples}")
        run(label, a, ev / "metrics.json", step)

      for s in ladder:
        label = f"eval_{name_of[r]}_{s}"
        evaluate(label + ev_suffix, f"{dirs[fmt].name}_rec", s,
                 work / (label + ev_suffix))
        if fmt in scored_dirs:
          evaluate(f"{label}_rankret{ev_suffix}",
                   f"{scored_dirs[fmt].name}_ranking", s,
                   work / f"{label}_rankret{ev_suffix}")
  except StageError as e:
    print(str(e), flush=True)
    print(json.dumps({"error": str(e).splitlines()[0],
                      "seconds": round(run.elapsed(), 1)}))
    return 1

  results: dict = {}
  labels = {"pop": "Pop", "bpr": "BPR-MF",
            "sasrec": f"SASRec ({args.sasrec_epochs} epochs at most)"}
  for b in BASELINES:
    results[b] = {"all": baseline_row(work / f"baseline_{b}", args.split)}
  for r in recipes:
    gin, fmt, _, label = RECIPES[r]
    key = name_of[r]
    labels[key] = label + (f" {args.data_tag}{args.tag}"
                           if args.data_tag or args.tag else "")
    seconds, val = train_seconds(runs[r]), validation_losses(runs[r])
    results[key] = {}
    for s in ladder:
      users = per_user(work / f"eval_{key}_{s}{ev_suffix}",
                       dirs[fmt].name)
      row = {"n": int(len(users["recall10"])),
             "train_seconds": nearest(seconds, s),
             "validation_loss": nearest(val, s)}
      for m in METRICS:
        mean, se = mean_se(users[m])
        row[m], row[f"{m}_se"] = round(mean, 4), round(se, 4)
      if fmt in scored_dirs:
        row.update(retrieval_prompt_gain(
            work / f"eval_{key}_{s}{ev_suffix}", f"{dirs[fmt].name}_ranking",
            work / f"eval_{key}_{s}_rankret{ev_suffix}",
            f"{scored_dirs[fmt].name}_ranking"))
      results[key][s] = row

  print()
  print(f"{name} {args.split} split; retrieval: 20 constrained beams over the "
        "catalogue (baselines: full ranking, seen items masked); ranking: "
        "the prompts' 20 candidates; mean +- standard error; training "
        f"seconds measured on {cpu}")
  print()
  print("| model | budget | " + " | ".join(METRIC_LABELS[m] for m in METRICS)
        + " | validation loss |")
  print("|---|---|" + "---:|" * (len(METRICS) + 1))
  for key, rows in results.items():
    for s, row in rows.items():
      sec = row.get("train_seconds")
      sec = "–" if sec is None else f"{sec:.0f} s"
      budget = sec if s == "all" else f"{s} steps, {sec}"
      cells = [f"{row[m]:.4f}" + (f" +- {row[m + '_se']:.4f}"
                                  if row.get(m + "_se") is not None else "")
               for m in METRICS]
      print(f"| {labels[key]} | {budget} | " + " | ".join(cells) +
            f" | {row.get('validation_loss') or '–'} |")
      if "hit1_retrieval_prompt" in row:
        print(f"| {labels[key]}, ranking under the retrieval prompt | "
              f"{budget} | | | {row['hit1_retrieval_prompt']:.4f} +- "
              f"{row['hit1_retrieval_prompt_se']:.4f} (paired gain "
              f"{row['hit1_gain']:+.4f} +- {row['hit1_gain_se']:.4f}) | |")
  png = work / "lm_quality.png"
  plot(png, name, results, labels)
  print(f"\nplot: {png}; stage seconds: {run.seconds}; total "
        f"{run.elapsed():.0f}s")
  print(json.dumps({name: results, "host_cpu": cpu, "ladder": ladder,
                    "gin": args.gin, "seconds": round(run.elapsed(), 1)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
