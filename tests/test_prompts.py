"""Prompt families: determinism, correctness and leakage checks on tiny data."""
from __future__ import annotations

import re

import numpy as np
import pytest

from recjax import slots
from recjax.data import split as split_lib
from recjax.prompts import (ALL_TASKS, AUX_TASKS, CONVERSATION_TASKS, REC_TASKS,
                            TASK_SPLITS, TASKS, PromptConfig, common, mim, mlm)
from tiny_data import tiny_data

ID_RE = re.compile(r"item_\d+")
CFG = PromptConfig(num_negatives=9)


@pytest.fixture(scope="module")
def data():
  return tiny_data()


def run(task, data, split, config=CFG, seed=0, shard=None):
  return list(TASKS[task](data, split, config, seed, shard=shard))


def ids_of(data, text_ids):
  index = {it["id"]: i for i, it in enumerate(data.items)}
  return [index[t] for t in text_ids]


def test_registry():
  assert set(TASKS) == set(ALL_TASKS) == set(REC_TASKS + AUX_TASKS +
                                             CONVERSATION_TASKS)
  from recjax.prompts import TEMPLATES
  assert all(len(TEMPLATES[t]) >= 3 for t in ALL_TASKS)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_deterministic_and_seeded(data, task):
  for split in TASK_SPLITS[task]:
    a, b = run(task, data, split), run(task, data, split)
    assert a and a == b  # NaN ratings: same object identity is not needed
    if task not in ("retrieval", "rating", "ie") or split == "train":
      c = run(task, data, split, seed=1)
      assert [(e["inputs"], e["targets"]) for e in a] != [
          (e["inputs"], e["targets"]) for e in c]


@pytest.mark.parametrize("task", ALL_TASKS)
def test_shards_partition_the_output(data, task):
  whole = run(task, data, "train")
  parts = [e for i in range(3) for e in run(task, data, "train", shard=(i, 3))]
  key = lambda e: (e["inputs"], e["targets"])
  assert sorted(map(key, whole)) == sorted(map(key, parts))


@pytest.mark.parametrize("task", ALL_TASKS)
def test_examples_well_formed(data, task):
  for split in TASK_SPLITS[task]:
    for ex in run(task, data, split):
      assert ex["inputs"].strip() and ex["targets"].strip()
      assert ex["task"] == task
      assert 0 <= ex["template_id"] < 6
      assert "USERZQ" not in ex["inputs"]  # no user id anywhere
      assert ex["target_item"]


def test_held_out_case_matches_split(data):
  for split in ("validation", "test"):
    cases = list(split_lib.held_out(data, split, 5))
    mine = [common.held_out_case(data, split, u, 5)
            for u in range(data.num_users)]
    mine = [c for c in mine if c is not None]
    assert len(cases) == len(mine)
    for a, b in zip(cases, mine):
      assert a.user == b.user and a.target == b.target
      np.testing.assert_array_equal(a.history, b.history)


def test_retrieval_targets_are_next_items(data):
  cfg = PromptConfig(item_format="id", max_history=4)
  got = [e["target_item"] for e in run("retrieval", data, "train", cfg)]
  want, hists = [], []
  for u in range(data.num_users):
    seq = split_lib.train_sequence(data, u)
    for t in range(1, len(seq)):
      want.append(f"item_{seq[t]}")
      hists.append([f"item_{i}" for i in seq[max(0, t - 4):t]])
  assert got == want
  exs = run("retrieval", data, "train", cfg)
  for ex, hist, tgt in zip(exs, hists, want):
    assert ID_RE.findall(ex["inputs"]) == hist  # capped, most recent, in order
    assert ex["targets"] == tgt
  for split in ("validation", "test"):
    exs = run("retrieval", data, split, cfg)
    cases = list(split_lib.held_out(data, split, 4))
    assert [e["target_item"] for e in exs] == [f"item_{c.target}" for c in cases]
    for e, c in zip(exs, cases):
      assert ID_RE.findall(e["inputs"]) == [f"item_{i}" for i in c.history]


def test_retrieval_last_prefix_only(data):
  cfg = PromptConfig(retrieval_all_prefixes=False)
  exs = run("retrieval", data, "train", cfg)
  eligible = [u for u in range(data.num_users)
              if len(split_lib.train_sequence(data, u)) >= 2]
  assert len(exs) == len(eligible)


def test_ranking_candidates(data):
  cfg = PromptConfig(item_format="id", num_negatives=9)
  for split in ("validation", "test"):
    exs = run("ranking", data, split, cfg)
    cases = list(split_lib.held_out(data, split, cfg.max_history))
    assert len(exs) == len(cases)
    for ex, c in zip(exs, cases):
      cands = ex["candidates"]
      assert len(cands) == 10 and len(set(cands)) == 10
      assert cands.count(f"item_{c.target}") == 1
      assert ex["targets"] == ex["target_item"] == f"item_{c.target}"
      negatives = set(ids_of(data, cands)) - {c.target}
      assert not negatives & set(data.sequence(c.user).tolist())
      assert ID_RE.findall(ex["inputs"])[-10:] == cands  # listed in order
  # Shuffled: the target is not always in the same slot.
  slots = {ex["candidates"].index(ex["target_item"])
           for ex in run("ranking", data, "test", cfg)}
  assert len(slots) > 3


def test_ranking_with_the_retrieval_prompt(data):
  """ranking_candidates_in_prompt=False: each held-out ranking example reads
  exactly the retrieval prompt of the same user and keeps the candidate list
  of the default ranking prompt (same negatives, same order) for scoring."""
  listed = PromptConfig(item_format="id", num_negatives=9, template=0)
  hidden = PromptConfig(item_format="id", num_negatives=9, template=0,
                        ranking_candidates_in_prompt=False)
  for split in ("validation", "test"):
    default = run("ranking", data, split, listed)
    exs = run("ranking", data, split, hidden)
    retrieval = run("retrieval", data, split, hidden)
    assert len(exs) == len(default) == len(retrieval) > 5
    for ex, d, r in zip(exs, default, retrieval):
      assert ex["inputs"] == r["inputs"] != d["inputs"]
      assert ex["candidates"] == d["candidates"]
      assert ex["targets"] == d["targets"] == r["targets"]
  train = run("ranking", data, "train", hidden)
  assert train and all("Which of these" not in ex["inputs"] for ex in train)


def test_ranking_clamps_negatives():
  small = tiny_data(n_users=5, n_items=12, min_len=8, max_len=10)
  for ex in run("ranking", small, "test", PromptConfig(num_negatives=99)):
    assert 1 < len(ex["candidates"]) <= 12 - 8 + 1


def test_train_never_sees_held_out_items(data):
  cfg = PromptConfig(item_format="id", num_negatives=20,
                     ranking_prefixes_per_user=0, bpr_pairs_per_user=0,
                     mim_examples_per_user=3)
  for u in range(data.num_users):
    seq = data.sequence(u).tolist()
    if len(seq) < 3:
      continue
    held = {f"item_{seq[-1]}", f"item_{seq[-2]}"}
    for task in ("retrieval", "ranking", "rating", "bpr", "mim",
                 "conversation"):
      for ex in run(task, data, "train", cfg, shard=(u, data.num_users)):
        seen = set(ID_RE.findall(ex["inputs"] + " " + ex["targets"]))
        assert not seen & held, (task, u)


def test_item_text_neighbours_come_from_training_sequences_only(data):
  """ILM's item-text pairs join items adjacent in a training sequence (both
  directions, as often as they occur); a transition into a held-out item
  (validation or test) never makes a pair."""
  from collections import Counter
  from recjax.prompts import item_text
  want, held = Counter(), set()
  for u in range(data.num_users):
    train = split_lib.train_sequence(data, u).tolist()
    want.update(zip(train[:-1], train[1:]))
    want.update(zip(train[1:], train[:-1]))
    full = data.sequence(u).tolist()
    held |= {tuple(full[-3:-1]), tuple(full[-2:])} if len(full) >= 3 else set()
  ptr, nbrs = item_text.neighbours(data)
  got = Counter((i, int(j)) for i in range(data.num_items)
                for j in nbrs[ptr[i]:ptr[i + 1]])
  assert got == want
  only_held = {p for p in held if p not in want}
  assert only_held  # the data reaches the case
  slotted = {tuple(x - 1 for x in ex[slots.SLOT_FEATURE])
             for ex in item_text.generate(data, "train", CFG)}
  assert not slotted & only_held


def test_rating(data):
  cfg = PromptConfig(item_format="title")
  exs = run("rating", data, "test", cfg)
  cases = list(split_lib.held_out(data, "test", 20))
  assert len(exs) == len(cases)
  for ex, c in zip(exs, cases):
    assert ex["targets"] == str(int(c.target_rating))
    assert ex["rating"] == c.target_rating
    assert data.items[c.target]["title"] in ex["inputs"]
    assert "(1 to 5)" in ex["inputs"] or "(1-5)" in ex["inputs"] or \
        "1 to 5" in ex["inputs"]
  assert common.format_rating(4.5) == "4.5" and common.format_rating(3.0) == "3"
  no_ratings = tiny_data(ratings=False)
  assert run("rating", no_ratings, "train") == []


def test_mim_targets_are_masked_items(data):
  cfg = PromptConfig(item_format="id", mim_mask_prob=0.3)
  exs = run("mim", data, "train", cfg)
  users = [u for u in range(data.num_users)
           if len(split_lib.train_sequence(data, u)) >= 2]
  assert len(exs) == len(users)
  for ex, u in zip(exs, users):
    window = [f"item_{i}" for i in split_lib.train_sequence(data, u)[-20:]]
    body = ex["inputs"]
    shown = re.findall(r"item_\d+|\[MASK\]", body.replace(
        "hidden as [MASK]:", "").replace("Fill in the [MASK] items", ""))
    assert len(shown) == len(window)
    masked = [w for w, s in zip(window, shown) if s == mim.MASK]
    assert [s for w, s in zip(window, shown) if s != mim.MASK] == [
        w for w, s in zip(window, shown) if s != mim.MASK]
    assert masked and len(masked) < len(window)
    assert ex["targets"] == "; ".join(masked)


def _reconstruct(inputs: str, targets: str) -> str:
  pieces = re.split(r"(<extra_id_\d+>)", targets)
  fill, current = {}, None
  for p in pieces:
    if p.startswith("<extra_id_"):
      current = p
      fill[current] = ""
    elif current is not None:
      fill[current] = p.strip()
  out = re.sub(r"<extra_id_\d+>", lambda m: fill[m.group(0)], inputs)
  return " ".join(out.split())


def test_mlm_is_t5_span_corruption(data):
  cfg = PromptConfig(template=0)
  exs = run("mlm", data, "train", cfg)
  assert len(exs) == data.num_items
  for ex, item in zip(exs, data.items):
    text = mlm.item_text(item)
    assert _reconstruct(ex["inputs"], ex["targets"]) == text
    n_in = len(re.findall(r"<extra_id_\d+>", ex["inputs"]))
    assert n_in >= 1
    assert ex["inputs"].count("<extra_id_0>") == 1
    assert ex["targets"].startswith("<extra_id_0> ")
    n_out = len(re.findall(r"<extra_id_\d+>", ex["targets"]))
    assert n_out in (n_in, n_in + 1)
    words = text.split()
    hidden = len(re.sub(r"<extra_id_\d+>", " ", ex["targets"]).split())
    assert hidden == int(np.round(len(words) * 0.15))
  # Same noise statistics as T5's mask (number of tokens and spans).
  rng = np.random.default_rng(0)
  for length in (2, 5, 17, 40, 128):
    n_noise = min(max(int(np.round(length * 0.15)), 1), length - 1)
    n_spans = max(1, min(int(np.round(n_noise / 3.0)), length - n_noise))
    mask = mlm.random_spans_noise_mask(length, 0.15, 3.0, rng)
    assert mask.sum() == n_noise and not mask[0] and mask[-1]  # as T5
    assert np.sum(mask[1:] & ~mask[:-1]) + int(mask[0]) == n_spans
    rolled = mlm.random_spans_noise_mask(length, 0.15, 3.0, rng, True)
    assert rolled.sum() == n_noise
  # T5's own example.
  words = "Thank you for inviting me to your party last week .".split()
  noise = np.array([w in ("for", "inviting", "last") for w in words])
  assert mlm.span_corrupt(words, noise) == (
      "Thank you <extra_id_0> me to your party <extra_id_1> week .",
      "<extra_id_0> for inviting <extra_id_1> last <extra_id_2>")
  # Where the mask falls varies between items (rolled).
  ends = {e["targets"].endswith(">") for e in exs}
  assert ends == {True, False}


def test_bpr(data):
  cfg = PromptConfig(item_format="title_id")
  exs = run("bpr", data, "validation", cfg)
  cases = list(split_lib.held_out(data, "validation", 20))
  assert len(exs) == len(cases)
  first = []
  for ex, c in zip(exs, cases):
    a, b = ex["candidates"]
    pos = f"item_{c.target}"
    assert (a == pos) != (b == pos)
    assert ex["targets"] == pos == ex["target_item"]
    neg = b if a == pos else a
    assert ids_of(data, [neg])[0] not in data.sequence(c.user).tolist()
    assert f'"{data.items[c.target]["title"]}" ({pos})' in ex["inputs"]
    first.append(a == pos)
  assert 0 < sum(first) < len(first)  # random order


def test_ie_both_directions(data):
  exs = run("ie", data, "train")
  assert len(exs) == 2 * data.num_items
  for i, item in enumerate(data.items):
    fwd, back = exs[2 * i], exs[2 * i + 1]
    assert item["id"] in fwd["inputs"] and fwd["targets"] == item["title"]
    assert item["title"] in back["inputs"] and back["targets"] == item["id"]
    assert fwd["template_id"] < 3 <= back["template_id"]
  one = run("ie", data, "train", PromptConfig(ie_directions="random"))
  assert len(one) == data.num_items


@pytest.mark.parametrize("fmt", ["title", "id", "title_id", "token",
                                 "title_token"])
def test_item_formats(data, fmt):
  cfg = PromptConfig(item_format=fmt)
  ex = run("retrieval", data, "test", cfg)[0]
  case = next(split_lib.held_out(data, "test", 20))
  item = data.items[case.history[-1]]
  want = {"title": item["title"], "id": item["id"],
          "title_id": f'"{item["title"]}" ({item["id"]})',
          "token": f'<i:{item["id"]}>',
          "title_token": f'"{item["title"]}" <i:{item["id"]}>'}[fmt]
  assert want in ex["inputs"]
  tgt = data.items[case.target]
  assert ex["targets"] == {"title": tgt["title"], "id": tgt["id"],
                           "title_id": tgt["id"]}.get(
                               fmt, f'<i:{tgt["id"]}>')
  if fmt == "title":
    assert not ID_RE.search(ex["inputs"])


def test_fixed_template(data):
  for task in ("retrieval", "ranking", "mim", "bpr", "mlm"):
    exs = run(task, data, "train", PromptConfig(template=1))
    assert {e["template_id"] for e in exs} == {1}
  with pytest.raises(ValueError):
    run("retrieval", data, "test", PromptConfig(template=7))


def test_bad_config():
  with pytest.raises(ValueError):
    PromptConfig(item_format="name")


def test_unit_streams_do_not_depend_on_order():
  a = common.Rngs(0, "ranking", "train")
  a.for_unit(3).integers(100, size=7)  # consume part of another stream
  x = a.for_unit(5).integers(1 << 30, size=5).tolist()
  b = common.Rngs(0, "ranking", "train")
  assert b.for_unit(5).integers(1 << 30, size=5).tolist() == x
  fresh = np.random.Generator(np.random.Philox(
      key=np.array([common._stream_key(0, "ranking", "train"), 5], np.uint64)))  # pylint: disable=protected-access
  assert fresh.integers(1 << 30, size=5).tolist() == x
  assert common.Rngs(1, "ranking", "train").for_unit(5).integers(
      1 << 30, size=5).tolist() != x


def test_sample_negatives():
  rng = np.random.default_rng(0)
  for _ in range(500):
    n = int(rng.integers(1, 300))
    exclude = rng.choice(n, size=int(rng.integers(0, n)), replace=False)
    k = int(rng.integers(1, 120))
    neg = common.sample_negatives(rng, n, np.concatenate([exclude, exclude[:2]]),
                                  k)
    assert len(set(neg)) == len(neg) == min(k, n - len(exclude))
    assert not set(neg) & set(exclude.tolist())
    assert all(0 <= x < n for x in neg)


def test_tiny_histories_still_give_nonempty_examples(data):
  cfg = PromptConfig(max_history=1, num_negatives=3)
  for task in ALL_TASKS:
    for split in TASK_SPLITS[task]:
      for ex in run(task, data, split, cfg):
        assert ex["inputs"].strip() and ex["targets"].strip()
        if task in ("retrieval", "ranking", "rating", "bpr"):
          assert len(ex["inputs"].split("; ")) <= 5  # one history item


@pytest.mark.parametrize("task", ["retrieval", "ranking", "bpr"])
def test_user_slot_oracle_leaks_the_target_where_the_user_slot_goes(data,
                                                                    task):
  """The diagnostic leak: 'slot' puts the target's own item slot after the
  history (instead of the user slot), 'text' its mention; 'none' neither."""
  base = dict(num_negatives=5, item_slots="append", user_slot=True,
              max_history=4)
  plain = run(task, data, "test", PromptConfig(**base))
  leak = run(task, data, "test", PromptConfig(**base,
                                              user_slot_oracle="slot"))
  text = run(task, data, "test", PromptConfig(**base,
                                              user_slot_oracle="text"))
  index = {it["id"]: n for n, it in enumerate(data.items)}
  for p, s, t in zip(plain, leak, text):
    target = index[p["target_item"]]
    user = p["slot_items"].index(slots.USER_SLOT_ITEM)
    assert s["slot_items"][user] == target + 1
    assert s["slot_items"][:user] == p["slot_items"][:user]
    assert slots.USER_SLOT_ITEM not in s["slot_items"] + t["slot_items"]
    said = f'"{data.items[target]["title"]}" ({p["target_item"]})'
    assert t["inputs"].count(said) == p["inputs"].count(said) + 1
    assert len(t["slot_items"]) == len(p["slot_items"]) - 1
  with pytest.raises(ValueError, match="user_slot_oracle"):
    PromptConfig(user_slot_oracle="slot")
