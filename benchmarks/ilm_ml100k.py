"""ILM on ml-100k: the frozen LM with titles vs ILM vs the unaligned ILM.

Question (ILM issue, item 6): does ILM's aligned item encoder (BLIP-2
Q-Former over collaborative embeddings, `runs/ilm_phase1.gin`) give a frozen
LM better recommendations than the item titles alone, and better than the same
encoder trained in phase 2 only (no phase-1 alignment, the paper's ablation)?
Goal: ILM's test Recall@10 (retrieval) above both others by more than two
standard errors of the paired per-user difference.

Everything goes through the `recjax` CLI (`python -m recjax.main ...`
subprocesses with RECJAX_DATA_DIR and RECJAX_PREPARED_DIRS set), as a user
runs it:

1. `recjax prepare` of ml-100k (RecBole atomic files, default
   `../shared/data/ml-100k`; read in place, never copied) twice with the same
   settings (leave-one-out by time, 5-core, `--max_history`, 19 ranking
   negatives = 20 candidates, tasks retrieval, ranking and the auxiliary mim
   and bpr): plain (`--item_format=title`), and with slots
   (`--name=<name>_slots --prompt=item_slots=append --vocab=<plain>/vocab/
   spiece.model`: the same titles, each followed by its K soft tokens, in the
   LM's vocabulary).
2. `recjax train` of a tiny FLAN-T5 from scratch on `<name>_rec_aux` (no
   pretrained LM offline): this is "the frozen LM".
3. `--cf=bpr`: `recjax baseline --model=bpr` on the slots directory; its item
   embeddings are the encoder's (frozen) collaborative features
   (CF_EMBEDDINGS_DIR). `--cf=id`: a learned item-ID table instead.
4. ILM phase 1 on `<name>_slots_item_text`, then phase 2 on
   `<name>_slots_rec` from the frozen LM (only the encoder's query path and
   adapter train) with ITEM_ENCODER_CHECKPOINT = phase 1.
5. The unaligned ablation: phase 2 with ITEM_ENCODER_CHECKPOINT=None, same
   steps.
6. `recjax eval` on the test split (`runs/eval.gin`, + `runs/ilm_model.gin`
   for the ILM variants): retrieval Recall@10 / NDCG@10 (catalogue-trie beam
   search) and ranking HitRate@1 (candidate likelihoods), per user from the
   written predictions (one test example per user and task), with standard
   errors std/sqrt(n).

Why `--item_format=title` (not title_id): the baseline must read titles only;
title_id would also put the item ids in every prompt, a learnable
collaborative identifier, which is what the soft tokens are meant to add.
The targets are then the titles ("Toy Story (1995)", 6.7 tokens on average
in the trained vocabulary, at most 31), decoded under the catalogue trie:
retrieval decoding works, only slower than with 1-3 token ids. Two costs,
the same for all three variants: 9 ml-100k titles are duplicates (the trie
returns the first item of a tokenisation), and with `--targets_length 24`
the 6 titles longer than 23 tokens cannot be generated.

Usage:
  .venv/bin/python benchmarks/ilm_ml100k.py            # ~15-18 min on 2 cores
  .venv/bin/python benchmarks/ilm_ml100k.py --quick    # ~4 min smoke run
  .venv/bin/python benchmarks/ilm_ml100k.py --cf id --lm_steps 1000
Outputs (logs of every command, checkpoints, eval dirs) go to --workdir.
The last stdout line is one JSON object: {"frozen_lm": {...}, "ilm": {...},
"ilm_unaligned": {...}, "goal_met": bool, ...}.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Shared with rsllm_lastfm.py (benchmarks/ is sys.path[0] when run as a script).
sys.path.insert(0, str(ROOT / "benchmarks"))
from _cli_runs import (StageError, mean_se, start_runner,  # noqa: E402
                       paired_diff, per_user)

VARIANTS = ("frozen_lm", "ilm", "ilm_unaligned")
LABELS = {"frozen_lm": "frozen LM, titles only", "ilm": "ILM",
          "ilm_unaligned": "ILM, unaligned (no phase 1)"}
METRICS = ("recall10", "ndcg10", "hit1")
# About 4 min on 2 cores: mostly the ten commands' start-up and compiles.
QUICK = dict(lm_steps=20, p1_steps=20, p2_steps=20, bpr_epochs=5,
             num_examples=32)


# ------------------------------------------------------------------ metrics
def check_against_eval(eval_dir: pathlib.Path, dataset: str,
                       users: dict[str, np.ndarray]) -> None:
  """The per-user means must equal what `recjax eval` wrote in metrics.json."""
  doc = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
  m = doc["metrics"]
  pairs = [(users["recall10"], m[f"{dataset}_retrieval"]["recall@10"]),
           (users["ndcg10"], m[f"{dataset}_retrieval"]["ndcg@10"]),
           (users["hit1"], m[f"{dataset}_ranking"]["hit@1"])]
  for x, want in pairs:
    if abs(float(np.mean(x)) - want) > 1e-9:
      print(f"WARNING: per-user mean {np.mean(x):.6f} != metrics.json "
            f"{want:.6f} in {eval_dir}", flush=True)


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" /
                                       "ml-100k"),
                 help="the RecBole atomic files (ml-100k.inter, .item)")
  p.add_argument("--workdir", default="/tmp/recjax_ilm_ml100k",
                 help="prepared dirs (data/), checkpoints, evals, logs/")
  p.add_argument("--name", default="ml100k_ilm",
                 help="prepared dataset name; the slots dir is <name>_slots")
  p.add_argument("--cf", default="bpr", choices=("bpr", "id"),
                 help="the encoder's collaborative features: a recjax BPR-MF "
                 "baseline's item embeddings (frozen) or a learned ID table")
  p.add_argument("--lm_lr", type=float, default=0.003,
                 help="the LM's constant learning rate: 0.003, that of the "
                 "README's figures (runs/quickstart.gin now trains at 0.01)")
  p.add_argument("--lm_steps", type=int, default=600,
                 help="training steps of the tiny FLAN-T5 (batch 16, packed)")
  p.add_argument("--p1_steps", type=int, default=200,
                 help="ILM phase-1 steps (batch 64 items)")
  p.add_argument("--p2_steps", type=int, default=250,
                 help="ILM phase-2 steps, aligned and unaligned (batch 16)")
  p.add_argument("--bpr_epochs", type=int, default=100,
                 help="BPR epochs at most (early stopping may end sooner)")
  p.add_argument("--max_history", type=int, default=10)
  p.add_argument("--num_negatives", type=int, default=19,
                 help="ranking negatives (candidates = this + 1)")
  p.add_argument("--kcore", type=int, default=5)
  p.add_argument("--slots", default="append", choices=("append", "replace"),
                 help="append: title then soft tokens; replace: soft tokens only")
  p.add_argument("--targets_length", type=int, default=24,
                 help="target tokens (titles; longer ones are cut)")
  p.add_argument("--num_beams", type=int, default=20)
  p.add_argument("--num_examples", type=int, default=None,
                 help="test users per task (default: all)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quick", action="store_true",
                 help="smoke run: " + ", ".join(f"{k}={v}"
                                                for k, v in QUICK.items()))
  p.add_argument("--resume", action="store_true",
                 help="keep the stages whose outputs for these steps exist in "
                 "--workdir (after an interruption, or to train phase 2 "
                 "further: training resumes from the latest checkpoint); "
                 "other changed flags are not noticed")
  args = p.parse_args(argv)
  if args.quick:
    for k, v in QUICK.items():
      setattr(args, k, v)

  data_dir = pathlib.Path(args.data).resolve()
  if not (data_dir / "ml-100k.inter").is_file():
    print(f"ml-100k not found at {data_dir} (need ml-100k.inter); "
          "nothing to benchmark.")
    print(json.dumps({"skipped": f"no data at {data_dir}"}))
    return 0
  work = pathlib.Path(args.workdir).resolve()
  prepared = work / "data"
  name, slots_name = args.name, f"{args.name}_slots"
  plain_dir, slots_dir = prepared / name, prepared / slots_name
  outputs = [plain_dir, slots_dir, work / "logs", work / "lm", work / "bpr",
             work / "p1", work / "p2", work / "p2_unaligned",
             *(work / f"eval_{v}" for v in VARIANTS)]
  run = start_runner(work, outputs, [plain_dir, slots_dir], args.resume)
  print(f"ILM on ml-100k: workdir {work}; lm {args.lm_steps}, phase 1 "
        f"{args.p1_steps}, phase 2 {args.p2_steps} steps; cf {args.cf}; "
        f"slots {args.slots}", flush=True)

  t_len = args.targets_length
  lengths = f"{{'inputs': 512, 'targets': {t_len}}}"
  slot_lengths = f"{{'inputs': 512, 'targets': {t_len}, 'slot_items': 32}}"
  if args.max_history + args.num_negatives + 1 > 32:
    p.error("ranking prompts would hold more than 32 slots (slot_items)")
  common = ["--source=recbole", f"--input={data_dir}", "--overwrite",
            f"--kcore={args.kcore}", f"--max_history={args.max_history}",
            f"--num_negatives={args.num_negatives}", "--item_format=title",
            "--tasks=retrieval,ranking,mim,bpr", f"--seed={args.seed}"]
  lm_dir, bpr_dir = work / "lm", work / "bpr"
  p1_dir, p2_dir, p2u_dir = work / "p1", work / "p2", work / "p2_unaligned"
  cf_gin = ([f"--gin.CF_EMBEDDINGS_DIR='{bpr_dir}'"] if args.cf == "bpr"
            else [])

  def eval_args(ckpt, out, task, ilm):
    a = ["eval", "--gin_file=models/flan_t5_tiny.gin",
         "--gin_file=runs/eval.gin"]
    if ilm:
      a += ["--gin_file=runs/ilm_model.gin", *cf_gin]
    a += ["--gin.ACTIVATION_DTYPE='float32'",
          "--gin.evaluate.auto_vocab_size=True",
          f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
          f"--gin.TASK_FEATURE_LENGTHS={slot_lengths if ilm else lengths}",
          f"--gin.CHECKPOINT_PATH='{ckpt}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
          f"--gin.NUM_BEAMS={args.num_beams}"]
    if args.num_examples:
      a.append(f"--gin.NUM_EXAMPLES={args.num_examples}")
    return a

  def phase2_args(out, aligned):
    return ["train", "--gin_file=models/flan_t5_tiny.gin",
            "--gin_file=runs/ilm_phase2.gin", *cf_gin,
            f"--gin.MIXTURE_OR_TASK_NAME='{slots_name}_rec'",
            f"--gin.MODEL_DIR='{out}'", f"--gin.TRAIN_STEPS={args.p2_steps}",
            f"--gin.INITIAL_CHECKPOINT_PATH='{lm_dir}'",
            "--gin.ITEM_ENCODER_CHECKPOINT=" + (f"'{p1_dir}'" if aligned
                                                else "None"),
            f"--gin.TASK_FEATURE_LENGTHS={slot_lengths}",
            "--gin.BATCH_SIZE=16", "--gin.DROPOUT_RATE=0.0",
            "--gin.ACTIVATION_DTYPE='float32'",
            "--gin.train.auto_vocab_size=True", "--gin.EVAL_PERIOD=0",
            f"--gin.RANDOM_SEED={args.seed}", "--gin.train.log_every=50"]

  def ckpt_done(model_dir, steps):
    return model_dir / "checkpoints" / str(steps) / "commit_success.txt"

  evals = {"frozen_lm": (work / "eval_frozen_lm", name),
           "ilm": (work / "eval_ilm", slots_name),
           "ilm_unaligned": (work / "eval_ilm_unaligned", slots_name)}
  try:
    run("prepare_plain", ["prepare", *common, f"--name={name}"],
        plain_dir / "tasks" / "manifest.json")
    run("prepare_slots", ["prepare", *common, f"--name={slots_name}",
                          f"--prompt=item_slots={args.slots}",
                          f"--vocab={plain_dir / 'vocab' / 'spiece.model'}"],
        slots_dir / "tasks" / "manifest.json")
    run("train_lm", ["train", "--gin_file=models/flan_t5_tiny.gin",
                     "--gin_file=runs/quickstart.gin",
                     f"--gin.MIXTURE_OR_TASK_NAME='{name}_rec_aux'",
                     f"--gin.MODEL_DIR='{lm_dir}'",
                     f"--gin.TRAIN_STEPS={args.lm_steps}",
                     f"--gin.TASK_FEATURE_LENGTHS={lengths}",
                     f"--gin.LEARNING_RATE={args.lm_lr}",
                     "--gin.EVAL_PERIOD=0", f"--gin.RANDOM_SEED={args.seed}",
                     "--gin.train.log_every=50"],
        ckpt_done(lm_dir, args.lm_steps))
    if args.cf == "bpr":
      run("bpr", ["baseline", "--model=bpr", f"--data={slots_dir}",
                  f"--output={bpr_dir}", f"--epochs={args.bpr_epochs}",
                  f"--seed={args.seed}", "--overwrite"],
          bpr_dir / "item_embeddings.npy")
    run("ilm_phase1", ["train", "--gin_file=runs/ilm_phase1.gin", *cf_gin,
                       f"--gin.MIXTURE_OR_TASK_NAME='{slots_name}_item_text'",
                       f"--gin.MODEL_DIR='{p1_dir}'",
                       f"--gin.TRAIN_STEPS={args.p1_steps}",
                       f"--gin.RANDOM_SEED={args.seed}",
                       "--gin.train.log_every=50"],
        ckpt_done(p1_dir, args.p1_steps))
    run("ilm_phase2", phase2_args(p2_dir, True), ckpt_done(p2_dir,
                                                           args.p2_steps))
    run("ilm_phase2_unaligned", phase2_args(p2u_dir, False),
        ckpt_done(p2u_dir, args.p2_steps))
    ckpts = {"frozen_lm": (lm_dir, args.lm_steps),
             "ilm": (p2_dir, args.p2_steps),
             "ilm_unaligned": (p2u_dir, args.p2_steps)}
    for v in VARIANTS:
      out, dataset = evals[v]
      ckpt, step = ckpts[v]
      run(f"eval_{v}", eval_args(ckpt, out, f"{dataset}_rec",
                                 v != "frozen_lm"), out / "metrics.json", step)
  except StageError as e:
    print(str(e), flush=True)
    print(json.dumps({"error": str(e).splitlines()[0],
                      "seconds": round(run.elapsed(), 1)}))
    return 1

  users = {}
  for v in VARIANTS:
    out, dataset = evals[v]
    users[v] = per_user(out, dataset)
    check_against_eval(out, dataset, users[v])
  summary = {}
  for v in VARIANTS:
    row = {"n": int(len(users[v]["recall10"]))}
    for m in METRICS:
      mean, se = mean_se(users[v][m])
      row[m], row[f"{m}_se"] = round(mean, 4), round(se, 4)
    summary[v] = row

  print()
  print(f"ml-100k test, {summary['frozen_lm']['n']} users; retrieval = beam "
        f"{args.num_beams} over the catalogue trie, ranking = "
        f"{args.num_negatives + 1} candidates by likelihood; mean +- "
        "standard error (std/sqrt(n))")
  print()
  print("| variant | Recall@10 | NDCG@10 | HitRate@1 (ranking) |")
  print("|---|---|---|---|")
  for v in VARIANTS:
    s = summary[v]
    print(f"| {LABELS[v]} | " + " | ".join(
        f"{s[m]:.4f} +- {s[m + '_se']:.4f}" for m in METRICS) + " |")
  print()
  diffs = {}
  for other in ("frozen_lm", "ilm_unaligned"):
    d = {m: paired_diff(users["ilm"], users[other], m) for m in METRICS}
    diffs[f"ilm_minus_{other}"] = d
    print(f"ILM - {LABELS[other]}: " + "; ".join(
        f"{m} {d[m]['diff']:+.4f} (paired se {d[m]['se']:.4f})"
        for m in METRICS))
  goal = all(diffs[k]["recall10"]["diff"] > 2 * diffs[k]["recall10"]["se"]
             for k in diffs)
  print(f"goal (ILM Recall@10 above both by > 2 paired standard errors): "
        f"{'met' if goal else 'NOT met'}")
  print(f"stage seconds: {run.seconds}; total {run.elapsed():.0f}s")
  summary.update(diffs)
  summary["goal_met"] = bool(goal)
  summary["config"] = {"cf": args.cf, "slots": args.slots,
                       "lm_steps": args.lm_steps, "p1_steps": args.p1_steps,
                       "p2_steps": args.p2_steps, "bpr_epochs": args.bpr_epochs,
                       "max_history": args.max_history,
                       "num_negatives": args.num_negatives,
                       "targets_length": t_len, "num_beams": args.num_beams,
                       "num_examples": args.num_examples, "seed": args.seed}
  summary["seconds"] = round(run.elapsed(), 1)
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
