"""The synthetic world: deterministic, well-formed, and carrying its planted signal."""
import dataclasses

import numpy as np
import pytest

from recjax.data import prepare, synthetic
from recjax.data.synthetic import SyntheticConfig


def _same(a, b):
  for f in dataclasses.fields(a):
    x, y = getattr(a, f.name), getattr(b, f.name)
    if isinstance(x, np.ndarray):
      if not np.array_equal(x, y):
        return False
    elif x != y:
      return False
  return True


def test_same_seed_same_data_different_seed_different_data():
  a = synthetic.generate(SyntheticConfig(seed=7))
  b = synthetic.generate(SyntheticConfig(seed=7))
  c = synthetic.generate(SyntheticConfig(seed=8))
  assert _same(a, b)
  assert not np.array_equal(a.items[:1000], c.items[:1000])
  assert a.titles != c.titles


def test_default_size_and_well_formed():
  data, world = synthetic.generate(return_world=True)
  assert data.num_items == 500 and data.num_users == 1000
  assert 15_000 <= data.num_interactions <= 25_000
  assert len(set(data.titles)) == len(data.titles)  # titles are unique
  assert all(len(c) == 1 and " > " in c[0] for c in data.categories)
  assert all(p > 0 for p in data.prices)
  assert all(data.brands) and all(d.endswith(".") for d in data.descriptions)
  assert set(np.unique(data.ratings)) <= {1, 2, 3, 4, 5}
  pairs = data.users.astype(np.int64) * data.num_items + data.items
  assert len(np.unique(pairs)) > 0.95 * data.num_interactions  # few repeats
  lengths = np.bincount(data.users)
  assert lengths.min() >= 5 and lengths.max() <= 100
  # Rows are grouped by user and strictly increasing in time within a user.
  assert np.all(np.diff(data.users) >= 0)
  same = data.users[1:] == data.users[:-1]
  assert np.all(np.diff(data.timestamps)[same] > 0)
  # Series titles are numbered volumes; products compose brand + kind.
  vols = [t for t in data.titles if ", Volume " in t]
  assert vols and all(world.volume[data.titles.index(t)] > 0 for t in vols)
  for i in np.flatnonzero(world.is_main)[:20]:
    assert data.titles[i].startswith(data.brands[i] + " ")


def _follow_rates(log, world):
  """P(next in targets(prev) | prev has targets), and the chance level."""
  u, it = log
  same = u[1:] == u[:-1]
  prev, nxt = it[:-1][same], it[1:][same]
  counts = np.diff(world.target_ptr)
  has = counts[prev] > 0
  hits = np.mean([n in world.targets_of(p) for p, n in zip(prev[has], nxt[has])])
  chance = counts[prev[has]].mean() / len(world.item_ids)
  return hits, chance


def test_planted_transitions_are_far_above_chance():
  data, world = synthetic.generate(return_world=True)
  hits, chance = _follow_rates((data.users, data.items), world)
  assert chance < 0.02
  assert 0.45 < hits < 0.6  # follow_prob 0.5 + chance
  # Series are read in order: volume k is followed by k+1 half the time.
  same = data.users[1:] == data.users[:-1]
  prev, nxt = data.items[:-1][same], data.items[1:][same]
  in_series = (world.volume[prev] > 0) & (np.diff(world.target_ptr)[prev] > 0)
  nxt_vol = world.volume[nxt[in_series]]
  assert np.mean(nxt_vol == world.volume[prev[in_series]] + 1) > 0.45
  # The signal survives preparation (dedup + 5-core).
  p = prepare.build_prepared("synthetic", None)
  index = {iid: i for i, iid in enumerate(world.item_ids)}
  to_world = np.array([index[it["id"]] for it in p.items])
  users = np.repeat(np.arange(p.num_users), np.diff(p.user_ptr))
  hits, _ = _follow_rates((users, to_world[p.seq_items]), world)
  assert hits > 0.4


def test_follow_prob_zero_removes_the_transition_signal():
  data, world = synthetic.generate(SyntheticConfig(follow_prob=0.0),
                                   return_world=True)
  hits, chance = _follow_rates((data.users, data.items), world)
  assert hits < 5 * chance + 0.02


def test_taste_shows_in_choices_and_ratings():
  data, world = synthetic.generate(return_world=True)
  dom = world.domain[data.items]
  counts = np.zeros((data.num_users, len(world.domain_names)))
  np.add.at(counts, (data.users, dom), 1)
  in_top = dom == counts.argmax(1)[data.users]
  # 10 domains: uniform choice would put ~10-20% in the top one.
  assert in_top.mean() > 0.4
  assert data.ratings[in_top].mean() - data.ratings[~in_top].mean() > 0.15


def test_size_knobs_scale():
  data = synthetic.generate(SyntheticConfig(num_users=3000, num_items=2000,
                                            mean_sequence_length=10))
  assert data.num_items == 2000 and data.num_users == 3000
  assert 27_000 <= data.num_interactions <= 33_000


def test_from_options_and_registry():
  cfg = SyntheticConfig.from_options({"num_users": "10", "follow_prob": "0.2"})
  assert cfg.num_users == 10 and cfg.follow_prob == 0.2
  with pytest.raises(TypeError, match="unknown options"):
    SyntheticConfig.from_options({"users": 3})
  with pytest.raises(ValueError, match="follow_prob"):
    SyntheticConfig(follow_prob=1.5)
  with pytest.raises(ValueError, match="no input path"):
    synthetic.load("/some/path")
