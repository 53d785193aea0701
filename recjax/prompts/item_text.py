"""ILM phase-1 records: an item's text beside the item itself.

One record per item with text: `inputs` = the item's text (title, then
description and categories, at most `ITEM_TEXT_MAX_WORDS` words), `targets` =
its title, and `slot_items` = [item + 1, neighbour + 1], where the neighbour
is an item next to it in some user's training sequence (drawn per item; 0
when the item never appears in one), the positive of ILM's item-item
contrastive loss. The item encoder reads the item's collaborative embedding,
never its text, so the text here is what it learns to align with.
"""
from __future__ import annotations

import threading
import weakref
from typing import Iterator

import numpy as np

from recjax import slots
from recjax.data import split as split_lib
from recjax.data.prepared import PreparedData
from recjax.prompts import common, mlm
from recjax.prompts.common import Example, PromptConfig

TASK = "item_text"
ITEM_TEXT_MAX_WORDS = 32
_NEIGHBOURS: dict[int, tuple] = {}
_LOCK = threading.Lock()


def neighbours(data: PreparedData) -> tuple[np.ndarray, np.ndarray]:
  """CSR (ptr [I+1], items) of each item's neighbours in training sequences.

  Both directions of every adjacent pair, duplicates kept (an often
  co-occurring neighbour is drawn more often). Cached per data object.
  """
  with _LOCK:
    hit = _NEIGHBOURS.get(id(data))
    if hit is not None and hit[0]() is data:
      return hit[1]
  left, right = [], []
  for u in range(data.num_users):
    seq = split_lib.train_sequence(data, u)
    left.append(seq[:-1])
    right.append(seq[1:])
  a = np.concatenate(left + right) if left else np.zeros(0, np.int32)
  b = np.concatenate(right + left) if left else np.zeros(0, np.int32)
  order = np.argsort(a, kind="stable")
  ptr = np.zeros(data.num_items + 1, np.int64)
  np.add.at(ptr, a + 1, 1)
  table = (np.cumsum(ptr), b[order].astype(np.int32))
  with _LOCK:
    if len(_NEIGHBOURS) > 8:
      _NEIGHBOURS.clear()
    _NEIGHBOURS[id(data)] = (weakref.ref(data), table)
  return table


def generate(data: PreparedData, split: str, config: PromptConfig,
             seed: int = 0, *, shard: tuple[int, int] | None = None
             ) -> Iterator[Example]:
  common.check_split_name(split)
  if split != "train":
    return
  del config  # the text is the item's own, whatever the prompt format
  ptr, nbrs = neighbours(data)
  rngs = common.Rngs(seed, TASK, split)
  for i in common.units(data.num_items, shard):
    text = " ".join(mlm.item_text(data.items[i]).split()[:ITEM_TEXT_MAX_WORDS])
    if not text:
      continue
    lo, hi = ptr[i], ptr[i + 1]
    neighbour = -1
    if hi > lo:
      neighbour = int(nbrs[lo + rngs.for_unit(i).integers(hi - lo)])
    ex = common.example(text, common.clean_text(data.items[i].get("title")) or
                        text, TASK, 0, target_item=str(data.items[i]["id"]))
    ex[slots.SLOT_FEATURE] = [i + 1, neighbour + 1]
    yield ex
