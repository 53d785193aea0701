"""Prints examples of a registered Task or Mixture, decoded back from token ids.

Decoding the tokenized `inputs`/`targets` (not the stored strings) shows what
the model will actually see and proves that tokenization round-trips.
Used by `recjax show --task NAME --split SPLIT -n 5`.
"""
from __future__ import annotations

import sys
from typing import TextIO

import seqio

from recjax import slots


def show_examples(task_or_mixture: str, split: str, n: int = 5,
                  out: TextIO = sys.stdout, *, seed: int = 0) -> list[dict]:
  """Prints and returns `n` decoded examples of `task_or_mixture`/`split`."""
  provider = seqio.get_mixture_or_task(task_or_mixture)
  if isinstance(provider, seqio.Mixture):  # shuffled, so all tasks show up
    ds = provider.get_dataset(
        sequence_length=None, split=split, shuffle=True, seed=seed,
        passthrough_features=["task", "template_id", "target_item"])
  else:
    ds = provider.get_dataset(sequence_length=None, split=split,
                              shuffle=False, seed=seed)
  feats = provider.output_features
  shown = []
  for k, ex in enumerate(ds.take(n).as_numpy_iterator()):
    row = {key: _decode(feats[key].vocabulary, ex[key].tolist())
           for key in ("inputs", "targets")}
    row.update(inputs_tokens=len(ex["inputs"]), targets_tokens=len(ex["targets"]))
    for key in ("task", "template_id", "target_item"):
      if key in ex:
        v = ex[key]
        row[key] = v.decode() if isinstance(v, bytes) else int(v)
    if "candidates" in ex and len(ex["candidates"]):
      row["candidates"] = [c.decode() for c in ex["candidates"]]
    if "rating" in ex:
      row["rating"] = float(ex["rating"])
    if len(ex.get(slots.SLOT_FEATURE, ())):
      row[slots.SLOT_FEATURE] = [int(i) - 1 for i in ex[slots.SLOT_FEATURE]
                                 if i > 0]
    shown.append(row)
    meta = ", ".join(f"{key}={row[key]}" for key in
                     ("task", "template_id", "target_item") if key in row)
    print(f"--- {task_or_mixture} [{split}] #{k} ({meta}; "
          f"{row['inputs_tokens']}/{row['targets_tokens']} tokens)", file=out)
    print(f"inputs:  {row['inputs']}", file=out)
    print(f"targets: {row['targets']}", file=out)
    if slots.SLOT_FEATURE in row:
      print(f"slotted items (catalogue indices): {row[slots.SLOT_FEATURE]}",
            file=out)
  return shown


def _decode(vocabulary, ids: list[int]) -> str:
  """Decoded ids; each run of slot tokens shows as one `<item_slot>xK`."""
  parts, run, text = [], 0, []
  for i in ids + [None]:
    if i == slots.SLOT_TOKEN_ID:
      run += 1
      continue
    if run:
      parts.append(vocabulary.decode(text))
      parts.append(f" {slots.SLOT_MARKER}x{run} ")
      text, run = [], 0
    if i is not None:
      text.append(i)
  parts.append(vocabulary.decode(text))
  return "".join(parts).strip()


def mixture_summary(name: str, out: TextIO = sys.stdout) -> dict[str, float]:
  """Prints a mixture's tasks with their rates and normalized proportions."""
  provider = seqio.get_mixture_or_task(name)
  if not isinstance(provider, seqio.Mixture):
    print(f"{name} is a Task (splits: {', '.join(provider.splits)})", file=out)
    return {name: 1.0}
  rates = {t.name: float(provider.get_rate(t)) for t in provider.tasks}
  total = sum(rates.values()) or 1.0
  print(f"mixture {name}: {len(rates)} tasks", file=out)
  for task, rate in rates.items():
    print(f"  {task:40s} rate {rate:14.4f}  ({100 * rate / total:5.1f}%)",
          file=out)
  return rates
