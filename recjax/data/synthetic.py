"""The embedded default dataset: a seeded synthetic shop with planted signal.

recjax must run end to end offline, so the default dataset is generated, not
downloaded. It is built so that both collaborative and textual signal can be
learned and measured.

The world (`build_world`):
  - Product domains (e.g. "Outdoor > Footwear", "Electronics > Cameras"),
    each with 4 invented brands, attributes, *main* kinds and *accessory*
    kinds. A product title is compositional: "<Brand> <Attribute> <Kind>",
    e.g. "Brightline Waterproof Trail Running Shoes" (" Gen 2", " Gen 3", ...
    is appended when a combination repeats, so titles are unique). Category
    is the domain path, brand the brand, description one sentence built from
    the same parts, price = domain base x kind factor (accessories ~0.15) x
    brand tier (0.7 / 1.0 / 1.4 / 2.0) x lognormal noise.
  - Series domains (books): a series "Starfall Saga" has 3-6 items
    "Starfall Saga, Volume 1" ... in order, all by one author (the brand).
  - Every item has a price band (0/1/2: price tertile within its domain) and
    a popularity weight (Zipf, exponent `popularity_exponent`, random rank).
  - Transitions: a main product's targets are the accessories of the same
    domain and brand (falling back to the domain's accessories if the brand
    has none); volume k's single target is volume k+1. Accessories and last
    volumes have no targets.

The users and their sequences (`generate`):
  - Each user has domain weights ~ Dirichlet(`category_concentration`)
    (0.3 over 10 domains: on average 46% of a user's fresh picks fall in
    their top domain and 69% in their top 2),
    one favourite brand per domain and one price band.
  - Sequence length: `min_sequence_length` + exponential, mean about
    `mean_sequence_length`, capped at `max_sequence_length`.
  - Step t > 0: if the previous item has targets, with probability
    `follow_prob` (0.5) the next item is one of them, uniformly. Otherwise
    (and at t = 0) it is a fresh pick: a domain from the user's weights;
    then with probability `brand_loyalty` (0.5) an item of the user's
    favourite brand there, else any item of the domain; within that choice
    items are weighted by popularity x `price_band_boost` (3) if the item is
    in the user's band; a series volume other than 1 has its weight x0.15
    (series are mostly entered at the start).
    Measurable consequence: P(next in targets(prev) | prev has targets) is
    about `follow_prob` + chance (chance is ~ #targets / #items, under 1%
    at the default size, where 59% of items have targets), a little less
    when the user already owns the drawn targets: 0.48 at the default
    size, before and after preparation.
  - Ratings (1-5): round(2.6 + 1.0 [brand is the user's favourite in that
    domain] + 0.6 [item in the user's band] + 1.2 x the user's weight of
    the domain + N(0, `rating_noise`)), clipped to 1-5: before rounding,
    the favourite brand adds 1.0 and the user's price band 0.6; items of a
    user's most bought domain average ~0.3 higher than the rest.
  - Users rarely buy an item twice: a candidate the user already has is
    passed over for the next one (a second draw from the targets, then up
    to 4 alternative fresh picks); only if all are owned is it a repeat
    (2% of the default log).
  - Timestamps: integer seconds, strictly increasing per user: a start
    uniform over `time_span_days` from `start_time`, then gaps of 60 s plus
    an exponential with mean `mean_gap_days`.

Sizes: the default (1,000 users, 500 items, ~20 interactions each) is ~20k
interactions; `SyntheticConfig(num_users=50_000, num_items=10_000)` gives
~1M interactions and is generated in a few seconds (all per-interaction work
is vectorised; the only Python loops are over items and sequence positions).
Same config -> identical dataset (one `numpy.random.Generator(seed)`).
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping

import numpy as np

from recjax.data.dataset import RecDataset

# name, brands, attributes, main kinds, accessory kinds, base price, blurb
PRODUCT_DOMAINS = (
    ("Outdoor > Footwear", ("Brightline", "Trailhawk", "Northpeak", "Summitra"),
     ("Waterproof", "Lightweight", "Cushioned", "All-Terrain", "Breathable",
      "Insulated"),
     ("Trail Running Shoes", "Hiking Boots", "Approach Shoes"),
     ("Merino Hiking Socks", "Gel Insoles", "Trail Gaiters",
      "Waterproofing Spray"), 110.0, "made for long days on rough trails"),
    ("Electronics > Cameras", ("Lumora", "Optix", "Kestrel", "Veyra"),
     ("Compact", "Full-Frame", "4K", "Weather-Sealed", "Retro"),
     ("Mirrorless Camera", "Action Camera", "Instant Camera"),
     ("Prime Lens", "Zoom Lens", "Memory Card", "Camera Battery",
      "Camera Strap"), 650.0, "for sharp photos and smooth video"),
    ("Kitchen > Coffee", ("Brewster", "Crema Co", "Morning Ritual", "Baristo"),
     ("Stainless", "Programmable", "Compact", "Dual-Boiler", "Manual"),
     ("Espresso Machine", "Burr Grinder", "Pour-Over Kettle"),
     ("Coffee Beans", "Milk Frothing Pitcher", "Descaling Kit",
      "Paper Filters"), 260.0, "for cafe-quality coffee at home"),
    ("Music > Guitars", ("Harmonia", "Redwood Tone", "Soundbay", "Strummer"),
     ("Acoustic", "Electric", "Vintage", "Travel-Size", "Solid Spruce"),
     ("Guitar", "Bass Guitar", "Ukulele"),
     ("Guitar Strings", "Clip-On Tuner", "Capo", "Gig Bag", "Guitar Picks"),
     420.0, "with a warm, balanced tone"),
    ("Sports > Cycling", ("Velocita", "Ridgeworks", "Spokeline", "Cadenza"),
     ("Carbon", "Aluminium", "Gravel", "Folding", "Aero"),
     ("Road Bike", "Mountain Bike", "E-Bike"),
     ("Bike Helmet", "Bike Light Set", "Bottle Cage", "Bike Lock",
      "Saddle Bag"), 900.0, "built for fast, comfortable rides"),
    ("Beauty > Skincare", ("Glowfield", "Pure Petal", "Dermalab", "Velvet Dew"),
     ("Hydrating", "Fragrance-Free", "Vitamin C", "Gentle", "Overnight"),
     ("Face Serum", "Moisturizer", "Cleansing Balm"),
     ("Sheet Masks", "Cotton Pads", "Facial Roller", "Travel Bottles"), 32.0,
     "for calm, healthy-looking skin"),
    ("Home > Lighting", ("Lumenhaus", "Brightnest", "Glowworks", "Northlight"),
     ("Dimmable", "Smart", "Brass", "Minimalist", "Wireless"),
     ("Floor Lamp", "Desk Lamp", "Pendant Light"),
     ("LED Bulb", "Smart Plug", "Lamp Shade", "Dimmer Switch"), 130.0,
     "that brings soft light to any room"),
    ("Gaming > Consoles", ("Pixelforge", "Nova Play", "Arcadia", "Quantum Joy"),
     ("Handheld", "Pro", "Slim", "Limited Edition", "Retro"),
     ("Game Console", "Gaming Handheld", "VR Headset"),
     ("Wireless Controller", "Charging Dock", "Carrying Case",
      "Gaming Headset"), 380.0, "for hours of play"),
)
# name, authors, genre word, base price
SERIES_DOMAINS = (
    ("Books > Fantasy", ("A. L. Marlowe", "Iris Penhallow", "Tomas Reyne",
                         "Mira Castellan", "Owen Hartfield", "Selka Dunmore"),
     "fantasy", 16.0),
    ("Books > Mystery", ("Clara Whitcombe", "J. D. Fenwick", "Nadia Orsay",
                         "Hugo Blackmere", "Priya Lanford", "Felix Arden"),
     "mystery", 14.0),
)
SERIES_ADJ = ("Starfall", "Ember", "Tidebound", "Silver", "Hollow", "Iron",
              "Midnight", "Crimson", "Winter", "Shattered", "Golden", "Ashen",
              "Verdant", "Storm", "Glass", "Ravenwood")
SERIES_NOUN = ("Saga", "Chronicles", "Cycle", "Archives", "Legacy", "Trials",
               "Mysteries", "Files", "Tales", "Quartet")
BRAND_TIERS = (0.7, 1.0, 1.4, 2.0)
SERIES_LATER_VOLUME_WEIGHT = 0.15
FRESH_ALTERNATIVES = 4


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Size and signal knobs of the synthetic world; see the module docstring."""
  num_users: int = 1000
  num_items: int = 500
  seed: int = 0
  mean_sequence_length: float = 20.0
  min_sequence_length: int = 5
  max_sequence_length: int = 100
  follow_prob: float = 0.5
  brand_loyalty: float = 0.5
  category_concentration: float = 0.3
  price_band_boost: float = 3.0
  popularity_exponent: float = 0.8
  series_fraction: float = 0.15
  accessory_fraction: float = 0.45
  rating_noise: float = 0.6
  start_time: float = 1_500_000_000.0
  time_span_days: float = 1000.0
  mean_gap_days: float = 3.0

  def __post_init__(self):
    if self.num_users < 1 or self.num_items < 2:
      raise ValueError("synthetic: need num_users >= 1 and num_items >= 2")
    if not 1 <= self.min_sequence_length <= self.max_sequence_length:
      raise ValueError("synthetic: need 1 <= min_sequence_length <= "
                       "max_sequence_length")
    for name in ("follow_prob", "brand_loyalty", "series_fraction",
                 "accessory_fraction"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"synthetic: {name} must be in [0, 1]")

  @classmethod
  def from_options(cls, options: Mapping[str, Any] | None) -> "SyntheticConfig":
    """From CLI-style options (values may be strings); unknown keys are errors."""
    options = dict(options or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(options) - names
    if unknown:
      raise TypeError(f"synthetic: unknown options {sorted(unknown)}; "
                      f"known: {sorted(names)}")
    kwargs = {}
    for k, v in options.items():
      typ = hints[k]
      kwargs[k] = int(float(v)) if typ is int else typ(v)
    return cls(**kwargs)


@dataclasses.dataclass
class World:
  """The catalogue and its ground truth (indices are catalogue indices)."""
  item_ids: list[str]
  titles: list[str]
  categories: list[list[str]]
  brands: list[str]
  descriptions: list[str]
  prices: np.ndarray  # float64[I]
  domain: np.ndarray  # int[I], index into domain_names
  brand: np.ndarray  # int[I], index into that domain's brands
  band: np.ndarray  # int[I], price tertile within the domain
  popularity: np.ndarray  # float64[I]
  is_main: np.ndarray  # bool[I]
  volume: np.ndarray  # int[I]; 0 = not in a series
  target_ptr: np.ndarray  # int64[I+1], CSR of transition targets
  targets: np.ndarray  # int64[...]
  domain_names: list[str]
  domain_brands: list[tuple[str, ...]]

  def targets_of(self, item: int) -> np.ndarray:
    return self.targets[self.target_ptr[item]:self.target_ptr[item + 1]]


def build_world(config: SyntheticConfig,
                rng: np.random.Generator | None = None) -> World:
  """The seeded catalogue; `generate` calls it with its own generator."""
  rng = rng or np.random.default_rng(config.seed)
  n = config.num_items
  n_prod_dom, n_ser_dom = len(PRODUCT_DOMAINS), len(SERIES_DOMAINS)
  domain_names = ([d[0] for d in PRODUCT_DOMAINS] +
                  [d[0] for d in SERIES_DOMAINS])
  domain_brands = ([d[1] for d in PRODUCT_DOMAINS] +
                   [d[1] for d in SERIES_DOMAINS])
  rows = []  # (title, domain, brand, description, price, is_main, volume, series)
  # Series first: whole series of 3-6 volumes until the share is reached.
  n_series_items = int(round(config.series_fraction * n))
  series_names = [f"{a} {b}" for b in SERIES_NOUN for a in SERIES_ADJ]
  series_order = rng.permutation(len(series_names))
  s = 0
  while n_series_items - len(rows) >= 3:
    length = int(min(rng.integers(3, 7), n_series_items - len(rows)))
    sd = int(rng.integers(n_ser_dom))
    dom_name, authors, genre, base = SERIES_DOMAINS[sd]
    author = int(rng.integers(len(authors)))
    name = series_names[series_order[s % len(series_names)]]
    if s >= len(series_names):
      name += f" {s // len(series_names) + 1}"
    price = round(base * float(rng.lognormal(0, 0.15)), 0) - 0.01
    for k in range(1, length + 1):
      rows.append((f"{name}, Volume {k}", n_prod_dom + sd, author,
                   f"Volume {k} of the {name}, a {genre} series by "
                   f"{authors[author]}.", price, False, k, s))
    s += 1
  # Products.
  n_prod = n - len(rows)
  dom = rng.integers(n_prod_dom, size=n_prod)
  acc = rng.random(n_prod) < config.accessory_fraction
  brand = rng.integers(4, size=n_prod)
  attr_u = rng.random(n_prod)
  kind_u = rng.random(n_prod)
  noise = rng.lognormal(0.0, 0.2, size=n_prod)
  seen: dict[str, int] = {}
  for j in range(n_prod):
    d = PRODUCT_DOMAINS[dom[j]]
    _, brands, attrs, mains, accs, base, blurb = d
    kinds = accs if acc[j] else mains
    attr = attrs[int(attr_u[j] * len(attrs))]
    kind = kinds[int(kind_u[j] * len(kinds))]
    title = f"{brands[brand[j]]} {attr} {kind}"
    seen[title] = seen.get(title, 0) + 1
    if seen[title] > 1:
      title += f" Gen {seen[title]}"
    price = base * (0.15 if acc[j] else 1.0) * BRAND_TIERS[brand[j]] * noise[j]
    price = max(round(price, 0) - 0.01, 0.99)
    desc = (f"{attr} {kind.lower()} from {brands[brand[j]]}, {blurb}.")
    rows.append((title, int(dom[j]), int(brand[j]), desc, price,
                 not acc[j], 0, -1))
  # Shuffle so that ids carry no structure.
  perm = rng.permutation(len(rows))
  rows = [rows[p] for p in perm]
  n = len(rows)
  domain = np.array([r[1] for r in rows], np.int64)
  brand_ix = np.array([r[2] for r in rows], np.int64)
  prices = np.array([r[4] for r in rows], np.float64)
  is_main = np.array([r[5] for r in rows], bool)
  volume = np.array([r[6] for r in rows], np.int64)
  series = np.array([r[7] for r in rows], np.int64)
  band = np.zeros(n, np.int64)
  popularity = np.zeros(n, np.float64)
  for d in range(len(domain_names)):
    idx = np.flatnonzero(domain == d)
    if not len(idx):
      continue
    ranks = np.argsort(np.argsort(prices[idx], kind="stable"), kind="stable")
    band[idx] = (3 * ranks) // len(idx)
    popularity[idx] = (1.0 + rng.permutation(len(idx))) ** (
        -config.popularity_exponent)
  # Transition targets.
  targets: list[np.ndarray] = []
  acc_by_brand: dict[tuple[int, int], list[int]] = {}
  acc_by_domain: dict[int, list[int]] = {}
  by_series = {}
  for i in range(n):
    if volume[i] > 0:
      by_series[(series[i], volume[i])] = i
    elif not is_main[i]:
      acc_by_brand.setdefault((domain[i], brand_ix[i]), []).append(i)
      acc_by_domain.setdefault(domain[i], []).append(i)
  for i in range(n):
    if is_main[i]:
      t = acc_by_brand.get((domain[i], brand_ix[i])) or acc_by_domain.get(
          domain[i], [])
    elif volume[i] > 0 and (series[i], volume[i] + 1) in by_series:
      t = [by_series[(series[i], volume[i] + 1)]]
    else:
      t = []
    targets.append(np.asarray(t, np.int64))
  ptr = np.concatenate([[0], np.cumsum([len(t) for t in targets])])
  flat = np.concatenate(targets) if ptr[-1] else np.zeros(0, np.int64)
  return World(
      item_ids=[f"item_{i}" for i in range(n)],
      titles=[r[0] for r in rows],
      categories=[[domain_names[r[1]]] for r in rows],
      brands=[domain_brands[r[1]][r[2]] for r in rows],
      descriptions=[r[3] for r in rows], prices=prices, domain=domain,
      brand=brand_ix, band=band, popularity=popularity, is_main=is_main,
      volume=volume, target_ptr=ptr.astype(np.int64),
      targets=flat.astype(np.int64), domain_names=domain_names,
      domain_brands=domain_brands)


def generate(config: SyntheticConfig | None = None,
             *, return_world: bool = False):
  """The synthetic RecDataset for `config` (and the World if asked)."""
  config = config or SyntheticConfig()
  rng = np.random.default_rng(config.seed)
  world = build_world(config, rng)
  n_items, n_users = len(world.item_ids), config.num_users
  n_dom = len(world.domain_names)

  # Users' tastes.
  dom_present = np.bincount(world.domain, minlength=n_dom) > 0
  w = rng.gamma(config.category_concentration, size=(n_users, n_dom))
  w = w * dom_present + 1e-12 * dom_present
  w /= w.sum(1, keepdims=True)
  fav_brand = np.stack([rng.integers(len(b), size=n_users)
                        for b in world.domain_brands], 1)
  user_band = rng.integers(3, size=n_users)

  # Sequence lengths and the per-slot users.
  lo, hi = config.min_sequence_length, config.max_sequence_length
  extra = max(config.mean_sequence_length - lo, 0.0)
  lengths = np.clip(lo + np.rint(rng.exponential(extra, size=n_users)
                                  if extra else np.zeros(n_users)),
                    lo, hi).astype(np.int64)
  total = int(lengths.sum())
  slot_user = np.repeat(np.arange(n_users), lengths)

  # FRESH_ALTERNATIVES fresh picks per slot (fallbacks against repeats).
  slot_fresh = _fresh_picks(world, config, rng,
                            np.repeat(slot_user, FRESH_ALTERNATIVES), w,
                            fav_brand, user_band
                            ).reshape(total, FRESH_ALTERNATIVES)

  # Markov walk over positions, vectorised across the users still active.
  max_len = int(lengths.max())
  offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  follow = rng.random(total) < config.follow_prob
  choose = rng.random((total, 2))
  counts = np.diff(world.target_ptr)
  flat_targets = np.append(world.targets, -1)  # valid index 0 when empty
  by_length = np.argsort(-lengths, kind="stable")
  n_active = np.searchsorted(-lengths[by_length], -np.arange(max_len),
                             side="left")  # users with length > t
  grid = np.zeros((n_users, max_len), np.int64)
  for t in range(max_len):
    active = by_length[:n_active[t]] if t else by_length
    slots = offsets[active] + t
    cands = slot_fresh[slots]
    if t:
      prev = grid[active, t - 1]
      c = counts[prev]
      go = follow[slots] & (c > 0)
      # Two draws from the previous item's targets (-1 where not following).
      j = world.target_ptr[prev][:, None] + np.floor(
          choose[slots] * c[:, None]).astype(np.int64)
      j = np.where(go[:, None], j, 0)
      tgt = np.where(go[:, None], flat_targets[j], -1)
      cands = np.concatenate([tgt, cands], 1)
      owned = (grid[active, :t][:, :, None] == cands[:, None, :]).any(1)
      bad = owned | (cands < 0)
      first = np.argmax(~bad, 1)
      pick = cands[np.arange(len(slots)), first]
      all_bad = bad.all(1)
      pick[all_bad] = slot_fresh[slots[all_bad], 0]
    else:
      pick = cands[:, 0]
    grid[active, t] = pick
  pos = np.arange(total) - np.repeat(offsets, lengths)
  items = grid[slot_user, pos]

  # Ratings from taste match + noise.
  d_of = world.domain[items]
  score = (2.6 + 1.0 * (world.brand[items] == fav_brand[slot_user, d_of])
           + 0.6 * (world.band[items] == user_band[slot_user])
           + 1.2 * w[slot_user, d_of]
           + rng.normal(0.0, config.rating_noise, size=total))
  ratings = np.clip(np.round(score), 1, 5).astype(np.float32)

  # Increasing timestamps.
  start = config.start_time + rng.random(n_users) * config.time_span_days * 86400
  gaps = 60.0 + rng.exponential(config.mean_gap_days * 86400, size=total)
  gaps[offsets] = 0.0
  csum = np.cumsum(gaps)
  ts = np.floor(start[slot_user] + csum - np.repeat(csum[offsets], lengths))

  data = RecDataset(
      name="synthetic", item_ids=world.item_ids, titles=world.titles,
      categories=world.categories, brands=world.brands,
      descriptions=world.descriptions,
      prices=[float(p) for p in world.prices],
      user_ids=[f"user_{u}" for u in range(n_users)],
      users=slot_user.astype(np.int32), items=items.astype(np.int32),
      timestamps=ts, ratings=ratings,
      meta={"synthetic": dataclasses.asdict(config)})
  return (data, world) if return_world else data


def _fresh_picks(world: World, config: SyntheticConfig,
                 rng: np.random.Generator, users: np.ndarray,
                 weights: np.ndarray, fav_brand: np.ndarray,
                 user_band: np.ndarray) -> np.ndarray:
  """One fresh pick per entry of `users` (see the module docstring)."""
  n = len(users)
  n_dom = len(world.domain_names)
  n_brands = max(len(b) for b in world.domain_brands)
  # Inverse-CDF sampling of each entry's domain from its user's weights, as
  # one searchsorted: user u's CDF shifted by u is increasing over all users.
  shifted = (np.cumsum(weights, 1) + np.arange(len(weights))[:, None]).ravel()
  pos = np.searchsorted(shifted, rng.random(n) + users, side="right")
  slot_dom = np.clip(pos - users * n_dom, 0, n_dom - 1)
  loyal = rng.random(n) < config.brand_loyalty
  slot_brand = fav_brand[users, slot_dom]
  slot_band = user_band[users]
  u01 = rng.random(n)
  base_w = world.popularity * np.where(world.volume > 1,
                                       SERIES_LATER_VOLUME_WEIGHT, 1.0)
  picks = np.full(n, -1, np.int64)
  # Sample per group (domain, favourite brand or any, band) with one CDF.
  key = (slot_dom * (n_brands + 1) + np.where(loyal, slot_brand, n_brands)
         ) * 3 + slot_band
  order = np.argsort(key, kind="stable")
  keys_sorted = key[order]
  starts = np.flatnonzero(np.r_[True, keys_sorted[1:] != keys_sorted[:-1]])
  ends = np.r_[starts[1:], n]
  for a, b in zip(starts, ends):
    k = int(keys_sorted[a])
    band, rest = k % 3, k // 3
    d, br = rest // (n_brands + 1), rest % (n_brands + 1)
    cand = world.domain == d
    if br < n_brands and np.any(cand & (world.brand == br)):
      cand = cand & (world.brand == br)
    idx = np.flatnonzero(cand)
    cdf = np.cumsum(base_w[idx] * np.where(world.band[idx] == band,
                                           config.price_band_boost, 1.0))
    slots = order[a:b]
    pick = np.searchsorted(cdf, u01[slots] * cdf[-1], side="right")
    picks[slots] = idx[np.minimum(pick, len(idx) - 1)]
  return picks


def load(input_path: str | None = None, *, on_error: str = "raise",
         **options) -> RecDataset:
  """Loader-registry entry: options are `SyntheticConfig` fields."""
  del on_error  # generated data has no bad records
  if input_path:
    raise ValueError("synthetic: takes no input path (got "
                     f"{input_path!r}); pass size knobs as options")
  return generate(SyntheticConfig.from_options(options))
