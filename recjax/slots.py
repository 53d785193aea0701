"""The one slot mechanism shared by ILM and RSLLM.

A prompt marks each item mention that gets embeddings with `SLOT_MARKER`; the
record carries the catalogue indices of the slotted items, in text order, as
the int feature `slot_items` (index + 1, so 0 stays SeqIO's padding). The
SeqIO task tokenizes each marker to `SLOT_TOKEN_ID` and repeats it once per
soft token of the item; the feature converter passes `slot_items` into the
batch; the model replaces the embeddings at the slot positions (n-th slot
token of a row -> soft token n % K of item n // K) before the LM reads them.

`SLOT_TOKEN_ID` lies outside every vocabulary, so a slot can never be
confused with a real token, and it is non-zero, so padding masks (token > 0)
count it as text. Nothing below the model ever embeds it: the model swaps it
for a placeholder id first.

This module is dependency-free so every layer (prompts, SeqIO tasks, models,
inference) can share the constants.
"""
from __future__ import annotations

import dataclasses
import re

SLOT_MARKER = "<item_slot>"
# RSLLM's user slot: a prompt writes `USER_MARKER` after the history; it
# becomes a plain slot whose `slot_items` entry is `USER_SLOT_ITEM` (above
# every catalogue index + 1), and the slot module fills it from the items
# slotted before it in the row (the history): SASRec's sequence state.
USER_MARKER = "<user_slot>"
USER_SLOT_ITEM = 2**30
SLOT_TOKEN_ID = 2**31 - 1
SLOT_FEATURE = "slot_items"
# Prompts write `<item_slot:INDEX>`; `strip_slot_indices` turns that into the
# plain marker plus the `slot_items` feature when the example is built.
_INDEXED_MARKER = re.compile(r"<item_slot:(\d+)>|<user_slot>")
SLOT_MODES = ("none", "replace", "append")


@dataclasses.dataclass(frozen=True)
class SlotTable:
  """What a slot module can fill: catalogue items 1..num_items (index + 1)
  and, with `user_slot`, RSLLM's user slot. `catalogue` names where the
  table's rows came from (the prepared directory) for the refusal."""
  num_items: int
  user_slot: bool = False
  catalogue: str = ""

  def refusal(self, where: str) -> str:
    source = f" (built from {self.catalogue})" if self.catalogue else ""
    user = " or the user slot" if self.user_slot else ""
    return (f"{where}: an example names a slot item outside the table of "
            f"the slot module{source}, which holds items 1..{self.num_items}"
            f"{user}: its task files were written for another catalogue. "
            "Train on tasks prepared from the same directory as the slot "
            "module (recjax prepare), or point the slot module at the "
            "directory the tasks came from.")


def indexed_marker(index: int) -> str:
  """The marker for catalogue item `index` (0-based) as prompts write it."""
  return f"<item_slot:{int(index)}>"


def strip_slot_indices(text: str) -> tuple[str, list[int]]:
  """(text with plain markers, slot_items = [index + 1 for each marker];
  USER_SLOT_ITEM for a user marker])."""
  if "<item_slot:" not in text and USER_MARKER not in text:
    return text, []  # the common case: no slots, no regex
  items = [int(m) + 1 if m else USER_SLOT_ITEM
           for m in _INDEXED_MARKER.findall(text)]
  return _INDEXED_MARKER.sub(SLOT_MARKER, text), items
