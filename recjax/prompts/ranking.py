"""Ranking prompts: history + candidates (target + sampled negatives) -> the target.

Negatives are never in the user's full known sequence (any split) and never
the target; their number is clamped to what the catalogue leaves. Candidates
are shuffled per example. Train: `ranking_prefixes_per_user` prefixes per
user (the last one first); validation/test: one per user. With
`ranking_candidates_in_prompt=False` the prompt is retrieval's (the
candidates are only scored).
"""
from __future__ import annotations

from typing import Iterator

from recjax.data.prepared import PreparedData
from recjax.data.split import train_sequence
from recjax.prompts import common
from recjax.prompts import retrieval
from recjax.prompts.common import Example, PromptConfig

TASK = "ranking"
TEMPLATES = (
    "A user interacted with these items, in order: {history}. Which of these "
    "will the user interact with next? {candidates}",
    "History: {history}. Candidates: {candidates}. Pick the item the user is "
    "most likely to choose next.",
    "Based on the items {history}, choose the best recommendation among: "
    "{candidates}",
)


def generate(data: PreparedData, split: str, config: PromptConfig,
             seed: int = 0, *, shard: tuple[int, int] | None = None
             ) -> Iterator[Example]:
  common.check_split_name(split)
  ctx = common.context(data, config)
  rngs = common.Rngs(seed, TASK, split)
  h = config.max_history
  n_items = data.num_items

  def make(rng, hist, target: int, known) -> Example:
    negatives = common.sample_negatives(rng, n_items, known,
                                        config.num_negatives)
    cands = negatives  # already in random order
    cands.insert(int(rng.integers(len(cands) + 1)), target)
    if config.ranking_candidates_in_prompt:
      tid = common.pick_template(rng, len(TEMPLATES), config)
      inputs = TEMPLATES[tid].format(
          history=common.user_history_text(ctx, hist),
          candidates=common.history_text(ctx, cands))
    else:  # the retrieval prompt; the candidates are only scored
      tid = common.pick_template(rng, len(retrieval.TEMPLATES), config)
      inputs = retrieval.TEMPLATES[tid].format(
          history=common.user_history_text(ctx, hist))
    return common.example(inputs, ctx.targets[target], TASK, tid,
                          target_item=ctx.ids[target],
                          candidates=common.pick(ctx.ids, cands), ctx=ctx,
                          target_index=target)

  for u in common.units(data.num_users, shard):
    rng = rngs.for_unit(u)
    known = data.sequence(u)
    if split == "train":
      seq = train_sequence(data, u).tolist()
      positions = common.choose_positions(
          rng, common.train_prefixes(seq, config),
          config.ranking_prefixes_per_user)
      for t in positions:
        yield make(rng, seq[max(0, t - h):t], seq[t], known)
    else:
      case = common.held_out_case(data, split, u, h)
      if case is not None:
        yield make(rng, case.history.tolist(), case.target, known)
