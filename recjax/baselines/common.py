"""Shared evaluation protocol, early stopping and result type for the baselines.

Protocol (RecBole `split: {'LS': 'valid_and_test'}, order: TO, mode: full`):
each user's chronological sequence gives train = all but the last two items,
validation target = second last, test target = last (users with fewer than 3
interactions are training-only, as in `recjax.data.split`). Every item of the
catalogue is ranked. The history used to score a user is everything before
the target (validation: the train sequence; test: train + validation item);
with `mask_history` the history's items are removed from the ranking, the
target itself never is (RecBole: `history = used_ids - positive_items`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any, Callable

import numpy as np

from recjax.data import split as split_lib
from recjax.data.prepared import PreparedData
from recjax.infer import metrics as metrics_lib

EVAL_SPLITS = ("validation", "test")
VALID_METRIC = "ndcg@10"
EVAL_KS = (1, 5, 10, 20)


@dataclasses.dataclass
class EvalSet:
  """Held-out cases of one split, as arrays (users with >= 3 interactions)."""
  split: str
  users: np.ndarray  # int64 [E] user indices
  targets: np.ndarray  # int64 [E] item indices
  histories: list[np.ndarray]  # full history before the target, oldest first

  def __len__(self) -> int:
    return len(self.users)


def eval_set(data: PreparedData, split: str) -> EvalSet:
  split_lib.check_split(split)
  if split == "train":
    raise ValueError("eval_set() is for 'validation' and 'test'")
  offset = 2 if split == "validation" else 1
  users, targets, hist = [], [], []
  for u in range(data.num_users):
    seq = data.sequence(u)
    if len(seq) < split_lib.MIN_LEN_FOR_EVAL:
      continue
    end = len(seq) - offset
    users.append(u)
    targets.append(int(seq[end]))
    hist.append(np.asarray(seq[:end], np.int64))
  return EvalSet(split, np.asarray(users, np.int64),
                 np.asarray(targets, np.int64), hist)


def train_sequences(data: PreparedData) -> list[np.ndarray]:
  return [np.asarray(split_lib.train_sequence(data, u), np.int64)
          for u in range(data.num_users)]


def evaluate(score_fn: Callable[[np.ndarray], np.ndarray], es: EvalSet, *,
             mask_history: bool = True, ties: str = "pessimistic",
             batch_size: int = 1024, both: bool = False) -> dict[str, Any]:
  """Full-catalogue metrics of `score_fn(rows) -> scores [len(rows), I]`.

  `rows` index into `es`. With `both`, also returns the metrics under the
  other masking choice, keyed `masked` / `unmasked`.
  """
  ranks_m, ranks_u = [], []
  for start in range(0, len(es), batch_size):
    rows = np.arange(start, min(start + batch_size, len(es)))
    scores = np.asarray(score_fn(rows), np.float64)
    excl = [es.histories[r] for r in rows]
    tg = es.targets[rows]
    if mask_history or both:
      ranks_m.append(metrics_lib.ranks_from_scores(scores, tg, excl, ties))
    if not mask_history or both:
      ranks_u.append(metrics_lib.ranks_from_scores(scores, tg, None, ties))
  cat = lambda r: np.concatenate(r) if r else np.zeros(0, np.int64)
  out: dict[str, Any] = {}
  if mask_history or both:
    out["masked"] = metrics_lib.metrics_from_ranks(cat(ranks_m), EVAL_KS)
  if not mask_history or both:
    out["unmasked"] = metrics_lib.metrics_from_ranks(cat(ranks_u), EVAL_KS)
  out["primary"] = out["masked" if mask_history else "unmasked"]
  return out


class EarlyStopper:
  """RecBole 1.2.1's early stopping (`recbole.utils.early_stopping`).

  RecBole rounds every metric to `metric_decimal_place` (4) digits and counts
  a value equal to the best as an improvement: it resets the count and the
  newer epoch becomes the best. Training stops after more than `patience`
  consecutive evaluations below the best.
  """

  def __init__(self, patience: int, decimals: int | None = 4):
    if patience < 0:
      raise ValueError(f"patience must be >= 0, got {patience}")
    self.patience = patience
    self.decimals = decimals
    self.best = -np.inf
    self.best_epoch = -1
    self.bad = 0

  def update(self, value: float, epoch: int) -> tuple[bool, bool]:
    """Returns (improved, stop)."""
    if self.decimals is not None:
      value = round(float(value), self.decimals)
    if value >= self.best:
      self.best, self.best_epoch, self.bad = value, epoch, 0
      return True, False
    self.bad += 1
    return False, self.bad > self.patience


@dataclasses.dataclass
class FitResult:
  """What `fit_with_early_stopping` hands back to a trainer."""
  best_state: Any  # the trainer's state after the best validation epoch
  history: list[dict[str, float]]  # per epoch: epoch, loss, valid, seconds
  epochs_run: int
  best_epoch: int  # -1 when no epoch ran


def fit_with_early_stopping(
    model: str, state: Any,
    train_epoch: Callable[[Any, int], tuple[Any, float]],
    validate: Callable[[Any], float], *, epochs: int, patience: int,
    log: Callable[[str], None] | None) -> FitResult:
  """The epoch loop every trained baseline shares (RecBole's protocol).

  `train_epoch(state, epoch) -> (state, mean_loss)` runs one epoch;
  `validate(state)` returns the validation `VALID_METRIC`. After each epoch
  the metric is logged and recorded; the state of the best epoch (ties at 4
  decimals go to the later epoch, see `EarlyStopper`) is kept, and training
  stops after more than `patience` epochs below it. `state` is opaque (e.g.
  `(params, opt_state)`).
  """
  stopper = EarlyStopper(patience)
  best_state, history = state, []
  epoch = -1
  for epoch in range(epochs):
    t0 = Timer()
    state, mean_loss = train_epoch(state, epoch)
    valid = validate(state)
    history.append({"epoch": epoch, "loss": mean_loss, "valid": valid,
                    "seconds": t0()})
    progress(model, epoch, mean_loss, valid, t0(), log)
    improved, stop = stopper.update(valid, epoch)
    if improved:
      best_state = state
    if stop:
      break
  return FitResult(best_state, history, epoch + 1, stopper.best_epoch)


def final_metrics(evaluate_split: Callable[[str], dict[str, Any]]
                  ) -> dict[str, Any]:
  """Metrics of every split in `EVAL_SPLITS`, in the layout metrics.json keeps.

  `evaluate_split(split)` returns `evaluate(..., both=True)`. The result maps
  `validation` / `test` to the primary masking choice and
  `{split}_masked` / `{split}_unmasked` to both variants.
  """
  metrics: dict[str, Any] = {}
  for split in EVAL_SPLITS:
    res = evaluate_split(split)
    metrics[split] = res["primary"]
    metrics[f"{split}_masked"] = res["masked"]
    metrics[f"{split}_unmasked"] = res["unmasked"]
  return metrics


def item_checksum(item_ids: list[str]) -> str:
  """sha256 of the item ids in index order, newline-joined (catalogue identity)."""
  h = hashlib.sha256()
  h.update("\n".join(item_ids).encode("utf-8"))
  return "sha256:" + h.hexdigest()


def progress(model: str, epoch: int, loss: float, valid: float, seconds: float,
             log: Callable[[str], None] | None) -> None:
  if log is not None:
    log(f"[{model}] epoch {epoch:3d}  loss {loss:.4f}  "
        f"valid {VALID_METRIC} {valid:.4f}  {seconds:.1f}s")


@dataclasses.dataclass
class BaselineResult:
  """Everything `cli.run_baseline` writes."""
  model: str
  hparams: dict[str, Any]
  metrics: dict[str, Any]  # validation / test (+ masking variants)
  history: list[dict[str, float]]  # per epoch: loss, valid metric, seconds
  epochs_run: int
  best_epoch: int | None
  item_embeddings: np.ndarray  # float32 [num_items, dim]
  # split -> (user indices [E], embeddings [E, dim]) scored against items.
  user_embeddings: dict[str, tuple[np.ndarray, np.ndarray]]
  seconds: float = 0.0
  # The whole trained model, for methods that run it (RSLLM's user slot runs
  # SASRec over each prompt's history): (config dict, params pytree).
  model_state: tuple[dict[str, Any], Any] | None = None


class Timer:
  def __init__(self):
    self.t0 = time.perf_counter()

  def __call__(self) -> float:
    return time.perf_counter() - self.t0
