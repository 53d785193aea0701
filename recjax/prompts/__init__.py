"""Prompt families: PreparedData -> text-to-text examples, one module per task.

Each `TASKS[name]` is `generate(data, split, config, seed=0, *, shard=None)`,
a pure deterministic function yielding dicts with `inputs`, `targets`, `task`,
`template_id` and the evaluation metadata `target_item`, `candidates`,
`rating`. `shard=(index, count)` yields only that shard's users (or items);
the union over shards equals the unsharded output.
"""
from __future__ import annotations

from typing import Callable, Iterator

from recjax.prompts import (bpr, conversation, ie, mim, mlm, ranking, rating,
                            retrieval)
from recjax.prompts.common import ITEM_FORMATS, Example, PromptConfig

REC_TASKS = ("retrieval", "ranking", "rating")
AUX_TASKS = ("mim", "mlm", "bpr", "ie")
# Multi-turn conversational recommendation (ILM phase 2); evaluated as
# retrieval, mixed only into `<dataset>_rec_conv`.
CONVERSATION_TASKS = ("conversation",)
ALL_TASKS = REC_TASKS + AUX_TASKS + CONVERSATION_TASKS
TASKS: dict[str, Callable[..., Iterator[Example]]] = {
    "retrieval": retrieval.generate,
    "ranking": ranking.generate,
    "rating": rating.generate,
    "mim": mim.generate,
    "mlm": mlm.generate,
    "bpr": bpr.generate,
    "ie": ie.generate,
    "conversation": conversation.generate,
}
TEMPLATES = {
    "retrieval": retrieval.TEMPLATES, "ranking": ranking.TEMPLATES,
    "rating": rating.TEMPLATES, "mim": mim.TEMPLATES, "mlm": mlm.TEMPLATES,
    "bpr": bpr.TEMPLATES, "ie": ie.TEMPLATES,
    "conversation": conversation.TEMPLATES,
}
# Splits a task can produce (auxiliary tasks: train, plus validation for
# train-eval loss).
TASK_SPLITS = {t: ("train", "validation", "test") for t in REC_TASKS}
TASK_SPLITS.update({t: ("train", "validation") for t in AUX_TASKS})
TASK_SPLITS.update({t: ("train", "validation", "test")
                    for t in CONVERSATION_TASKS})


def generate(task: str, data, split: str, config: PromptConfig | None = None,
             seed: int = 0, *, shard: tuple[int, int] | None = None
             ) -> Iterator[Example]:
  """`TASKS[task](...)` with a helpful error for unknown names."""
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; expected one of {ALL_TASKS}")
  return TASKS[task](data, split, config or PromptConfig(), seed, shard=shard)


__all__ = ["TASKS", "REC_TASKS", "AUX_TASKS", "CONVERSATION_TASKS",
           "ALL_TASKS", "TASK_SPLITS", "TEMPLATES", "PromptConfig",
           "ITEM_FORMATS", "generate"]
