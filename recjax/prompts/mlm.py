"""Masked Language Modeling on item text: T5 span corruption.

The item text (title, description, categories) is split on whitespace and
corrupted as T5's `span_corruption` does it (`random_spans_noise_mask` with
noise density 0.15 and mean span length 3): each noise span is replaced in the
inputs by one sentinel `<extra_id_k>`, and the targets are the noise spans,
each preceded by its sentinel, ending with a sentinel when the text ends with
non-noise words. The mask is rolled by a random offset (seqio's `random_roll`;
`PromptConfig.mlm_random_roll`), because item texts are short: unrolled, a
single span would always hide the last words. The units are words rather than SentencePiece
pieces because prompts are written before the vocabulary exists; the sentinel
strings encode to seqio's extra ids (see `tests/test_seqio_tasks.py`).
Deterministic per (seed, split, item).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from recjax.data.prepared import PreparedData
from recjax.prompts import common
from recjax.prompts.common import Example, PromptConfig

TASK = "mlm"
# Template 0 is T5's bare span corruption; 1-2 add an instruction around it.
TEMPLATES = (
    "{text}",
    "Fill in the masked spans of this item description: {text}",
    "Restore the missing words: {text}",
)


def sentinel(k: int) -> str:
  return f"<extra_id_{k}>"


def item_text(item: dict) -> str:
  """The text MLM corrupts: title, then description, then categories."""
  parts = [common.clean_text(item.get("title")),
           common.clean_text(item.get("description")),
           ", ".join(common.clean_text(c) for c in item.get("categories") or []
                     if common.clean_text(c))]
  return ". ".join(p.rstrip(".") for p in parts if p)


def random_spans_noise_mask(length: int, noise_density: float,
                            mean_noise_span_length: float,
                            rng: np.random.Generator,
                            random_roll: bool = False) -> np.ndarray:
  """T5's `random_spans_noise_mask` in numpy (bool[length], True = noise).

  `random_roll` rolls the mask by a random offset as seqio's option of the
  same name does; without it a short text always has its last words masked.
  """
  orig_length = length
  length = max(length, 2)
  num_noise_tokens = int(np.round(length * noise_density))
  num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
  num_noise_spans = int(np.round(num_noise_tokens / mean_noise_span_length))
  num_noise_spans = max(num_noise_spans, 1)
  num_nonnoise_tokens = length - num_noise_tokens
  num_noise_spans = min(num_noise_spans, num_nonnoise_tokens)

  def segmentation(num_items: int, num_segments: int) -> np.ndarray:
    first = np.zeros(num_items, np.int64)
    starts = rng.permutation(np.arange(num_items - 1) < num_segments - 1)
    first[1:] = starts
    segment_id = np.cumsum(first)
    return np.bincount(segment_id, minlength=num_segments)

  noise_lengths = segmentation(num_noise_tokens, num_noise_spans)
  nonnoise_lengths = segmentation(num_nonnoise_tokens, num_noise_spans)
  interleaved = np.stack([nonnoise_lengths, noise_lengths], 1).reshape(-1)
  span_starts = np.cumsum(interleaved)[:-1]
  indicator = np.zeros(length, np.int64)
  indicator[span_starts] = 1
  span_num = np.cumsum(indicator)
  mask = span_num % 2 == 1
  if random_roll:
    mask = np.roll(mask, int(rng.integers(length)))
  return mask[:orig_length]


def span_corrupt(words: list[str], noise: np.ndarray) -> tuple[str, str]:
  """(inputs, targets) as T5 builds them from a noise mask.

  Inputs keep the non-noise words and put `<extra_id_k>` in place of the k-th
  noise span; targets are `<extra_id_k>` followed by the k-th noise span, for
  every k, then one more sentinel if the text ends with non-noise words
  (exactly T5's output when the text starts with non-noise words; a rolled
  mask that starts with noise still gets `<extra_id_0>` first).
  """
  inputs, targets = [], []
  k = 0
  prev = False
  for w, is_noise in zip(words, noise.tolist()):
    if is_noise and not prev:
      inputs.append(sentinel(k))
      targets.append(sentinel(k))
      k += 1
    (targets if is_noise else inputs).append(w)
    prev = is_noise
  if not prev:
    targets.append(sentinel(k))
  return " ".join(inputs), " ".join(targets)


def generate(data: PreparedData, split: str, config: PromptConfig,
             seed: int = 0, *, shard: tuple[int, int] | None = None
             ) -> Iterator[Example]:
  common.check_split_name(split)
  if split == "test":
    return
  rngs = common.Rngs(seed, TASK, split)
  for i in common.units(data.num_items, shard):
    words = item_text(data.items[i]).split()[:config.mlm_max_words]
    if len(words) < 2:
      continue
    rng = rngs.for_unit(i)
    noise = random_spans_noise_mask(len(words), config.mlm_noise_density,
                                    config.mlm_mean_noise_span_length, rng,
                                    random_roll=config.mlm_random_roll)
    inputs, targets = span_corrupt(words, noise)
    tid = common.pick_template(rng, len(TEMPLATES), config)
    yield common.example(TEMPLATES[tid].format(text=inputs), targets, TASK, tid,
                         target_item=str(data.items[i]["id"]))
