"""Recommendation metrics in pure numpy, usable directly and as seqio metric fns.

Three families:

* Ranked lists (generative retrieval, top-K from a ranker): `ranking_metrics`
  takes one target id and one ranked list of predicted ids per example.
  Lists are deduplicated keeping the first occurrence, so a model that repeats
  an id cannot push the target down (or be credited twice). With one relevant
  item, Recall@K == HitRate@K, NDCG@K = 1/log2(rank+1) if rank <= K, and
  MRR = 1/rank (0 if absent). `retrieval_metric_fn` wraps it in seqio's
  `metric_fn(targets, predictions) -> dict` shape.
* Score matrices (classical recommenders, full-catalogue ranking):
  `rank_metrics_from_scores` computes every user's rank in one vectorised pass,
  with an explicit tie policy (see `TIES`).
* Generation checks: `valid_ratio`, the LLaRA protocol (`llara_metrics`), and
  rating RMSE/MAE from decoded text (`rating_metrics`) or from the expectation
  over the rating tokens' scores (`rating_metrics_from_token_scores`).

All metric dicts hold plain Python floats so they serialise to JSON as-is.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10, 20)
NDCG_KS = (5, 10, 20)
# Tie policies for score-based ranks (an item tied with the target):
#   pessimistic: every tied item ranks above the target (rank = #{s >= s_t});
#                a constant scorer gets no credit. The default.
#   optimistic:  the target ranks above every tied item (rank = 1 + #{s > s_t}).
#   index:       ties are broken by item index, lower index first (a stable
#                descending sort); deterministic and what a stable argsort gives.
# RecBole ranks with torch.topk over the full score row, whose order among equal
# scores is unspecified; for trained float models ties are rare, for Pop
# (integer counts) they only affect rarely-seen items far below the top 20.
TIES = ("pessimistic", "optimistic", "index")


# --------------------------------------------------------------------------
# Ranked lists
# --------------------------------------------------------------------------
def dedupe(ranked: Iterable[Hashable]) -> list[Hashable]:
  """Drops repeated ids, keeping each id's first (best) position."""
  seen = set()
  out = []
  for x in ranked:
    if x not in seen:
      seen.add(x)
      out.append(x)
  return out


def rank_of(target: Hashable, ranked: Iterable[Hashable]) -> int:
  """1-based rank of `target` in the deduplicated list; 0 if absent."""
  for i, x in enumerate(dedupe(ranked)):
    if x == target:
      return i + 1
  return 0


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS,
                       ndcg_ks: Sequence[int] | None = None,
                       mrr_ks: Sequence[int] = ()) -> dict[str, float]:
  """Averages per-example 1-based ranks (0 = absent) into named metrics.

  Keys: `recall@K` and `hit@K` (equal with one relevant item), `ndcg@K`,
  `mrr`, `mrr@K`, and `count` (number of examples).
  """
  ranks = np.asarray(ranks, np.int64).reshape(-1)
  ndcg_ks = tuple(k for k in ks if k > 1) if ndcg_ks is None else ndcg_ks
  n = len(ranks)
  out: dict[str, float] = {"count": float(n)}
  if n == 0:
    return out
  found = ranks > 0
  safe = np.where(found, ranks, 1)
  gain = np.where(found, 1.0 / np.log2(safe + 1.0), 0.0)
  rr = np.where(found, 1.0 / safe, 0.0)
  for k in ks:
    hit = found & (ranks <= k)
    out[f"recall@{k}"] = float(hit.mean())
    out[f"hit@{k}"] = out[f"recall@{k}"]
  for k in ndcg_ks:
    out[f"ndcg@{k}"] = float(np.where(found & (ranks <= k), gain, 0.0).mean())
  out["mrr"] = float(rr.mean())
  for k in mrr_ks:
    out[f"mrr@{k}"] = float(np.where(found & (ranks <= k), rr, 0.0).mean())
  return out


def ranking_metrics(targets: Sequence[Hashable],
                    predictions: Sequence[Sequence[Hashable]],
                    ks: Sequence[int] = DEFAULT_KS,
                    ndcg_ks: Sequence[int] = NDCG_KS,
                    mrr_ks: Sequence[int] = (5, 10, 20)) -> dict[str, float]:
  """Recall/HitRate@K, NDCG@K, MRR(@K) from ranked prediction lists."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
  ranks = np.array([rank_of(t, p) for t, p in zip(targets, predictions)],
                   np.int64)
  return metrics_from_ranks(ranks, ks, ndcg_ks, mrr_ks)


def split_items(text: Any, sep: str = ";") -> list[str]:
  """A generation or target as a list of stripped item ids.

  Accepts a string ("item_1; item_7"), a sequence of strings (beam outputs),
  or a mapping holding `target_item`/`prediction`.
  """
  if isinstance(text, Mapping):
    for key in ("target_item", "prediction", "output", "targets"):
      if key in text:
        return split_items(text[key], sep)
    raise ValueError(f"cannot find an item id in {sorted(text)}")
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  if isinstance(text, str):
    return [s.strip() for s in text.split(sep) if s.strip()]
  out = []
  for x in text:
    out.extend(split_items(x, sep))
  return out


def retrieval_metric_fn(targets: Sequence[Any], predictions: Sequence[Any],
                        sep: str = ";") -> dict[str, float]:
  """seqio metric fn: the first target id vs. the ranked predicted ids."""
  tgt = [split_items(t, sep)[0] if split_items(t, sep) else "" for t in targets]
  preds = [split_items(p, sep) for p in predictions]
  return ranking_metrics(tgt, preds)


# --------------------------------------------------------------------------
# Score matrices
# --------------------------------------------------------------------------
def ranks_from_scores(scores: np.ndarray, targets: np.ndarray,
                      exclude: np.ndarray | Sequence[Sequence[int]] | None = None,
                      ties: str = "pessimistic") -> np.ndarray:
  """1-based rank of each row's target among the non-excluded items.

  Args:
    scores: float [U, I], higher is better.
    targets: int [U], item index per row.
    exclude: bool mask [U, I], or per-row lists of item indices to drop from
      the ranking (a user's history). The target itself is never excluded.
    ties: one of `TIES`.

  Returns:
    int64 [U]. Rows whose target score is NaN get rank 0 (counted as a miss).
  """
  if ties not in TIES:
    raise ValueError(f"ties={ties!r}; expected one of {TIES}")
  scores = np.array(scores, np.float64, copy=True)
  targets = np.asarray(targets, np.int64)
  u, n_items = scores.shape
  if targets.shape != (u,):
    raise ValueError(f"targets shape {targets.shape}, expected ({u},)")
  if exclude is not None:
    if isinstance(exclude, np.ndarray) and exclude.dtype == bool:
      if exclude.shape != scores.shape:
        raise ValueError(f"exclude mask {exclude.shape} != scores {scores.shape}")
      mask = exclude.copy()
    else:
      mask = np.zeros(scores.shape, bool)
      for r, items in enumerate(exclude):
        items = np.asarray(items, np.int64)
        if items.size:
          mask[r, items] = True
    mask[np.arange(u), targets] = False
    scores[mask] = -np.inf
  rows = np.arange(u)
  t_score = scores[rows, targets]
  higher = (scores > t_score[:, None]).sum(1)
  if ties == "optimistic":
    rank = higher + 1
  else:
    tied = (scores == t_score[:, None])
    if ties == "pessimistic":
      rank = higher + tied.sum(1)
    else:  # index
      before = np.arange(n_items)[None, :] < targets[:, None]
      rank = higher + (tied & before).sum(1) + 1
  rank = np.where(np.isnan(t_score), 0, rank)
  return rank.astype(np.int64)


def top_k(scores: np.ndarray, k: int,
          exclude: np.ndarray | Sequence[Sequence[int]] | None = None
          ) -> np.ndarray:
  """Item indices [U, k] of the k best non-excluded items, best first.

  Ties are broken by item index (lower first, a stable sort). Rows with fewer
  than k non-excluded items are padded with -1.
  """
  scores = np.array(scores, np.float64, copy=True)
  if exclude is not None:
    if isinstance(exclude, np.ndarray) and exclude.dtype == bool:
      scores[exclude] = -np.inf
    else:
      for r, items in enumerate(exclude):
        items = np.asarray(items, np.int64)
        if items.size:
          scores[r, items] = -np.inf
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  picked = np.take_along_axis(scores, order, axis=1)
  return np.where(np.isneginf(picked), -1, order)


def rank_metrics_from_scores(scores: np.ndarray, targets: np.ndarray,
                             exclude: np.ndarray | Sequence[Sequence[int]] | None = None,
                             ks: Sequence[int] = DEFAULT_KS,
                             ties: str = "pessimistic") -> dict[str, float]:
  """Full-catalogue Recall/NDCG@K and MRR from a score matrix (see ranks_from_scores)."""
  ranks = ranks_from_scores(scores, targets, exclude, ties)
  return metrics_from_ranks(ranks, ks)


def candidate_rank_metric_fn(targets: Sequence[Any],
                             scores: Sequence[float]) -> dict[str, float]:
  """seqio score metric fn for candidate ranking by per-candidate log-likelihood.

  `targets` are `(example_index, is_correct)` pairs, one per scored
  (example, candidate) input, as seqio's rank-classification preprocessing
  emits them; `scores` the matching log-likelihoods. Ties are pessimistic.
  """
  groups: dict[Any, list[tuple[float, bool]]] = {}
  for t, s in zip(targets, scores):
    idx, correct = t[0], bool(t[1])
    groups.setdefault(idx, []).append((float(s), correct))
  ranks = []
  for cands in groups.values():
    pos = [s for s, c in cands if c]
    if len(pos) != 1:
      raise ValueError(f"an example has {len(pos)} correct candidates, expected 1")
    ranks.append(sum(1 for s, _ in cands if s >= pos[0]))
  return metrics_from_ranks(np.array(ranks), ks=(1, 5, 10), ndcg_ks=(5, 10))


# --------------------------------------------------------------------------
# Generation validity and the LLaRA protocol
# --------------------------------------------------------------------------
def valid_ratio(predictions: Sequence[Any], catalogue: Iterable[str],
                sep: str = ";", first_only: bool = True) -> float:
  """Fraction of generated ids that are real catalogue ids.

  With `first_only` each prediction counts once (its first id, as for
  greedy/top-1 generation); otherwise every id of every list counts.
  An empty generation is invalid.
  """
  cat = catalogue if isinstance(catalogue, (set, frozenset)) else set(catalogue)
  valid = total = 0
  for p in predictions:
    ids = split_items(p, sep)
    if first_only:
      total += 1
      valid += bool(ids) and ids[0] in cat
    else:
      total += len(ids)
      valid += sum(i in cat for i in ids)
  return float(valid / total) if total else 0.0


def llara_metrics(targets: Sequence[str], predictions: Sequence[str],
                  candidates: Sequence[Sequence[str]]) -> dict[str, float]:
  """LLaRA's HitRatio@1 and ValidRatio (20-candidate next-item prediction).

  As LLaRA's `calculate_hr1`: generation, target and candidates are
  lower-cased and stripped; a generation is *valid* when exactly one candidate
  name occurs in it as a substring; HitRatio@1 = correct / valid (computed over
  valid outputs only, 0 if none is valid); ValidRatio = valid / total.
  `hit@1_all` = correct / total is added for comparison with other papers.
  """
  correct = valid = 0
  for real, gen, cans in zip(targets, predictions, candidates):
    gen = str(gen).strip().lower()
    real = str(real).strip().lower()
    found = [c for c in (str(c).strip().lower() for c in cans) if c in gen]
    if len(found) == 1:
      valid += 1
      correct += real == found[0]
  total = len(targets)
  return {
      "hit_ratio@1": float(correct / valid) if valid else 0.0,
      "valid_ratio": float(valid / total) if total else 0.0,
      "hit@1_all": float(correct / total) if total else 0.0,
      "count": float(total),
  }


# --------------------------------------------------------------------------
# Ratings
# --------------------------------------------------------------------------
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def parse_rating(text: Any) -> float | None:
  """The first number in a decoded rating ("4", " 4.5 stars"); None if absent."""
  if isinstance(text, (int, float, np.floating, np.integer)):
    v = float(text)
    return v if math.isfinite(v) else None
  if isinstance(text, bytes):
    text = text.decode("utf-8", "replace")
  m = _NUMBER.search(str(text))
  return float(m.group()) if m else None


def _rmse_mae(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
  if not len(y):
    return float("nan"), float("nan")
  d = p - y
  return float(np.sqrt(np.mean(d * d))), float(np.mean(np.abs(d)))


def rating_metrics(targets: Sequence[Any], predictions: Sequence[Any]
                   ) -> dict[str, float]:
  """RMSE/MAE of decoded ratings; unparseable outputs are counted, not scored.

  RMSE/MAE are over the parseable predictions only; `invalid` is the number
  of unparseable ones and `valid_ratio` the parseable fraction, so a model
  cannot look better by failing to answer without it showing.
  """
  ys, ps = [], []
  invalid = 0
  for t, p in zip(targets, predictions):
    y = parse_rating(t)
    if y is None:
      raise ValueError(f"target rating {t!r} is not a number")
    v = parse_rating(p)
    if v is None:
      invalid += 1
      continue
    ys.append(y)
    ps.append(v)
  rmse, mae = _rmse_mae(np.array(ys), np.array(ps))
  n = len(targets)
  return {"rmse": rmse, "mae": mae, "invalid": float(invalid),
          "valid_ratio": float((n - invalid) / n) if n else 0.0,
          "count": float(n)}


def expected_rating(token_log_probs: np.ndarray,
                    values: Sequence[float] = (1, 2, 3, 4, 5)) -> np.ndarray:
  """Softmax over the rating tokens' scores, then the expected rating [N]."""
  lp = np.asarray(token_log_probs, np.float64)
  if lp.ndim != 2 or lp.shape[1] != len(values):
    raise ValueError(f"scores shape {lp.shape}, expected [N, {len(values)}]")
  lp = lp - lp.max(1, keepdims=True)
  p = np.exp(lp)
  p /= p.sum(1, keepdims=True)
  return p @ np.asarray(values, np.float64)


def rating_metrics_from_token_scores(targets: Sequence[Any],
                                     scores: Sequence[Sequence[float]]
                                     ) -> dict[str, float]:
  """seqio score metric fn: RMSE/MAE of the expected rating.

  `scores[n]` holds the log-probabilities (or any logits) of the tokens
  "1".."5" at the rating position of example n.
  """
  y = np.array([parse_rating(t) for t in targets], np.float64)
  p = expected_rating(np.asarray(scores))
  rmse, mae = _rmse_mae(y, p)
  return {"rmse": rmse, "mae": mae, "count": float(len(y))}


def as_seqio_metric(fn: Callable[..., dict[str, float]], **kwargs
                    ) -> Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]:
  """Binds keyword arguments so `fn` has seqio's (targets, predictions) shape."""
  def metric_fn(targets, predictions):
    return fn(targets, predictions, **kwargs)
  metric_fn.__name__ = getattr(fn, "__name__", "metric_fn")
  return metric_fn


def valid_ratio_metric(targets: Sequence[Any], predictions: Sequence[Any], *,
                       catalogue: Iterable[str], sep: str = ";"
                       ) -> dict[str, float]:
  """seqio-shaped `valid_ratio`; bind `catalogue` with `as_seqio_metric`."""
  del targets
  return {"valid_ratio": valid_ratio(predictions, catalogue, sep)}
