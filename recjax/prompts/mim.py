"""Masked Item Modeling: a sequence with items replaced by [MASK] -> those items.

Each item is masked with probability `mim_mask_prob`; at least one item is
masked and at least one stays visible. Targets list the masked items in order,
joined by "; " (`target_item` holds their ids the same way). Train: windows of
the training sequence (the most recent, then random earlier ones); validation:
the validation history plus its target (train-eval loss); test: none.
"""
from __future__ import annotations

from typing import Iterator

from recjax.data.prepared import PreparedData
from recjax.data.split import train_sequence
from recjax.prompts import common
from recjax.prompts.common import Example, PromptConfig

TASK = "mim"
MASK = "[MASK]"
TEMPLATES = (
    "A user interacted with these items, in order: {history}. Which items are "
    "masked?",
    "Some items in this history are hidden as [MASK]: {history}. Name the "
    "masked items in order.",
    "Fill in the [MASK] items of this sequence: {history}",
)


def generate(data: PreparedData, split: str, config: PromptConfig,
             seed: int = 0, *, shard: tuple[int, int] | None = None
             ) -> Iterator[Example]:
  common.check_split_name(split)
  if split == "test":
    return
  ctx = common.context(data, config)
  rngs = common.Rngs(seed, TASK, split)
  h = max(config.max_history, 2)  # one item masked, one visible

  def make(rng, window: list[int]) -> Example:
    n = len(window)
    masked = rng.random(n) < config.mim_mask_prob
    if not masked.any():
      masked[rng.integers(n)] = True
    if masked.all():
      masked[rng.integers(n)] = False
    flags = masked.tolist()
    text = "; ".join([MASK if f else ctx.mentions[i]
                      for i, f in zip(window, flags)])
    hidden = [i for i, f in zip(window, flags) if f]
    tid = common.pick_template(rng, len(TEMPLATES), config)
    return common.example(TEMPLATES[tid].format(history=text),
                          "; ".join([ctx.targets[i] for i in hidden]), TASK,
                          tid, target_item="; ".join([ctx.ids[i] for i in hidden]))

  for u in common.units(data.num_users, shard):
    rng = rngs.for_unit(u)
    if split == "train":
      seq = train_sequence(data, u).tolist()
      if len(seq) < 2:
        continue
      ends = [len(seq)]
      for _ in range(config.mim_examples_per_user - 1):
        ends.append(int(rng.integers(2, len(seq) + 1)))
      for end in ends:
        yield make(rng, seq[max(0, end - h):end])
    else:
      case = common.held_out_case(data, split, u, h - 1)
      if case is not None:
        yield make(rng, case.history.tolist() + [case.target])
