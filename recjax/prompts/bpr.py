"""BPR prompts: history + {positive next item, sampled negative} -> the positive.

The pair is shown in random order; the negative is never in the user's full
known sequence. Train: `bpr_pairs_per_user` prefixes per user; validation: the
held-out validation item as the positive (for train-eval loss); test: none.
"""
from __future__ import annotations

from typing import Iterator

from recjax.data.prepared import PreparedData
from recjax.data.split import train_sequence
from recjax.prompts import common
from recjax.prompts.common import Example, PromptConfig

TASK = "bpr"
TEMPLATES = (
    "A user interacted with these items, in order: {history}. Which will the "
    "user prefer: {a} or {b}?",
    "Given the history {history}, would the user rather choose {a} or {b}?",
    "User history: {history}. Of {a} and {b}, which one does the user like "
    "more?",
)


def generate(data: PreparedData, split: str, config: PromptConfig,
             seed: int = 0, *, shard: tuple[int, int] | None = None
             ) -> Iterator[Example]:
  common.check_split_name(split)
  if split == "test":
    return
  ctx = common.context(data, config)
  rngs = common.Rngs(seed, TASK, split)
  h = config.max_history

  def make(rng, hist, pos: int, known) -> Example | None:
    neg = common.sample_negatives(rng, data.num_items, known, 1)
    if not len(neg):
      return None
    pair = [pos, neg[0]]
    if rng.random() < 0.5:
      pair.reverse()
    tid = common.pick_template(rng, len(TEMPLATES), config)
    inputs = TEMPLATES[tid].format(history=common.user_history_text(ctx, hist),
                                   a=ctx.mentions[pair[0]],
                                   b=ctx.mentions[pair[1]])
    return common.example(inputs, ctx.targets[pos], TASK, tid,
                          target_item=ctx.ids[pos],
                          candidates=[ctx.ids[i] for i in pair], ctx=ctx,
                          target_index=pos)

  for u in common.units(data.num_users, shard):
    rng = rngs.for_unit(u)
    known = data.sequence(u)
    if split == "train":
      seq = train_sequence(data, u).tolist()
      for t in common.choose_positions(rng, common.train_prefixes(seq, config),
                                       config.bpr_pairs_per_user):
        ex = make(rng, seq[max(0, t - h):t], seq[t], known)
        if ex is not None:
          yield ex
    else:
      case = common.held_out_case(data, split, u, h)
      if case is not None:
        ex = make(rng, case.history.tolist(), case.target, known)
        if ex is not None:
          yield ex
