"""Rating prompts: history with ratings -> the rating of a given item ("4").

Only when the data has ratings; targets with an unknown rating are skipped and
unknown history ratings are left out of the text.
"""
from __future__ import annotations

import math
from typing import Iterator

from recjax.data.prepared import PreparedData
from recjax.data.split import train_ratings, train_sequence
from recjax.prompts import common
from recjax.prompts.common import Example, PromptConfig

TASK = "rating"
TEMPLATES = (
    "A user rated: {history}. How will the user rate {item} ({lo} to {hi})?",
    "Ratings given by a user so far: {history}. Predict the rating "
    "({lo}-{hi}) of {item}.",
    "Here are a user's ratings: {history}. What rating from {lo} to {hi} "
    "would the user give {item}?",
)


def generate(data: PreparedData, split: str, config: PromptConfig,
             seed: int = 0, *, shard: tuple[int, int] | None = None
             ) -> Iterator[Example]:
  common.check_split_name(split)
  if not data.has_ratings:
    return
  ctx = common.context(data, config)
  rngs = common.Rngs(seed, TASK, split)
  h = config.max_history
  lo, hi = ctx.rating_scale
  m = ctx.mentions

  def rated(items, ratings) -> list[str]:
    return [m[i] if math.isnan(r) else f"{m[i]}: {common.format_rating(r)}"
            for i, r in zip(items, ratings)]

  def make(rng, text: str, target: int, rating: float) -> Example:
    tid = common.pick_template(rng, len(TEMPLATES), config)
    inputs = TEMPLATES[tid].format(history=text + ctx.user_suffix,
                                   item=m[target], lo=lo, hi=hi)
    return common.example(inputs, common.format_rating(rating), TASK, tid,
                          target_item=ctx.ids[target], rating=rating,
                          ctx=ctx, target_index=target)

  for u in common.units(data.num_users, shard):
    rng = rngs.for_unit(u)
    if split == "train":
      seq = train_sequence(data, u).tolist()
      rts = train_ratings(data, u).tolist()
      positions = common.train_prefixes(seq, config)
      if not config.rating_all_prefixes:
        positions = positions[-1:]
      texts = rated(seq, rts)  # each "title: rating" formatted once
      for t in positions:
        if not math.isnan(rts[t]):
          yield make(rng, "; ".join(texts[max(0, t - h):t]), seq[t], rts[t])
    else:
      case = common.held_out_case(data, split, u, h)
      if case is None or math.isnan(case.target_rating):
        continue
      text = "; ".join(rated(case.history.tolist(),
                             case.history_ratings.tolist()))
      yield make(rng, text, case.target, case.target_rating)
