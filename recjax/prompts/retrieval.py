"""Retrieval prompts: a user's history (titles, no user id) -> the next item.

Train: one example per prefix of the user's training sequence (or only the
last, `retrieval_all_prefixes=False`). Validation/test: one example per user,
the leave-one-out target of `recjax.data.split`.
"""
from __future__ import annotations

from typing import Iterator

from recjax.data.prepared import PreparedData
from recjax.data.split import train_sequence
from recjax.prompts import common
from recjax.prompts.common import Example, PromptConfig

TASK = "retrieval"
TEMPLATES = (
    "A user interacted with these items, in order: {history}. "
    "What will the user interact with next?",
    "Here is a user's history, oldest first: {history}. Predict the next item.",
    "Given this sequence of items: {history}. Which item comes next?",
    "The user recently chose {history}. Recommend the next item for this user.",
)


def generate(data: PreparedData, split: str, config: PromptConfig,
             seed: int = 0, *, shard: tuple[int, int] | None = None
             ) -> Iterator[Example]:
  common.check_split_name(split)
  ctx = common.context(data, config)
  rngs = common.Rngs(seed, TASK, split)
  h = config.max_history

  def make(template: int, hist_text: str, target: int) -> Example:
    return common.example(TEMPLATES[template].format(history=hist_text),
                          ctx.targets[target], TASK, template,
                          target_item=ctx.ids[target], ctx=ctx,
                          target_index=target)

  for u in common.units(data.num_users, shard):
    rng = rngs.for_unit(u)
    if split == "train":
      seq = train_sequence(data, u).tolist()
      positions = common.train_prefixes(seq, config)
      if not config.retrieval_all_prefixes:
        positions = positions[-1:]
      if not len(positions):
        continue
      if config.template is None:
        templates = rng.integers(len(TEMPLATES), size=len(positions)).tolist()
      else:
        templates = [common.pick_template(rng, len(TEMPLATES), config)] * len(
            positions)
      ms = common.pick(ctx.mentions, seq)  # each mention formatted once
      for t, tid in zip(positions, templates):
        yield make(tid, "; ".join(ms[max(0, t - h):t]) + ctx.user_suffix,
                   seq[t])
    else:
      case = common.held_out_case(data, split, u, h)
      if case is None:
        continue
      tid = common.pick_template(rng, len(TEMPLATES), config)
      yield make(tid, common.user_history_text(ctx, case.history.tolist()),
                 case.target)
