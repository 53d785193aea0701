"""What every prompt family shares: the config, item mentions, seeds, templates.

Every prompt function is a pure function of (PreparedData, split, PromptConfig,
seed). Randomness is drawn from a counter-based generator keyed by
(seed, task, split, unit) where the unit is a user or an item, so an example
never depends on iteration order, on which shard produced it, or on how many
processes ran.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import operator
import threading
import weakref
from typing import Any, Sequence

import numpy as np

from recjax import slots
from recjax.data.prepared import PreparedData
from recjax.data.split import MIN_LEN_FOR_EVAL, SPLITS, HeldOut, check_split

ITEM_FORMATS = ("title", "id", "title_id", "token", "title_token")
# Where the user slot goes under the diagnostic oracle leak (`example`).
ORACLE_MARKER = "<user_slot_oracle>"
# The formats that write an item as its own vocabulary token (`item_token`).
TOKEN_FORMATS = ("token", "title_token")
TASK_CODES = {"retrieval": 1, "ranking": 2, "rating": 3, "mim": 4, "mlm": 5,
              "bpr": 6, "ie": 7, "conversation": 8, "item_text": 9}
SPLIT_CODES = {s: i for i, s in enumerate(SPLITS)}
Example = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """How prompts are written. Hashable, so derived tables can be cached.

  Attributes:
    item_format: how items are mentioned in inputs: 'title', 'id', or
      'title_id' (`"Great Lash Mascara" (item_1042)`), 'token' or
      'title_token' (`"Great Lash Mascara" <i:item_1042>`: the id as one
      vocabulary token, `item_token`; the vocabulary prepare trains holds one
      piece per item). Targets follow it: 'title' -> the title, 'id' and
      'title_id' -> the item id (an id is short and unambiguous to decode;
      the title is already in the inputs), the token formats -> the token
      (one decoding step per item: collaborative indexing, as OpenP5).
    max_history: most recent items kept in a history.
    min_history: shortest history for a training prefix.
    num_negatives: sampled negatives per ranking example (clamped to what the
      catalogue leaves after removing the user's items).
    retrieval_all_prefixes: train retrieval on every prefix of the training
      sequence (else only on the last one).
    rating_all_prefixes: same, for rating.
    ranking_prefixes_per_user: training ranking examples per user (the last
      prefix, then random earlier ones); 0 = every prefix.
    ranking_candidates_in_prompt: the ranking prompt lists the candidates
      (LLaRA's protocol); False writes the retrieval prompt instead (history
      only) and keeps the candidates for scoring alone, so the ranking is
      the LM's next-item distribution restricted to them, as a classical
      recommender ranks the same list.
    bpr_pairs_per_user: training BPR pairs per user (0 = every prefix).
    mim_examples_per_user: masked sequences per user (the most recent window,
      then random earlier windows).
    mim_mask_prob: probability of masking each item (at least one item is
      masked and one stays visible).
    mlm_noise_density, mlm_mean_noise_span_length: T5 span corruption.
    mlm_random_roll: roll the noise mask by a random offset (seqio's option),
      so short texts are not always masked at the end.
    mlm_max_words: item text is cut to this many words before corruption.
    ie_directions: 'both' (id->title and title->id per item) or 'random' (one
      of them per item).
    template: None draws a template per example; an int fixes it.
    item_slots: soft-token slots for embedding methods (ILM, RSLLM; see
      `recjax.slots`): 'none'; 'replace' (each item mention in an input is a
      slot marker alone); 'append' (the mention as `item_format` says, then
      the marker). Targets are unchanged; records gain `slot_items`.
    user_slot: RSLLM's user slot: a user marker after each history (retrieval,
      ranking, rating, BPR, conversation), filled with the recommender's
      state after the history's slotted items (`recjax.slots.USER_MARKER`).
      Needs item_slots != 'none'.
    user_slot_oracle: a diagnostic leak, never for results: 'slot' puts the
      target item's own slot where the user slot goes (the oracle check
      that the LM can learn to read a slot: it then holds the answer);
      'text' writes the target's mention there instead (the positive
      control: the answer in words). 'none' (default): no leak.
  """
  item_format: str = "title_id"
  max_history: int = 20
  min_history: int = 1
  num_negatives: int = 99
  retrieval_all_prefixes: bool = True
  rating_all_prefixes: bool = True
  ranking_prefixes_per_user: int = 1
  ranking_candidates_in_prompt: bool = True
  bpr_pairs_per_user: int = 3
  mim_examples_per_user: int = 1
  mim_mask_prob: float = 0.2
  mlm_noise_density: float = 0.15
  mlm_mean_noise_span_length: float = 3.0
  mlm_max_words: int = 128
  mlm_random_roll: bool = True
  ie_directions: str = "both"
  template: int | None = None
  item_slots: str = "none"
  user_slot: bool = False
  user_slot_oracle: str = "none"

  def __post_init__(self):
    if self.item_format not in ITEM_FORMATS:
      raise ValueError(f"item_format {self.item_format!r} not in {ITEM_FORMATS}")
    if self.max_history < 1 or self.min_history < 1:
      raise ValueError("max_history and min_history must be >= 1")
    if self.num_negatives < 0:
      raise ValueError("num_negatives must be >= 0")
    if not 0.0 < self.mim_mask_prob < 1.0:
      raise ValueError("mim_mask_prob must be in (0, 1)")
    if not 0.0 < self.mlm_noise_density < 1.0:
      raise ValueError("mlm_noise_density must be in (0, 1)")
    if self.ie_directions not in ("both", "random"):
      raise ValueError("ie_directions must be 'both' or 'random'")
    if self.item_slots not in slots.SLOT_MODES:
      raise ValueError(f"item_slots {self.item_slots!r} not in "
                       f"{slots.SLOT_MODES}")
    if self.user_slot_oracle not in ("none", "slot", "text"):
      raise ValueError("user_slot_oracle must be 'none', 'slot' or 'text'")
    if self.user_slot_oracle != "none" and not self.user_slot:
      raise ValueError("user_slot_oracle needs user_slot=true")
    if self.user_slot and self.item_slots == "none":
      raise ValueError("user_slot needs item_slots=replace|append: the user "
                       "slot is filled from the history's slotted items")

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# ---- randomness -------------------------------------------------------------
def _stream_key(seed: int, task: str, split: str) -> int:
  h = hashlib.blake2b(f"{int(seed)}/{TASK_CODES[task]}/{SPLIT_CODES[split]}"
                      .encode(), digest_size=8)
  return int.from_bytes(h.digest(), "little")


class Rngs:
  """Per-(seed, task, split, unit) generators; counter-based (Philox).

  `for_unit(u)` re-keys one reusable Generator (microseconds, where building a
  fresh `default_rng` costs ~20 us): finish with it before asking for the next.
  """

  def __init__(self, seed: int, task: str, split: str):
    self._key0 = _stream_key(seed, task, split)
    self._bitgen = np.random.Philox(key=np.array([self._key0, 0], np.uint64))
    self._gen = np.random.Generator(self._bitgen)
    self._state = self._bitgen.state

  def for_unit(self, unit: int) -> np.random.Generator:
    st = self._state
    st["state"]["key"] = np.array([self._key0, int(unit)], np.uint64)
    st["state"]["counter"] = np.zeros(4, np.uint64)
    st["buffer"] = np.zeros(4, np.uint64)
    st["buffer_pos"] = 4
    st["has_uint32"] = 0
    st["uinteger"] = 0
    self._bitgen.state = st
    return self._gen


def pick_template(rng: np.random.Generator, num_templates: int,
                  config: PromptConfig) -> int:
  if config.template is None:
    return int(rng.integers(num_templates))
  if not 0 <= config.template < num_templates:
    raise ValueError(f"template {config.template} out of range "
                     f"[0, {num_templates})")
  return config.template


# ---- item text ----------------------------------------------------------------
def clean_text(text: Any) -> str:
  """Whitespace-normalized text ("" for None)."""
  return " ".join(str(text or "").split())


def item_token(item_id: str) -> str:
  """The item's own vocabulary token in the token formats: `<i:ID>` (the
  closing bracket keeps the tokens prefix-free: `<i:1>` is no prefix of
  `<i:12>`)."""
  return f"<i:{item_id}>"


def item_token_piece(item_id: str) -> str:
  """The SentencePiece piece of `item_token`: with the word-start mark, so a
  mention after a space, and a target (dummy prefix), is one token."""
  return "\u2581" + item_token(item_id)


def mention(item_id: str, title: str, item_format: str) -> str:
  """How an item appears in an input."""
  if item_format in TOKEN_FORMATS:
    token = item_token(item_id)
    return token if item_format == "token" or not title else (
        f'"{title}" {token}')
  if item_format == "id" or not title:
    return item_id
  if item_format == "title":
    return title
  return f'"{title}" ({item_id})'


def slotted_mention(index: int, item_id: str, title: str, item_format: str,
                    item_slots: str) -> str:
  """`mention` with the item's soft-token slot marker, as `item_slots` says."""
  if item_slots == "replace":
    return slots.indexed_marker(index)
  text = mention(item_id, title, item_format)
  if item_slots == "append":
    return f"{text} {slots.indexed_marker(index)}"
  return text


def target_text(item_id: str, title: str, item_format: str) -> str:
  """How an item appears as a target: the title for 'title', else the id."""
  if item_format == "title" and title:
    return title
  if item_format in TOKEN_FORMATS:
    return item_token(item_id)
  return item_id


@dataclasses.dataclass
class Context:
  """Tables derived once per (data, config): mentions, targets, ids."""
  ids: list[str]
  titles: list[str]
  mentions: list[str]
  targets: list[str]
  rating_scale: tuple[int, int]
  user_suffix: str = ""  # after a history: " <user_slot>" with user_slot
  oracle: str = "none"  # PromptConfig.user_slot_oracle
  item_format: str = "title_id"

  @classmethod
  def build(cls, data: PreparedData, config: PromptConfig) -> "Context":
    ids = [str(it["id"]) for it in data.items]
    titles = [clean_text(it.get("title")) for it in data.items]
    fmt = config.item_format
    lo, hi = 1, 5
    if data.has_ratings:
      lo = int(math.floor(float(np.nanmin(data.seq_ratings))))
      hi = int(math.ceil(float(np.nanmax(data.seq_ratings))))
    return cls(ids=ids, titles=titles,
               mentions=[slotted_mention(n, i, t, fmt, config.item_slots)
                         for n, (i, t) in enumerate(zip(ids, titles))],
               targets=[target_text(i, t, fmt) for i, t in zip(ids, titles)],
               rating_scale=(lo, hi),
               user_suffix=_user_suffix(config),
               oracle=config.user_slot_oracle, item_format=fmt)


def _user_suffix(config: PromptConfig) -> str:
  """What follows a history: nothing, the user slot, or the oracle's marker
  (`example` puts the leak there)."""
  if not config.user_slot:
    return ""
  marker = slots.USER_MARKER if config.user_slot_oracle == "none" else (
      ORACLE_MARKER)
  return f" {marker}"


_CACHE: dict[tuple[int, PromptConfig], tuple[Any, Context]] = {}
_CACHE_LOCK = threading.Lock()


def context(data: PreparedData, config: PromptConfig) -> Context:
  """Cached `Context.build`, keyed by the identity of the data's
  `context_key` (a Beam shard view's catalogue, shared by a worker's shards)
  or of the data itself, checked by weakref."""
  owner = getattr(data, "context_key", None) or data
  key = (id(owner), config)
  with _CACHE_LOCK:
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is owner:
      return hit[1]
  ctx = Context.build(data, config)
  with _CACHE_LOCK:
    # A context lives as long as its owner: dead owners' contexts (a
    # catalogue's strings each) would otherwise pile up.
    for k in [k for k, (ref, _) in _CACHE.items() if ref() is None]:
      del _CACHE[k]
    if len(_CACHE) > 16:
      _CACHE.clear()
    _CACHE[key] = (weakref.ref(owner), ctx)
  return ctx


def pick(table: Sequence[str], indices: Sequence[int]) -> list[str]:
  """[table[i] for i in indices], at C speed."""
  if len(indices) == 1:
    return [table[indices[0]]]
  return list(operator.itemgetter(*indices)(table)) if len(indices) else []


def history_text(ctx: Context, items: Sequence[int]) -> str:
  return "; ".join(pick(ctx.mentions, items))


def user_history_text(ctx: Context, items: Sequence[int]) -> str:
  """A user's history as a prompt shows it: the mentions, then the user slot
  when the config asks for one."""
  return history_text(ctx, items) + ctx.user_suffix


@functools.lru_cache(maxsize=4096)
def format_rating(r: float) -> str:
  """Rating as target text: '4', or '4.5' for half stars."""
  r = round(float(r) * 2) / 2
  return str(int(r)) if r == int(r) else f"{r:.1f}"


# ---- units and shards -----------------------------------------------------------
def units(n: int, shard: tuple[int, int] | None) -> range:
  """The users (or items) of one shard: every count-th unit from index."""
  if shard is None:
    return range(n)
  index, count = shard
  if not 0 <= index < count:
    raise ValueError(f"bad shard {shard}")
  return range(index, n, count)


def example(inputs: str, targets: str, task: str, template_id: int, *,
            target_item: str = "", candidates: Sequence[str] = (),
            rating: float = float("nan"), ctx: Context | None = None,
            target_index: int | None = None) -> Example:
  """One record; slot markers in `inputs` become the `slot_items` feature.

  With the oracle leak (`PromptConfig.user_slot_oracle`), `ctx` and
  `target_index` say what replaces the user slot."""
  if ORACLE_MARKER in inputs:
    if ctx is None or target_index is None:
      raise ValueError(f"{task}: the user-slot oracle needs the target")
    leak = (slots.indexed_marker(target_index) if ctx.oracle == "slot"
            else mention(ctx.ids[target_index], ctx.titles[target_index],
                         ctx.item_format))
    inputs = inputs.replace(ORACLE_MARKER, leak)
  inputs, slot_items = slots.strip_slot_indices(inputs)
  ex = {"inputs": inputs, "targets": targets, "task": task,
        "template_id": template_id, "target_item": target_item,
        "candidates": list(candidates), "rating": float(rating)}
  if slot_items:
    ex[slots.SLOT_FEATURE] = slot_items
  return ex


def sample_negatives(rng: np.random.Generator, num_items: int,
                     exclude: Sequence[int] | np.ndarray, k: int) -> list[int]:
  """k distinct item indices in [0, num_items) not in `exclude`, random order.

  Fewer than k if the catalogue is too small. Draws k distinct ranks among the
  allowed items and maps each rank r to the r-th allowed item,
  r + #(excluded items at or below it), by a binary search over
  `sorted(exclude) - arange`. The ranks come from one vectorized draw with
  replacement, accepted when all distinct (uniform over ordered k-tuples, like
  `choice(replace=False)` but cheaper); large k falls back to
  `Generator.choice`.
  """
  if k == 1 and 2 * len(exclude) < num_items:  # BPR: rejection, no arrays
    known = set(exclude.tolist() if isinstance(exclude, np.ndarray)
                else exclude)
    while True:
      x = int(rng.integers(num_items))
      if x not in known:
        return [x]
  excluded = np.sort(np.asarray(exclude, np.int64))
  if len(excluded) > 1 and not (excluded[1:] != excluded[:-1]).all():
    excluded = np.unique(excluded)
  available = num_items - len(excluded)
  k = min(k, available)
  if k <= 0:
    return []
  ranks = None
  if k * k <= 2 * available:  # all distinct with probability >= ~60%
    for _ in range(4):
      draw = rng.integers(0, available, size=k)
      if k == 1:
        ranks = draw
        break
      s = np.sort(draw)
      if (s[1:] != s[:-1]).all():
        ranks = draw
        break
  if ranks is None:
    ranks = rng.choice(available, size=k, replace=False)
  shift = excluded - np.arange(len(excluded))
  return (ranks + np.searchsorted(shift, ranks, side="right")).tolist()


def held_out_case(data: PreparedData, split: str, user: int,
                  max_history: int) -> HeldOut | None:
  """`recjax.data.split.held_out` for one user (None if the user has none).

  Lets a shard visit only its own users; tests check it matches held_out().
  """
  seq = data.sequence(user)
  if len(seq) < MIN_LEN_FOR_EVAL:
    return None
  ratings = data.ratings(user)
  end = len(seq) - (2 if split == "validation" else 1)
  start = max(0, end - max_history)
  return HeldOut(user=user, history=seq[start:end],
                 history_ratings=ratings[start:end], target=int(seq[end]),
                 target_rating=float(ratings[end]))


def train_prefixes(seq: np.ndarray, config: PromptConfig) -> range:
  """Target positions t of a training sequence (history = seq[:t], capped)."""
  return range(config.min_history, len(seq))


def choose_positions(rng: np.random.Generator, positions: range,
                     k: int) -> list[int]:
  """The last position, then k-1 random earlier ones (k=0: all), ascending."""
  if not len(positions):
    return []
  if k <= 0 or k >= len(positions):
    return list(positions)
  rest = rng.choice(len(positions) - 1, size=k - 1, replace=False)
  return sorted([positions[int(i)] for i in rest] + [positions[-1]])


def check_split_name(split: str) -> str:
  return check_split(split)
