"""Conversational recommendation prompts: a short dialogue -> the wanted item.

The user lists items they enjoyed (the history, no user id), the assistant
suggests an item X, the user turns it down and refines the request by an
attribute of the item they actually want; the target is that item (its target
text, `target_item` its id), so the task is evaluated exactly as retrieval
(full-catalogue constrained beam search):

  User: I enjoyed <h1>; <h2>. Can you suggest something? Assistant: How about
  <X>? User: Not quite. I'd like something by Brightline. Assistant:

Train: one example per user, the last prefix of the training sequence.
Validation/test: one per user, the leave-one-out target of
`recjax.data.split` (as retrieval).

The refinement is drawn uniformly among the attributes the target has:
  - category: its most specific category, "in <category>": the last entry of
    its category list after splitting "A > B" paths (Amazon lists paths from
    the root and the synthetic world one "Domain > Sub" string, so this is the
    leaf; for a flat genre list it is the last genre). An item satisfies it if
    any of its categories (path segments) is that one.
  - brand: "by <brand>"; satisfied by the same brand (case-insensitive).
  - price band: "cheaper" / "mid-priced" / "premium", the price tertile of the
    item within its top-level category (the first segment of its first
    category; uncategorized items form one group), see `price_bands`; none
    without a price or in a group of fewer than 3 priced items.
A target with none of them gets the plain refinement "something else" (it
keeps the user, so the conversation test set has the same users as
retrieval's); `attributes(data).num_plain` counts such items.

X is drawn uniformly from the catalogue (not by popularity: popularity needs
the whole log, and a Beam shard sees only its own users, which would break
shard-union == unsharded), never from the user's full known sequence (so
never the target and never in the history), and must not satisfy the
refinement, so the refinement carries information: up to `SUGGESTION_TRIES`
draws, then any item outside the known sequence. A user whose known sequence
covers the catalogue yields no example.

Item mentions come only from `common.context` (they pick up slot markers and
item formats by themselves); attribute tables depend only on the catalogue
and are cached per dataset object.
"""
from __future__ import annotations

import dataclasses
import threading
import weakref
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from recjax.data.dataset import clean_price
from recjax.data.prepared import PreparedData
from recjax.data.split import train_sequence
from recjax.prompts import common
from recjax.prompts.common import Example, PromptConfig

TASK = "conversation"
TEMPLATES = (
    "User: I enjoyed {history}. Can you suggest something? Assistant: How "
    "about {suggestion}? User: Not quite. I'd like something {refinement}. "
    "Assistant:",
    "User: Lately I have liked {history}. What should I try next? Assistant: "
    "You might like {suggestion}. User: Hmm, not that one. Something "
    "{refinement}, please. Assistant:",
    "User: These are my recent picks: {history}. Any recommendation? "
    "Assistant: Maybe {suggestion}? User: No, I am looking for something "
    "{refinement}. Assistant:",
    "User: I have been into {history}. What would you recommend? Assistant: "
    "Try {suggestion}. User: I'd prefer something {refinement}. Assistant:",
)
PRICE_BANDS = ("cheaper", "mid-priced", "premium")
KINDS = ("category", "brand", "price")
PLAIN = "else"  # the fallback refinement kind: "something else"
SUGGESTION_TRIES = 32
_PATH_SEP = ">"


class Refinement(NamedTuple):
  kind: str  # 'category' | 'brand' | 'price' | 'else'
  value: Any  # category key, brand key, band index, or None


class Case(NamedTuple):
  """One dialogue before formatting (tests check these, not the text)."""
  user: int  # never written into the text
  history: list[int]
  target: int
  suggestion: int
  refinement: Refinement
  template: int


# ---- the attribute table ------------------------------------------------------
def category_path(categories: Any) -> list[str]:
  """An item's categories as segments ("A > B" split), first occurrence order."""
  if isinstance(categories, str):
    categories = [categories]
  out: list[str] = []
  for c in categories or ():
    for seg in str(c).split(_PATH_SEP):
      seg = common.clean_text(seg)
      if seg and seg not in out:
        out.append(seg)
  return out


def price_bands(prices: Sequence[float | None],
                groups: Sequence[str]) -> np.ndarray:
  """Price tertile (0 cheaper, 1 mid, 2 premium) within each group; -1 if none.

  An item's band is floor(3 x (share of its group's priced items strictly
  cheaper than it)), so equal prices share a band. Items without a price, and
  groups with fewer than 3 priced items (no meaningful tertile), get -1.
  """
  n = len(prices)
  band = np.full(n, -1, np.int8)
  by_group: dict[str, list[int]] = {}
  for i, (p, g) in enumerate(zip(prices, groups)):
    if p is not None:
      by_group.setdefault(g, []).append(i)
  for idx in by_group.values():
    if len(idx) < 3:
      continue
    p = np.asarray([prices[i] for i in idx], np.float64)
    below = np.searchsorted(np.sort(p), p, side="left")
    band[np.asarray(idx)] = np.minimum(2, (3 * below) // len(idx))
  return band


@dataclasses.dataclass(frozen=True)
class Attributes:
  """Per-item refinement attributes, derived once per catalogue.

  Attributes:
    category: the most specific category to show ("" = none).
    category_keys: every category segment of the item, case-folded.
    brand: the brand to show ("" = none).
    band: price band (index into PRICE_BANDS), -1 = none.
    num_plain: items with no attribute (their dialogues say "something else").
  """
  category: list[str]
  category_keys: list[frozenset[str]]
  brand: list[str]
  band: np.ndarray
  num_plain: int

  @classmethod
  def build(cls, items: Sequence[dict[str, Any]]) -> "Attributes":
    paths = [category_path(it.get("categories")) for it in items]
    brands = [common.clean_text(it.get("brand")) for it in items]
    prices = [clean_price(it.get("price")) for it in items]
    band = price_bands(prices, [p[0] if p else "" for p in paths])
    plain = sum(1 for p, b, k in zip(paths, brands, band)
                if not p and not b and k < 0)
    return cls(category=[p[-1] if p else "" for p in paths],
               category_keys=[frozenset(s.casefold() for s in p)
                              for p in paths],
               brand=brands, band=band, num_plain=plain)

  def refinements(self, item: int) -> list[Refinement]:
    """The refinements `item` satisfies (empty if it has no attribute)."""
    out = []
    if self.category[item]:
      out.append(Refinement("category", self.category[item].casefold()))
    if self.brand[item]:
      out.append(Refinement("brand", self.brand[item].casefold()))
    if self.band[item] >= 0:
      out.append(Refinement("price", int(self.band[item])))
    return out

  def satisfies(self, item: int, r: Refinement) -> bool:
    if r.kind == "category":
      return r.value in self.category_keys[item]
    if r.kind == "brand":
      return self.brand[item].casefold() == r.value
    if r.kind == "price":
      return int(self.band[item]) == r.value
    return False  # 'else': any other item is "something else"

  def text(self, item: int, r: Refinement) -> str:
    """The user's words for `r`, shown as the target `item` spells it."""
    if r.kind == "category":
      return f"in {self.category[item]}"
    if r.kind == "brand":
      return f"by {self.brand[item]}"
    if r.kind == "price":
      return PRICE_BANDS[r.value]
    return "else"


_CACHE: dict[int, tuple[Any, Attributes]] = {}
_CACHE_LOCK = threading.Lock()


def attributes(data: PreparedData) -> Attributes:
  """Cached `Attributes.build(data.items)` (keyed by object identity)."""
  key = id(data)
  with _CACHE_LOCK:
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is data:
      return hit[1]
  table = Attributes.build(data.items)
  with _CACHE_LOCK:
    if len(_CACHE) > 16:
      _CACHE.clear()
    _CACHE[key] = (weakref.ref(data), table)
  return table


# ---- dialogues ----------------------------------------------------------------
def _suggestion(rng: np.random.Generator, table: Attributes, num_items: int,
                known: np.ndarray, r: Refinement) -> int | None:
  """A uniform item outside `known` not satisfying `r` (bounded retries)."""
  excluded = set(known.tolist())
  for x in rng.integers(num_items, size=SUGGESTION_TRIES).tolist():
    if x not in excluded and not table.satisfies(x, r):
      return x
  rest = common.sample_negatives(rng, num_items, known, 1)
  return rest[0] if rest else None


def cases(data: PreparedData, split: str, config: PromptConfig, seed: int = 0,
          *, shard: tuple[int, int] | None = None) -> Iterator[Case]:
  """The dialogues `generate` writes, one per eligible user, unformatted."""
  common.check_split_name(split)
  table = attributes(data)
  rngs = common.Rngs(seed, TASK, split)
  h = config.max_history
  for u in common.units(data.num_users, shard):
    if split == "train":
      seq = train_sequence(data, u).tolist()
      positions = common.train_prefixes(seq, config)
      if not len(positions):
        continue
      t = positions[-1]
      history, target = seq[max(0, t - h):t], seq[t]
    else:
      case = common.held_out_case(data, split, u, h)
      if case is None:
        continue
      history, target = case.history.tolist(), case.target
    rng = rngs.for_unit(u)
    tid = common.pick_template(rng, len(TEMPLATES), config)
    options = table.refinements(target)
    r = (options[int(rng.integers(len(options)))] if options else
         Refinement(PLAIN, None))
    x = _suggestion(rng, table, data.num_items, data.sequence(u), r)
    if x is None:
      continue
    yield Case(u, history, target, x, r, tid)


def generate(data: PreparedData, split: str, config: PromptConfig,
             seed: int = 0, *, shard: tuple[int, int] | None = None
             ) -> Iterator[Example]:
  ctx = common.context(data, config)
  table = attributes(data)
  for c in cases(data, split, config, seed, shard=shard):
    inputs = TEMPLATES[c.template].format(
        history=common.user_history_text(ctx, c.history),
        suggestion=ctx.mentions[c.suggestion],
        refinement=table.text(c.target, c.refinement))
    yield common.example(inputs, ctx.targets[c.target], TASK, c.template,
                         target_item=ctx.ids[c.target], ctx=ctx,
                         target_index=c.target)
