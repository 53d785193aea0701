"""Baselines on the LMs' ranking candidates (the LLaRA protocol's 20).

The ranking prompts of a prepared directory show each held-out user a fixed
candidate list (the target and `num_negatives` sampled items). Scoring the
same lists with a baseline puts it beside the LMs on equal terms: its
HitRate@1 is the LLaRA protocol's HitRatio@1 for a model whose answers are
always valid. The lists are regenerated from the directory's manifest (its
prompt config and seed: prompt generation is deterministic), so nothing here
reads TFRecords.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from recjax.data.prepared import PreparedData
from recjax.infer import metrics as metrics_lib

RANKING_KS = (1, 5, 10)  # as recjax.infer.evaluation's ranking task


def ranking_cases(data: PreparedData, data_dir: str | pathlib.Path,
                  split: str) -> tuple[np.ndarray, np.ndarray] | None:
  """(targets [E], candidates [E, C]) as item indices, in user order (the
  users of `common.eval_set`), or None when the directory has no ranking
  task for `split`."""
  from recjax.prompts import PromptConfig, ranking  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(data_dir) / "tasks" / "manifest.json"
  if not path.is_file():
    return None
  manifest = json.loads(path.read_text(encoding="utf-8"))
  if split not in manifest.get("splits", {}).get("ranking", []):
    return None
  fields = {f.name for f in dataclasses.fields(PromptConfig)}
  config = PromptConfig(**{k: v for k, v in manifest["config"].items()
                           if k in fields})
  index = {item_id: n for n, item_id in enumerate(data.item_ids)}
  targets, cands = [], []
  for ex in ranking.generate(data, split, config, seed=manifest["seed"]):
    targets.append(index[ex["target_item"]])
    cands.append([index[c] for c in ex["candidates"]])
  if len({len(c) for c in cands}) > 1:  # a tiny catalogue clamps negatives
    width = max(len(c) for c in cands)
    cands = [c + [-1] * (width - len(c)) for c in cands]
  return np.asarray(targets, np.int64), np.asarray(cands, np.int64)


def candidate_metrics(user_vectors: np.ndarray, item_embeddings: np.ndarray,
                      targets: np.ndarray, candidates: np.ndarray
                     ) -> dict[str, float]:
  """hit@{1,5,10}, ndcg@{5,10}, mrr of score = user . item over each row's
  candidates (-1 = no candidate), ties counted against the target."""
  emb = np.asarray(item_embeddings, np.float64)
  scores = np.einsum("ed,ecd->ec", np.asarray(user_vectors, np.float64),
                     emb[np.maximum(candidates, 0)])
  scores = np.where(candidates >= 0, scores, -np.inf)
  where = candidates == targets[:, None]
  if not where.any(axis=1).all():
    raise ValueError("a ranking case's candidates do not hold its target")
  ranks = metrics_lib.ranks_from_scores(scores, np.argmax(where, axis=1),
                                        ties="pessimistic")
  return metrics_lib.metrics_from_ranks(ranks, ks=RANKING_KS,
                                        ndcg_ks=(5, 10))
