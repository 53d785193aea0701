"""Item-embedding prompts: item id -> title and title -> item id.

Templates 0-2 ask for the title of an id, 3-5 for the id of a title. Each item
with a title yields both directions (`ie_directions='both'`) or one drawn at
random. Validation repeats the catalogue with fresh draws (train-eval loss).
"""
from __future__ import annotations

from typing import Iterator

from recjax.data.prepared import PreparedData
from recjax.prompts import common
from recjax.prompts.common import Example, PromptConfig

TASK = "ie"
ID_TO_TITLE = (
    "What is the title of {id}?",
    "Item {id} is called what?",
    "Give the name of the item with id {id}.",
)
TITLE_TO_ID = (
    'Which item is "{title}"?',
    'What is the id of the item titled "{title}"?',
    'Name the item id of "{title}".',
)
TEMPLATES = ID_TO_TITLE + TITLE_TO_ID


def generate(data: PreparedData, split: str, config: PromptConfig,
             seed: int = 0, *, shard: tuple[int, int] | None = None
             ) -> Iterator[Example]:
  common.check_split_name(split)
  if split == "test":
    return
  ctx = common.context(data, config)
  rngs = common.Rngs(seed, TASK, split)
  n = len(ID_TO_TITLE)
  for i in common.units(data.num_items, shard):
    title, item_id = ctx.titles[i], ctx.ids[i]
    if not title:
      continue
    rng = rngs.for_unit(i)
    directions = (0, 1) if config.ie_directions == "both" else (
        int(rng.integers(2)),)
    for d in directions:
      tid = common.pick_template(rng, n, config) if config.template is None \
          else config.template % n
      if d == 0:
        yield common.example(ID_TO_TITLE[tid].format(id=item_id), title, TASK,
                             tid, target_item=item_id)
      else:
        yield common.example(TITLE_TO_ID[tid].format(title=title), item_id,
                             TASK, n + tid, target_item=item_id)
