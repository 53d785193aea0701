"""RSLLM on LLaRA's LastFM split: both stages, the ablations, and SASRec.

Question: does RSLLM (a frozen SASRec's item and user embeddings projected
into ID slots beside the titles, two-stage training: a text-only LM, then
LoRA + projector with two InfoNCE losses) pick the next artist among LLaRA's
20 candidates better than the text-only model it starts from, and at least
as well as the SASRec it reads?
Goal: RSLLM's HitRatio@1 (LLaRA's: greedy generation, over valid answers)
>= SASRec's on the same candidates, AND above the text-only model (stage 1)
by more than two standard errors of the paired per-user difference, on
LLaRA's own test users (the headline). LLaRA's published LastFM HitRatio@1
(0.5246, a 7B Llama-2) is printed for reference.

Everything goes through the `recjax` CLI (`python -m recjax.main ...`
subprocesses with RECJAX_DATA_DIR and RECJAX_PREPARED_DIRS set; one log per
command in `<workdir>/logs/<stage>.log`):

1. `recjax prepare --source=lastfm_llara` of `../shared/data/lastfm-llara`
   (read in place, never copied; every user of LLaRA's train/valid/test
   files becomes one user `train_<k>`, `valid_<k>`, `test_<k>`, re-split
   leave-one-out; `--kcore=0`: all 1,220 users kept, none has fewer than
   the 3 interactions a leave-one-out split needs), `--item_format=title`
   (artist names), `--max_history=10`, 19 negatives (20 candidates, LLaRA's
   protocol), tasks retrieval and ranking, twice: text (`<name>`) and slots
   (`<name>_rsllm`: the same plus `--prompt=item_slots=append
   --prompt=user_slot=true --vocab=<text>/vocab/spiece.model`).
2. SASRec: `recjax baseline --model=sasrec` on the slots dir (saves the
   whole model; RSLLM reads it frozen).
3. Stage 1: the tiny FLAN-T5 from scratch on `<name>_rec` (text only;
   `runs/quickstart.gin`, --stage1_steps). No pretrained LM exists offline,
   so "stage 1" here is also where all language knowledge comes from.
4. Stage 2 (`runs/rsllm_stage2.gin`: LoRA adapters + projector train, SASRec
   and the LM base frozen) on `<name>_rsllm_rec`, --stage2_steps, and its
   ablations: no user-item InfoNCE (USER_ITEM_WEIGHT=0), no ID-text InfoNCE
   (ID_TEXT_WEIGHT=0), no stage 1 (INITIAL_CHECKPOINT_PATH=None, LORA=None:
   the whole LM trained from scratch in stage 2's steps), no ID slots (stage
   2's recipe: LoRA from stage 1, AdamW at 1e-3, unpacked batch 16, same
   steps; on the text-only prompts).
5. `recjax eval` of each LM on the test split: ranking (LLaRA's HitRatio@1 /
   ValidRatio of the greedy answer; NDCG@10 of the 20 candidates ranked by
   likelihood) and retrieval (Recall@10 of beam search under the catalogue
   trie). SASRec scores the same candidates from the same 10-item history.

Per-user arrays: the ranking rows are mapped to users by regenerating the
test ranking examples (`recjax.prompts.ranking.generate` with the manifest's
PromptConfig and seed), asserting target and candidates row by row; means
are checked against metrics.json. Standard errors: std/sqrt(n) for per-user
means; HitRatio@1 = correct / valid is a ratio of per-user means, so its
standard error (and that of a paired difference) is the delta method's
(linearised per-user values (c - HR v) / mean(v)); with every answer valid
it is the plain std/sqrt(n) of the hits.

Usage:
  .venv/bin/python benchmarks/rsllm_lastfm.py            # defaults (~42 min on 2 cores)
  .venv/bin/python benchmarks/rsllm_lastfm.py --quick    # smoke run, a few minutes
  .venv/bin/python benchmarks/rsllm_lastfm.py --variants sasrec,text_only,rsllm
The last stdout line is one JSON object keyed by variant, plus "goal_met",
"seconds" and the settings.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time
from typing import Sequence

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _cli_runs import (StageError, mean_se, start_runner,  # noqa: E402
                       paired_diff, read_rows)

VARIANTS = ("sasrec", "text_only", "rsllm", "rsllm_no_stage1",
            "rsllm_no_user_item", "rsllm_no_id_text", "rsllm_no_id_slots")
LM_VARIANTS = VARIANTS[1:]
STAGE2 = ("rsllm", "rsllm_no_stage1", "rsllm_no_user_item",
          "rsllm_no_id_text", "rsllm_no_id_slots")
LABELS = {
    "sasrec": "SASRec (same candidates)",
    "text_only": "text-only LM (stage 1)",
    "rsllm": "RSLLM (stage 1 + stage 2)",
    "rsllm_no_stage1": "RSLLM w/o stage 1 (from scratch)",
    "rsllm_no_user_item": "RSLLM w/o user-item InfoNCE",
    "rsllm_no_id_text": "RSLLM w/o ID-text InfoNCE",
    "rsllm_no_id_slots": "RSLLM w/o ID slots (text, LoRA)",
}
# The stage-2 ablations' extra gin bindings (train and eval alike).
ABLATION_GIN = {
    "rsllm": [],
    "rsllm_no_user_item": ["--gin.USER_ITEM_WEIGHT=0.0"],
    "rsllm_no_id_text": ["--gin.ID_TEXT_WEIGHT=0.0"],
    "rsllm_no_stage1": ["--gin.LORA=None"],
}
LLARA_PUBLISHED_HR1 = 0.5246  # LLaRA (Llama-2 7B), LastFM, HitRatio@1
LLARA_PREFIX = "test_"        # the loader's ids of LLaRA's test users
SUBSETS = ("llara_test", "all")
SUBSET_LABELS = {"llara_test": "LLaRA's test users (test_<k>; headline)",
                 "all": "all held-out users (leave-one-out test case)"}
QUICK = dict(stage1_steps=20, stage2_steps=10, sasrec_epochs=2,
             num_examples=32)
LORA_EVAL = ["--gin_file=runs/lora.gin"]
# HitRatio@1 is over valid answers only: with fewer valid RSLLM answers than
# this, it (and its delta-method standard error) is not estimated well
# enough for the goal's comparisons, which then count as not met.
MIN_VALID = 10


# ------------------------------------------------------------ pure metrics
def candidate_metrics(scores: np.ndarray, target_pos: np.ndarray
                      ) -> dict[str, np.ndarray]:
  """Per-example HitRate@1, NDCG@10 and rank of the target among candidates.

  scores: [N, C] (higher = better); target_pos: [N] the target's column.
  Ties count against the target (rank = #candidates scoring >= the target),
  as `recjax eval` ranks candidate likelihoods.
  """
  scores = np.asarray(scores, np.float64)
  target_pos = np.asarray(target_pos, np.int64)
  t = scores[np.arange(len(scores)), target_pos]
  rank = np.sum(scores >= t[:, None], axis=1)
  return {"rank": rank, "hit1": (rank == 1).astype(np.float64),
          "ndcg10": ndcg10_of_ranks(rank)}


def ndcg10_of_ranks(rank: np.ndarray) -> np.ndarray:
  """1/log2(rank + 1) for ranks 1..10, else 0 (0 = absent)."""
  rank = np.asarray(rank, np.int64)
  ok = (rank >= 1) & (rank <= 10)
  return np.where(ok, 1.0 / np.log2(np.maximum(rank, 1) + 1.0), 0.0)


def llara_per_user(targets: Sequence[str], predictions: Sequence[str],
                   candidates: Sequence[Sequence[str]]
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Per-example (correct, valid) of LLaRA's HitRatio@1 check.

  As `recjax.infer.metrics.llara_metrics`: lower-cased and stripped; valid =
  exactly one candidate name occurs in the generation; correct = valid and
  that name is the target's. HitRatio@1 = sum(correct) / sum(valid).
  """
  correct, valid = [], []
  for real, gen, cans in zip(targets, predictions, candidates):
    gen = str(gen).strip().lower()
    real = str(real).strip().lower()
    found = [c for c in (str(c).strip().lower() for c in cans) if c in gen]
    valid.append(len(found) == 1)
    correct.append(len(found) == 1 and found[0] == real)
  return np.array(correct, np.float64), np.array(valid, np.float64)


def _ratio_influence(c: np.ndarray, v: np.ndarray) -> tuple[float, np.ndarray]:
  """R = sum(c) / sum(v) (0 if no valid) and its linearised per-user values."""
  c, v = np.asarray(c, np.float64), np.asarray(v, np.float64)
  if len(v) == 0:
    return float("nan"), np.full(0, np.nan)
  if v.sum() == 0:  # LLaRA's convention: no valid answer -> a constant 0
    return 0.0, np.zeros(len(v))
  r = float(c.sum() / v.sum())
  return r, (c - r * v) / v.mean()


def ratio_mean_se(c: np.ndarray, v: np.ndarray) -> tuple[float, float]:
  """HitRatio@1 = sum(c) / sum(v) and its delta-method standard error.

  With every v = 1 it is mean(c) and std(c)/sqrt(n) (ddof 1).
  """
  r, z = _ratio_influence(c, v)
  if len(z) < 2 or np.isnan(z).any():
    return r, float("nan")
  return r, float(np.std(z, ddof=1) / math.sqrt(len(z)))


def paired_ratio_diff(ca, va, cb, vb) -> dict:
  """HitRatio@1 of a minus b over the same users, with the standard error of
  the paired per-user difference of their linearised values (delta method;
  with all answers valid: the plain paired standard error of the hits)."""
  if len(ca) != len(cb):
    raise ValueError("variants were evaluated on different users")
  ra, za = _ratio_influence(ca, va)
  rb, zb = _ratio_influence(cb, vb)
  d = za - zb
  se = (float(np.std(d, ddof=1) / math.sqrt(len(d)))
        if len(d) > 1 and not np.isnan(d).any() else float("nan"))
  diff = ra - rb
  return {"diff": round(diff, 4), "se": round(se, 4),
          "z": round(diff / se, 2) if se and se > 0 else None}


def llara_users(user_ids: Sequence[str]) -> np.ndarray:
  """Mask of LLaRA's own test users (the loader names them `test_<k>`)."""
  return np.array([str(u).startswith(LLARA_PREFIX) for u in user_ids], bool)


def compare_llara_rows(cases: dict[str, tuple[list[str], str]],
                       rows: Sequence[dict]) -> dict:
  """Does each `test_<k>`'s held-out case equal LLaRA's test row k?

  cases: user id -> (history item ids, oldest first; target item id); rows:
  LLaRA's test.jsonl rows ({"seq": [ids], "next": id}) in file order. Equal:
  history == the row's seq (LLaRA keeps at most 10 previous items) and
  target == next. Returns n (rows), equal, missing (rows without a user) and
  the first few mismatching user ids.
  """
  equal, missing, bad = 0, 0, []
  for k, row in enumerate(rows):
    user = f"{LLARA_PREFIX}{k}"
    if user not in cases:
      missing += 1
      continue
    hist, target = cases[user]
    if ([str(x) for x in hist] == [str(x) for x in row["seq"]]
        and str(target) == str(row["next"])):
      equal += 1
    else:
      bad.append(user)
  return {"n": len(rows), "equal": equal, "missing": missing,
          "mismatched": bad[:5]}


def summarize(arrays: dict[str, np.ndarray], mask: np.ndarray) -> dict:
  """One variant's figures over the users in `mask`."""
  out = {"n": int(mask.sum())}
  hr, hr_se = ratio_mean_se(arrays["correct"][mask], arrays["valid"][mask])
  out["hr1"], out["hr1_se"] = round(hr, 4), round(hr_se, 4)
  out["correct_n"] = int(arrays["correct"][mask].sum())
  out["valid_n"] = int(arrays["valid"][mask].sum())
  mean, se = mean_se(arrays["correct"][mask])  # correct / all users
  out["hit1_all"], out["hit1_all_se"] = round(mean, 4), round(se, 4)
  for m in ("valid", "ndcg10", "hit1_lik", "recall10"):
    if m in arrays:
      mean, se = mean_se(arrays[m][mask])
      key = "valid_ratio" if m == "valid" else m
      out[key], out[f"{key}_se"] = round(mean, 4), round(se, 4)
  return out


# ------------------------------------------------------------ data helpers
def manifest(prepared_dir: pathlib.Path) -> dict:
  return json.loads((prepared_dir / "tasks" / "manifest.json").read_text(
      encoding="utf-8"))


def held_out_examples(prepared_dir: pathlib.Path) -> list[dict]:
  """The test ranking examples in file order, each with its user.

  Regenerates `recjax.prompts.ranking.generate(data, 'test', config, seed)`
  with the manifest's PromptConfig and seed; `held_out(data, 'test')` gives
  the user of each (both visit the users with a held-out case in index
  order), checked by the target.
  """
  from recjax.data.prepared import PreparedData  # noqa: E402
  from recjax.data.split import held_out  # noqa: E402
  from recjax.prompts import ranking  # noqa: E402
  from recjax.prompts.common import PromptConfig  # noqa: E402
  import dataclasses  # noqa: E402
  man = manifest(prepared_dir)
  fields = {f.name for f in dataclasses.fields(PromptConfig)}
  config = PromptConfig(**{k: v for k, v in man["config"].items()
                           if k in fields})
  data = PreparedData.load(prepared_dir)
  ids = data.item_ids
  cases = []
  examples = ranking.generate(data, "test", config, man["seed"])
  held = held_out(data, "test", max_history=config.max_history)
  for ex, case in zip(examples, held, strict=True):
    target = ex["target_item"]
    target = target.decode() if isinstance(target, bytes) else str(target)
    if target != ids[case.target]:
      raise AssertionError(f"{prepared_dir}: example target {target} != "
                           f"user {data.user_ids[case.user]}'s "
                           f"{ids[case.target]}")
    cands = [c.decode() if isinstance(c, bytes) else str(c)
             for c in ex["candidates"]]
    cases.append({"user_id": data.user_ids[case.user], "user": case.user,
                  "target_item": target, "candidates": cands,
                  "history": [int(i) for i in case.history]})
  return cases


def check_rows(cases: list[dict], ranking_rows: list[dict],
               retrieval_rows: list[dict], where: str) -> None:
  """The eval's rows are the first len(rows) cases, in order."""
  if len(ranking_rows) > len(cases) or len(retrieval_rows) != len(
      ranking_rows):
    raise AssertionError(f"{where}: {len(ranking_rows)} ranking / "
                         f"{len(retrieval_rows)} retrieval rows for "
                         f"{len(cases)} test users")
  for k, (case, row, ret) in enumerate(zip(cases, ranking_rows,
                                           retrieval_rows)):
    if (row["target_item"] != case["target_item"] or
        list(row["candidates"]) != case["candidates"] or
        ret["target_item"] != case["target_item"]):
      raise AssertionError(f"{where}: row {k} does not match user "
                           f"{case['user_id']}'s regenerated example")


def lm_per_user(eval_dir: pathlib.Path, dataset: str, cases: list[dict],
                texts: dict[str, str]) -> dict[str, np.ndarray]:
  """Per-user arrays of one LM variant (first len(rows) cases)."""
  rank_rows = read_rows(eval_dir, f"{dataset}_ranking")
  ret_rows = read_rows(eval_dir, f"{dataset}_retrieval")
  check_rows(cases, rank_rows, ret_rows, str(eval_dir))
  from recjax.infer.metrics import rank_of  # noqa: E402 (pure numpy)
  correct, valid = llara_per_user(
      [texts[r["target_item"]] for r in rank_rows],
      [r["prediction"] for r in rank_rows],
      [[texts[c] for c in r["candidates"]] for r in rank_rows])
  rank = np.array([r["rank"] for r in rank_rows], np.int64)
  ret_rank = np.array([rank_of(r["target_item"], r["predictions"])
                       for r in ret_rows], np.int64)
  return {"correct": correct, "valid": valid, "ndcg10": ndcg10_of_ranks(rank),
          "hit1_lik": (rank == 1).astype(np.float64),
          "recall10": ((ret_rank >= 1) & (ret_rank <= 10)).astype(np.float64),
          "users": np.array([c["user_id"] for c in cases[:len(rank_rows)]])}


def check_against_eval(eval_dir: pathlib.Path, dataset: str,
                       arrays: dict[str, np.ndarray]) -> None:
  """The per-user figures must give what `recjax eval` wrote."""
  doc = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
  m = doc["metrics"]
  rank_m, ret_m = m[f"{dataset}_ranking"], m[f"{dataset}_retrieval"]
  hr, _ = ratio_mean_se(arrays["correct"], arrays["valid"])
  pairs = [("llara_hit_ratio@1", hr, rank_m["llara_hit_ratio@1"]),
           ("llara_valid_ratio", np.mean(arrays["valid"]),
            rank_m["llara_valid_ratio"]),
           ("ndcg@10", np.mean(arrays["ndcg10"]), rank_m["ndcg@10"]),
           ("hit@1", np.mean(arrays["hit1_lik"]), rank_m["hit@1"]),
           ("recall@10", np.mean(arrays["recall10"]), ret_m["recall@10"])]
  for name, got, want in pairs:
    if abs(float(got) - float(want)) > 1e-9:
      print(f"WARNING: per-user {name} {float(got):.6f} != metrics.json "
            f"{float(want):.6f} in {eval_dir}", flush=True)


def sasrec_per_user(sasrec_dir: pathlib.Path, prepared_dir: pathlib.Path,
                    cases: list[dict], max_history: int
                    ) -> dict[str, np.ndarray]:
  """SASRec's scores of each case's candidates from the same history."""
  import jax  # noqa: E402
  import jax.numpy as jnp  # noqa: E402
  from recjax.baselines.cli import load_model  # noqa: E402
  from recjax.data.prepared import PreparedData  # noqa: E402
  from recjax.data.split import held_out  # noqa: E402
  from recjax.models.sasrec import SASRec, SASRecConfig  # noqa: E402
  data = PreparedData.load(prepared_dir)
  config, params = load_model(sasrec_dir, data)
  model = SASRec(SASRecConfig(**config))
  held = list(held_out(data, "test", max_history=max_history))[:len(cases)]
  index = {iid: n for n, iid in enumerate(data.item_ids)}
  n, width = len(cases), max_history
  seq = np.zeros((n, width), np.int32)
  lengths = np.zeros((n,), np.int32)
  for k, (case, h) in enumerate(zip(cases, held, strict=True)):
    if data.user_ids[h.user] != case["user_id"] or list(
        map(int, h.history)) != case["history"]:
      raise AssertionError(f"held_out and the prompts differ at {k}")
    seq[k, :len(h.history)] = np.asarray(h.history) + 1
    lengths[k] = len(h.history)
  encode = jax.jit(lambda p, s, l: model.apply({"params": p}, s, l,
                                               method=SASRec.encode))
  users = np.asarray(encode(params, jnp.asarray(seq), jnp.asarray(lengths)))
  items = np.asarray(params["item_embedding"])[1:]
  cand = np.array([[index[c] for c in case["candidates"]] for case in cases])
  scores = np.einsum("nd,ncd->nc", users, items[cand])
  target_pos = np.array([case["candidates"].index(case["target_item"])
                         for case in cases])
  m = candidate_metrics(scores, target_pos)
  # HitRatio@1 from SASRec's argmax: every answer is a candidate (valid).
  return {"correct": m["hit1"], "valid": np.ones(n), "ndcg10": m["ndcg10"],
          "hit1_lik": m["hit1"],
          "users": np.array([c["user_id"] for c in cases])}


def targets_length(text_dir: pathlib.Path, cap: int) -> tuple[int, int]:
  """(target length to use, longest title in tokens + EOS), multiple of 4."""
  import sentencepiece as spm  # noqa: E402
  from recjax.data.prepared import read_items  # noqa: E402
  sp = spm.SentencePieceProcessor(
      model_file=str(text_dir / "vocab" / "spiece.model"))
  longest = max(len(sp.encode(str(it["title"] or it["id"]))) for it in
                read_items(text_dir)) + 1
  return min(cap, int(math.ceil(longest / 4) * 4)), longest


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" /
                                       "lastfm-llara"),
                 help="LLaRA's LastFM files (id2name.txt, train.jsonl, ...)")
  p.add_argument("--workdir", default="/tmp/recjax_rsllm_lastfm",
                 help="prepared dirs (data/), checkpoints, evals, logs/")
  p.add_argument("--name", default="lastfm_llara",
                 help="prepared dataset name; the slots dir is <name>_rsllm")
  p.add_argument("--stage1_steps", type=int, default=800,
                 help="stage 1: text-only tiny FLAN-T5 from scratch "
                 "(runs/quickstart.gin: batch 16 packed)")
  p.add_argument("--stage1_lr", type=float, default=0.003,
                 help="stage 1's constant learning rate: 0.003, that of the "
                 "README's figures (runs/quickstart.gin now trains at 0.01)")
  p.add_argument("--stage2_steps", type=int, default=300,
                 help="stage 2 and each ablation (batch 16 unpacked, AdamW "
                 "lr 1e-3)")
  p.add_argument("--sasrec_epochs", type=int, default=8,
                 help="SASRec epochs at most (early stopping may end sooner; "
                 "~40 s each here); 0 = the baseline's own default (30)")
  p.add_argument("--variants", default=",".join(VARIANTS),
                 help="comma-separated subset of " + ",".join(VARIANTS))
  p.add_argument("--max_history", type=int, default=10)
  p.add_argument("--num_negatives", type=int, default=19,
                 help="ranking negatives (candidates = this + 1)")
  p.add_argument("--targets_length", type=int, default=None,
                 help="target tokens (default: the longest artist name + "
                 "EOS, rounded up to 4, at most 32)")
  p.add_argument("--num_beams", type=int, default=20)
  p.add_argument("--num_examples", type=int, default=None,
                 help="test users per task (default: all; the first N users "
                 "are LLaRA's training users, so a small N has no test_ "
                 "users)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quick", action="store_true",
                 help="smoke run: " + ", ".join(f"{k}={v}"
                                                for k, v in QUICK.items()))
  p.add_argument("--resume", action="store_true",
                 help="keep the stages whose outputs for these steps exist in "
                 "--workdir; other changed flags are not noticed")
  args = p.parse_args(argv)
  if args.quick:
    for k, v in QUICK.items():
      setattr(args, k, v)
  variants = [v.strip() for v in args.variants.split(",") if v.strip()]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown or not variants:
    p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
  variants = [v for v in VARIANTS if v in variants]
  if args.max_history + args.num_negatives + 2 > 48:
    p.error("ranking prompts would hold more than 48 slots (slot_items)")

  data_dir = pathlib.Path(args.data).resolve()
  needed = ("id2name.txt", "train.jsonl", "test.jsonl")
  missing = [f for f in needed if not (data_dir / f).is_file()]
  if missing:
    print(f"LLaRA's LastFM not found at {data_dir} (missing "
          f"{', '.join(missing)}); nothing to benchmark.")
    print(json.dumps({"skipped": f"no data at {data_dir}"}))
    return 0

  work = pathlib.Path(args.workdir).resolve()
  prepared = work / "data"
  name, slots_name = args.name, f"{args.name}_rsllm"
  text_dir, slots_dir = prepared / name, prepared / slots_name
  stage1_dir, sasrec_dir = work / "stage1", work / "sasrec"
  model_dirs = {"text_only": stage1_dir,
                **{v: work / f"stage2_{v}" for v in STAGE2}}
  outputs = [text_dir, slots_dir, work / "logs", stage1_dir, sasrec_dir,
             *(work / f"stage2_{v}" for v in STAGE2),
             *(work / f"eval_{v}" for v in LM_VARIANTS)]
  run = start_runner(work, outputs, [text_dir, slots_dir], args.resume)
  print(f"RSLLM on LLaRA's LastFM: workdir {work}; variants "
        f"{','.join(variants)}; stage 1 {args.stage1_steps}, stage 2 "
        f"{args.stage2_steps} steps; SASRec epochs "
        f"{args.sasrec_epochs or 'default'}", flush=True)

  common = ["--source=lastfm_llara", f"--input={data_dir}", "--overwrite",
            "--kcore=0", f"--max_history={args.max_history}",
            f"--num_negatives={args.num_negatives}", "--item_format=title",
            "--tasks=retrieval,ranking", f"--seed={args.seed}"]
  need_stage1 = any(v in variants for v in
                    ("text_only", "rsllm", "rsllm_no_user_item",
                     "rsllm_no_id_text", "rsllm_no_id_slots"))
  need_sasrec = any(v != "text_only" and v != "rsllm_no_id_slots"
                    for v in variants)

  def ckpt_done(model_dir, steps):
    return model_dir / "checkpoints" / str(steps) / "commit_success.txt"

  try:
    run("prepare_text", ["prepare", *common, f"--name={name}"],
        text_dir / "tasks" / "manifest.json")
    run("prepare_slots", ["prepare", *common, f"--name={slots_name}",
                          "--prompt=item_slots=append",
                          "--prompt=user_slot=true",
                          f"--vocab={text_dir / 'vocab' / 'spiece.model'}"],
        slots_dir / "tasks" / "manifest.json")
    if args.targets_length is None:
      t_len, longest = targets_length(text_dir, 32)
      print(f"targets length {t_len} (longest artist name {longest} tokens "
            "with EOS)", flush=True)
    else:
      t_len = args.targets_length
    lengths = f"{{'inputs': 512, 'targets': {t_len}}}"
    slot_lengths = f"{{'inputs': 512, 'targets': {t_len}, 'slot_items': 48}}"
    train_common = ["--gin.BATCH_SIZE=16", "--gin.DROPOUT_RATE=0.0",
                    "--gin.ACTIVATION_DTYPE='float32'",
                    "--gin.train.auto_vocab_size=True", "--gin.EVAL_PERIOD=0",
                    f"--gin.RANDOM_SEED={args.seed}",
                    "--gin.train.log_every=50"]
    sasrec_gin = [f"--gin.SASREC_DIR='{sasrec_dir}'"]

    if need_sasrec:
      run("sasrec", ["baseline", "--model=sasrec", f"--data={slots_dir}",
                     f"--output={sasrec_dir}", f"--seed={args.seed}",
                     "--overwrite",
                     *([f"--epochs={args.sasrec_epochs}"]
                       if args.sasrec_epochs else [])],
          sasrec_dir / "model.msgpack")
    if need_stage1:
      run("stage1", ["train", "--gin_file=models/flan_t5_tiny.gin",
                     "--gin_file=runs/quickstart.gin",
                     f"--gin.MIXTURE_OR_TASK_NAME='{name}_rec'",
                     f"--gin.MODEL_DIR='{stage1_dir}'",
                     f"--gin.TRAIN_STEPS={args.stage1_steps}",
                     f"--gin.TASK_FEATURE_LENGTHS={lengths}",
                     f"--gin.LEARNING_RATE={args.stage1_lr}",
                     *train_common],
          ckpt_done(stage1_dir, args.stage1_steps))

    def stage2_args(v):
      out = model_dirs[v]
      base = ["train", "--gin_file=models/flan_t5_tiny.gin"]
      steps = [f"--gin.TRAIN_STEPS={args.stage2_steps}",
               f"--gin.MODEL_DIR='{out}'", *train_common]
      if v == "rsllm_no_id_slots":  # stage 2's recipe on the text prompts
        return [*base, "--gin_file=runs/finetune.gin",
                "--gin_file=runs/lora.gin",
                f"--gin.INITIAL_CHECKPOINT_PATH='{stage1_dir}'",
                f"--gin.MIXTURE_OR_TASK_NAME='{name}_rec'",
                f"--gin.TASK_FEATURE_LENGTHS={lengths}",
                "--gin.LEARNING_RATE=0.001", "--gin.train.pack=False",
                "--gin.train.optimizer=@optimizers.adamw",
                *steps]
      init = ("--gin.INITIAL_CHECKPOINT_PATH=None" if v == "rsllm_no_stage1"
              else f"--gin.INITIAL_CHECKPOINT_PATH='{stage1_dir}'")
      return [*base, "--gin_file=runs/rsllm_stage2.gin", *sasrec_gin, init,
              f"--gin.MIXTURE_OR_TASK_NAME='{slots_name}_rec'",
              f"--gin.TASK_FEATURE_LENGTHS={slot_lengths}",
              *ABLATION_GIN[v], *steps]

    for v in STAGE2:
      if v in variants:
        run(f"stage2_{v}", stage2_args(v),
            ckpt_done(model_dirs[v], args.stage2_steps))

    def eval_args(v):
      slotted = v not in ("text_only", "rsllm_no_id_slots")
      a = ["eval", "--gin_file=models/flan_t5_tiny.gin",
           "--gin_file=runs/eval.gin"]
      if v != "text_only":
        a += LORA_EVAL
      if slotted:
        a += ["--gin_file=runs/rsllm_model.gin", *sasrec_gin,
              *ABLATION_GIN[v]]
      dataset = slots_name if slotted else name
      a += ["--gin.ACTIVATION_DTYPE='float32'",
            "--gin.evaluate.auto_vocab_size=True",
            f"--gin.MIXTURE_OR_TASK_NAME='{dataset}_rec'",
            f"--gin.TASK_FEATURE_LENGTHS="
            f"{slot_lengths if slotted else lengths}",
            f"--gin.CHECKPOINT_PATH='{model_dirs[v]}'",
            f"--gin.EVAL_OUTPUT_DIR='{work / f'eval_{v}'}'",
            f"--gin.NUM_BEAMS={args.num_beams}"]
      if args.num_examples:
        a.append(f"--gin.NUM_EXAMPLES={args.num_examples}")
      return a, dataset

    datasets = {}
    for v in LM_VARIANTS:
      if v in variants:
        a, datasets[v] = eval_args(v)
        step = args.stage1_steps if v == "text_only" else args.stage2_steps
        run(f"eval_{v}", a, work / f"eval_{v}" / "metrics.json", step)
  except StageError as e:
    print(str(e), flush=True)
    print(json.dumps({"error": str(e).splitlines()[0],
                      "seconds": round(run.elapsed(), 1)}))
    return 1

  # ---------------------------------------------------------- per user
  t = time.perf_counter()
  from recjax.infer.evaluation import load_catalogue  # noqa: E402
  cases = {d: held_out_examples(d) for d in (text_dir, slots_dir)}
  same = [(c["user_id"], c["target_item"], c["candidates"])
          for c in cases[text_dir]] == [
              (c["user_id"], c["target_item"], c["candidates"])
              for c in cases[slots_dir]]
  if not same:
    raise AssertionError("the text and slots dirs' test examples differ")
  all_cases = cases[slots_dir]
  n_eval = min(len(all_cases), args.num_examples or len(all_cases))

  # LLaRA's protocol check: test_<k>'s case vs LLaRA's test.jsonl row k.
  from recjax.data.prepared import PreparedData  # noqa: E402
  ids = PreparedData.load(slots_dir).item_ids
  with open(data_dir / "test.jsonl", encoding="utf-8") as f:
    llara_rows = [json.loads(line) for line in f if line.strip()]
  row_check = compare_llara_rows(
      {c["user_id"]: ([ids[i] for i in c["history"]], c["target_item"])
       for c in all_cases}, llara_rows)

  arrays = {}
  if "sasrec" in variants:
    arrays["sasrec"] = sasrec_per_user(sasrec_dir, slots_dir,
                                       all_cases[:n_eval], args.max_history)
  for v in LM_VARIANTS:
    if v in variants:
      d = text_dir if datasets[v] == name else slots_dir
      cat = load_catalogue(d)
      texts = {iid: cat.text_of(iid) for iid in cat.ids}
      out = work / f"eval_{v}"
      arrays[v] = lm_per_user(out, datasets[v], cases[d], texts)
      check_against_eval(out, datasets[v], arrays[v])
  for v in arrays:
    if len(arrays[v]["users"]) != n_eval:
      raise AssertionError(f"{v}: {len(arrays[v]['users'])} users, "
                           f"expected {n_eval}")
  run.seconds["per_user_and_sasrec_scoring"] = round(
      time.perf_counter() - t, 1)
  users = all_cases[:n_eval]
  masks = {"llara_test": llara_users([c["user_id"] for c in users]),
           "all": np.ones(n_eval, bool)}

  summary = {v: {s: summarize(arrays[v], masks[s]) for s in SUBSETS}
             for v in variants}
  diffs = {s: {} for s in SUBSETS}
  if "rsllm" in arrays:
    for s in SUBSETS:
      mk = masks[s]
      for other in variants:
        if other == "rsllm":
          continue
        a, b = arrays["rsllm"], arrays[other]
        d = {"hr1": paired_ratio_diff(a["correct"][mk], a["valid"][mk],
                                      b["correct"][mk], b["valid"][mk])}
        for m in ("ndcg10", "recall10"):
          if m in a and m in b:
            d[m] = paired_diff({m: a[m][mk], "u": a["users"][mk]},
                               {m: b[m][mk], "u": b["users"][mk]}, m, "u")
        diffs[s][f"rsllm_minus_{other}"] = d

  def goal_of(s) -> tuple[bool | None, str]:
    """(met, the reasons in words) on subset s."""
    if not all(v in arrays for v in ("rsllm", "sasrec", "text_only")):
      return None, "not evaluable (needs sasrec, text_only and rsllm)"
    if masks[s].sum() < 2:
      return None, "not evaluable (fewer than 2 users)"
    r, sa = summary["rsllm"][s], summary["sasrec"][s]
    d = diffs[s]["rsllm_minus_text_only"]["hr1"]
    enough = r["valid_n"] >= MIN_VALID
    vs_sasrec = enough and r["hr1"] >= sa["hr1"]
    vs_text = bool(enough and d["se"] == d["se"] and d["se"] > 0 and
                   d["diff"] > 2 * d["se"])
    why = (f"RSLLM HitRatio@1 {r['hr1']:.4f} ({r['correct_n']}/"
           f"{r['valid_n']} valid) vs SASRec {sa['hr1']:.4f}: "
           f"{'>=' if r['hr1'] >= sa['hr1'] else '<'}; RSLLM - text-only "
           f"{d['diff']:+.4f} (paired se {d['se']:.4f}): "
           f"{'>' if vs_text else 'not >'} 2 se")
    if not enough:
      why += (f"; only {r['valid_n']} valid RSLLM answers (< {MIN_VALID}): "
              "its HitRatio@1 is not estimated, so neither condition counts")
    return bool(vs_sasrec and vs_text), why

  goals = {s: goal_of(s) for s in SUBSETS}

  # ------------------------------------------------------------ report
  print()
  print(f"LLaRA's test rows: {row_check['equal']} of {row_check['n']} "
        f"`test_<k>` held-out cases equal LLaRA's test.jsonl row k (history "
        f"= the previous up to {args.max_history} items, target = next)"
        + (f"; missing {row_check['missing']}" if row_check["missing"] else "")
        + (f"; mismatched e.g. {row_check['mismatched']}"
           if row_check["mismatched"] else ""))
  print(f"{args.num_negatives + 1} candidates per user (the target + "
        f"{args.num_negatives} sampled negatives, the same for every "
        "variant). HitRatio@1 = LLaRA's: the greedy answer names exactly "
        "one candidate (valid) and it is the target, over valid answers "
        "(SASRec: its top-scored candidate, always valid); NDCG@10 = the 20 "
        "candidates ranked by likelihood (SASRec: by its scores); Recall@10 "
        f"= beam {args.num_beams} over the whole catalogue trie (LM only). "
        "Mean +- standard error (HitRatio@1: delta method).")
  for s in SUBSETS:
    n = int(masks[s].sum())
    print()
    print(f"{SUBSET_LABELS[s]}: {n} users")
    print()
    print("| variant | HitRatio@1 (correct/valid) | ValidRatio | "
          "NDCG@10 (20 cands) | "
          "HitRate@1 by likelihood | Recall@10 (catalogue) |")
    print("|---|---|---|---|---|---|")
    for v in variants:
      r = summary[v][s]

      def cell(k, r=r):
        return (f"{r[k]:.4f} +- {r[k + '_se']:.4f}" if k in r else "–")
      hr = f"{cell('hr1')} ({r['correct_n']}/{r['valid_n']})"
      print(f"| {LABELS[v]} | {hr} | {cell('valid_ratio')} | "
            f"{cell('ndcg10')} | {cell('hit1_lik')} | {cell('recall10')} |")
    print(f"| LLaRA (published, Llama-2 7B) | {LLARA_PUBLISHED_HR1:.4f} | "
          "– | – | – | – |")
    if diffs[s]:
      print()
      for k, d in diffs[s].items():
        print(f"RSLLM - {LABELS[k[len('rsllm_minus_'):]]}: " + "; ".join(
            f"{m} {d[m]['diff']:+.4f} (paired se {d[m]['se']:.4f})"
            for m in d))
  print()
  for s in SUBSETS:
    g, why = goals[s]
    print(f"goal on {SUBSET_LABELS[s]} (RSLLM HitRatio@1 >= SASRec's and "
          "above the text-only model by > 2 paired standard errors): " +
          ("not evaluable" if g is None else ("met" if g else "NOT met")) +
          f" ({why})")
  print(f"LLaRA's published LastFM HitRatio@1: {LLARA_PUBLISHED_HR1} "
        "(Llama-2 7B, pretrained; here a 4M-parameter T5 from scratch)")
  print(f"stage seconds: {run.seconds}; total {run.elapsed():.0f}s")

  result = dict(summary)
  result["diffs"] = diffs
  result["goal_met"] = goals["llara_test"][0]
  result["goal"] = goals["llara_test"][1]
  result["goal_met_all_users"] = goals["all"][0]
  result["goal_all_users"] = goals["all"][1]
  result["llara_published_hr1"] = LLARA_PUBLISHED_HR1
  result["llara_rows_equal"] = row_check
  result["config"] = {"stage1_steps": args.stage1_steps,
                      "stage2_steps": args.stage2_steps,
                      "sasrec_epochs": args.sasrec_epochs,
                      "max_history": args.max_history,
                      "num_negatives": args.num_negatives,
                      "targets_length": t_len, "num_beams": args.num_beams,
                      "num_examples": args.num_examples, "seed": args.seed,
                      "variants": variants, "quick": args.quick}
  result["stage_seconds"] = run.seconds
  result["seconds"] = round(run.elapsed(), 1)
  print(json.dumps(_json_safe(result)))
  return 0


def _json_safe(x):
  """NaN (an empty subset, an undefined standard error) -> null."""
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


if __name__ == "__main__":
  sys.exit(main())
