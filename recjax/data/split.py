"""Leave-one-out splits, derived from a user's chronological sequence.

The last item is the test target, the second last the validation target, and
the rest is training data. The test history includes the validation item (the
model sees everything before the target, as in SASRec and P5 evaluation); the
validation history stops before it. Users with fewer than 3 interactions have
no held-out items: all of their sequence is training data.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from recjax.data.prepared import PreparedData

SPLITS = ("train", "validation", "test")
MIN_LEN_FOR_EVAL = 3


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """One evaluation case: a user's history (capped) and the item that follows."""
  user: int  # user index (never written into prompts)
  history: np.ndarray  # item indices, oldest first, at most max_history
  history_ratings: np.ndarray  # float32, NaN where unknown
  target: int
  target_rating: float  # NaN where unknown


def check_split(split: str) -> str:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  return split


def train_sequence(data: PreparedData, user: int) -> np.ndarray:
  """The part of a user's sequence that training examples may use."""
  seq = data.sequence(user)
  return seq[:-2] if len(seq) >= MIN_LEN_FOR_EVAL else seq


def train_ratings(data: PreparedData, user: int) -> np.ndarray:
  r = data.ratings(user)
  return r[:-2] if len(r) >= MIN_LEN_FOR_EVAL else r


def held_out(data: PreparedData, split: str,
             max_history: int = 20) -> Iterator[HeldOut]:
  """Yields one case per eligible user for 'validation' or 'test'."""
  check_split(split)
  if split == "train":
    raise ValueError("held_out() is for 'validation' and 'test'; "
                     "use train_sequence() for training")
  offset = 2 if split == "validation" else 1
  for u in range(data.num_users):
    seq = data.sequence(u)
    if len(seq) < MIN_LEN_FOR_EVAL:
      continue
    ratings = data.ratings(u)
    end = len(seq) - offset
    start = max(0, end - max_history)
    yield HeldOut(user=u, history=seq[start:end],
                  history_ratings=ratings[start:end], target=int(seq[end]),
                  target_rating=float(ratings[end]))
