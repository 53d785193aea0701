"""Conversational recommendation prompts on the synthetic world and tiny data."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from recjax.data import split as split_lib
from recjax.data.prepare import build_prepared
from recjax.data.prepared import PreparedData
from recjax.prompts import (ALL_TASKS, AUX_TASKS, CONVERSATION_TASKS,
                            REC_TASKS, TASK_SPLITS, TASKS, TEMPLATES,
                            PromptConfig, common, conversation)
from tiny_data import tiny_data

CFG = PromptConfig(max_history=5)
SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def data():
  d = build_prepared("synthetic", None, kcore=3,
                     options={"num_users": 120, "num_items": 120, "seed": 2})
  assert d.num_users > 50
  return d


def run(data, split, config=CFG, seed=0, shard=None):
  return list(TASKS["conversation"](data, split, config, seed, shard=shard))


def test_registered_as_its_own_family():
  assert CONVERSATION_TASKS == ("conversation",)
  assert "conversation" in ALL_TASKS
  assert "conversation" not in REC_TASKS + AUX_TASKS
  assert TASK_SPLITS["conversation"] == SPLITS
  assert TEMPLATES["conversation"] is conversation.TEMPLATES
  assert len(conversation.TEMPLATES) >= 3
  assert common.TASK_CODES["conversation"] == 8
  assert len(set(common.TASK_CODES.values())) == len(common.TASK_CODES)


def test_task_kind_is_retrieval():
  from recjax.infer import evaluation  # pylint: disable=g-import-not-at-top
  assert evaluation.task_kind("synthetic_conversation") == "retrieval"
  assert evaluation.task_kind("synthetic_retrieval") == "retrieval"
  assert evaluation.task_kind("synthetic_mim") is None


def test_deterministic_and_seeded(data):
  for split in SPLITS:
    a, b = run(data, split), run(data, split)
    assert len(a) > 50 and a == b
    c = run(data, split, seed=1)
    assert [e["inputs"] for e in a] != [e["inputs"] for e in c]
    # The seed changes the dialogue, never which item is wanted.
    assert [e["target_item"] for e in a] == [e["target_item"] for e in c]


def test_shard_union_equals_unsharded(data):
  for split in SPLITS:
    whole = run(data, split)
    for count in (2, 3):
      parts = [e for i in range(count)
               for e in run(data, split, shard=(i, count))]
      key = lambda e: (e["inputs"], e["targets"], e["target_item"])
      assert sorted(map(key, parts)) == sorted(map(key, whole))


def test_one_example_per_user_and_no_user_ids(data):
  ctx = common.context(data, CFG)
  for split in SPLITS:
    exs = run(data, split)
    assert len(exs) == sum(1 for _ in TASKS["retrieval"](
        data, split, PromptConfig(max_history=5, retrieval_all_prefixes=False)))
    for ex in exs:
      assert "user_" not in ex["inputs"]
      assert ex["task"] == "conversation" and not ex["candidates"]
      assert np.isnan(ex["rating"])
      assert ex["targets"] == ctx.targets[ctx.ids.index(ex["target_item"])]
      assert ex["inputs"].startswith("User: ")
      assert ex["inputs"].endswith("Assistant:")


def test_refinement_fits_the_target_not_the_suggestion(data):
  table = conversation.attributes(data)
  ctx = common.context(data, CFG)
  kinds = collections.Counter()
  for split in SPLITS:
    cases = list(conversation.cases(data, split, CFG))
    exs = run(data, split)
    assert len(cases) == len(exs)
    for c, ex in zip(cases, exs):
      kinds[c.refinement.kind] += 1
      assert c.refinement in table.refinements(c.target)
      assert table.satisfies(c.target, c.refinement)
      assert not table.satisfies(c.suggestion, c.refinement)
      known = data.sequence(c.user).tolist()
      assert c.suggestion != c.target and c.suggestion not in known
      assert c.suggestion not in c.history
      # The text is made of exactly these parts, mentions from the context.
      assert ex["inputs"] == conversation.TEMPLATES[c.template].format(
          history=common.history_text(ctx, c.history),
          suggestion=ctx.mentions[c.suggestion],
          refinement=table.text(c.target, c.refinement))
      assert ex["target_item"] == ctx.ids[c.target]
      assert ex["template_id"] == c.template
  assert set(kinds) == {"category", "brand", "price"}  # all drawn
  assert table.num_plain == 0  # every synthetic item has attributes


def test_refinement_texts(data):
  table = conversation.attributes(data)
  for item in range(data.num_items):
    leaf = data.items[item]["categories"][-1].split(">")[-1].strip()
    assert table.category[item] == leaf
    by_kind = {r.kind: table.text(item, r) for r in table.refinements(item)}
    assert by_kind["category"] == f"in {leaf}"
    assert by_kind["brand"] == f"by {data.items[item]['brand']}"
    if "price" in by_kind:
      assert by_kind["price"] in conversation.PRICE_BANDS


def test_train_uses_the_last_training_prefix(data):
  cfg = PromptConfig(max_history=3)
  for c in conversation.cases(data, "train", cfg):
    seq = split_lib.train_sequence(data, c.user).tolist()
    assert c.target == seq[-1]
    assert c.history == seq[max(0, len(seq) - 1 - 3):-1]


def test_held_out_splits_use_the_held_out_item(data):
  for split in ("validation", "test"):
    want = list(split_lib.held_out(data, split, CFG.max_history))
    got = list(conversation.cases(data, split, CFG))
    assert [(w.user, w.target, w.history.tolist()) for w in want] == [
        (g.user, g.target, g.history) for g in got]


def test_template_coverage_and_fixed_template(data):
  exs = [e for s in SPLITS for e in run(data, s)]
  assert {e["template_id"] for e in exs} == set(
      range(len(conversation.TEMPLATES)))
  for tid in range(len(conversation.TEMPLATES)):
    fixed = run(data, "test", PromptConfig(max_history=5, template=tid))
    assert {e["template_id"] for e in fixed} == {tid}
    head = conversation.TEMPLATES[tid].split("{history}")[0]
    assert all(e["inputs"].startswith(head) for e in fixed)


def test_item_format_comes_from_the_context(data):
  for fmt in ("title", "id"):
    cfg = PromptConfig(max_history=5, item_format=fmt)
    ctx = common.context(data, cfg)
    for c, ex in zip(conversation.cases(data, "test", cfg),
                     run(data, "test", cfg)):
      assert ctx.mentions[c.suggestion] in ex["inputs"]
      assert ex["targets"] == ctx.targets[c.target]
      if fmt == "title":
        assert ctx.ids[c.suggestion] not in ex["inputs"].split()


def test_price_bands_on_a_hand_made_catalogue():
  # group A: 6 priced items (two tied), group B: 2 priced (too few), C: 3.
  prices = [10.0, 30.0, 20.0, 50.0, 40.0, 40.0, 5.0, 7.0, None, 1.0, 1.0, 2.0]
  groups = ["A"] * 6 + ["B", "B", "A", "C", "C", "C"]
  bands = conversation.price_bands(prices, groups)
  assert bands.tolist() == [0, 1, 0, 2, 1, 1, -1, -1, -1, 0, 0, 2]
  # Via the table: the group is the top-level category; prices as loaders
  # leave them (float or None) or as a string.
  items = [
      dict(id="a", title="A", categories=["Home > Lamps > Desk"], price=10.0),
      dict(id="b", title="B", categories=["Home", "Lamps"], price="$30.00"),
      dict(id="c", title="C", categories=["Home > Rugs"], price=20.0),
      dict(id="d", title="D", categories=["Garden > Tools"], price=99.0),
      dict(id="e", title="E", categories=[], price=3.0, brand="Zed"),
      dict(id="f", title="F", categories=None, price=None, brand=None),
  ]
  table = conversation.Attributes.build(items)
  assert table.band.tolist() == [0, 2, 1, -1, -1, -1]
  assert table.category == ["Desk", "Lamps", "Rugs", "Tools", "", ""]
  assert table.category_keys[0] == {"home", "lamps", "desk"}
  assert table.brand == ["", "", "", "", "Zed", ""]
  assert table.num_plain == 1  # f only
  R = conversation.Refinement
  assert table.refinements(1) == [R("category", "lamps"), R("price", 2)]
  assert table.satisfies(0, R("category", "lamps"))  # a parent category
  assert not table.satisfies(2, R("category", "lamps"))
  assert table.text(1, R("price", 2)) == "premium"
  assert table.text(4, R("brand", "zed")) == "by Zed"
  assert table.refinements(5) == []


def _catalogue_data(items, seqs):
  return PreparedData.from_sequences(
      "hand", items, [f"USERZQ{u}" for u in range(len(seqs))], seqs)


def test_items_without_attributes_say_something_else():
  items = [dict(id=f"item_{i}", title=f"Plain {i}") for i in range(12)]
  seqs = [[0, 1, 2, 3], [4, 5, 6, 11], [7, 8, 9, 10]]
  d = _catalogue_data(items, seqs)
  assert conversation.attributes(d).num_plain == 12
  for split in SPLITS:
    cases = list(conversation.cases(d, split, CFG))
    assert len(cases) == 3
    for c, ex in zip(cases, run(d, split)):
      assert c.refinement == conversation.Refinement("else", None)
      assert "something else" in ex["inputs"].lower()
      assert c.suggestion not in seqs[c.user]


def test_suggestion_falls_back_when_every_item_fits():
  """tiny_data: one brand for all, so a brand refinement cannot be missed."""
  d = tiny_data(n_users=12, n_items=40)
  table = conversation.attributes(d)
  fallback = 0
  for split in SPLITS:
    for c in conversation.cases(d, split, CFG):
      assert c.suggestion not in d.sequence(c.user).tolist()
      fallback += table.satisfies(c.suggestion, c.refinement)
      if c.refinement.kind != "brand":
        assert not table.satisfies(c.suggestion, c.refinement)
  assert fallback > 0


def test_no_example_when_the_catalogue_is_exhausted():
  items = [dict(id=f"item_{i}", title=f"T {i}", brand="B") for i in range(4)]
  d = _catalogue_data(items, [[0, 1, 2, 3], [0, 1, 2]])
  got = list(conversation.cases(d, "test", CFG))
  assert [c.user for c in got] == [1] and got[0].suggestion == 3


def test_rec_conv_mixture(tmp_path):
  import seqio  # pylint: disable=g-import-not-at-top
  from seqio_tasks import registry  # pylint: disable=g-import-not-at-top
  names = registry.register_prepared(tmp_path / "later", dataset_name="convx")
  assert names[-3:] == ["convx_rec", "convx_rec_aux", "convx_rec_conv"]
  tasks = lambda m: {t.name for t in seqio.get_mixture_or_task(m).tasks}
  assert tasks("convx_rec") == {f"convx_{t}" for t in REC_TASKS}
  assert tasks("convx_rec_aux") == {f"convx_{t}" for t in REC_TASKS + AUX_TASKS}
  assert tasks("convx_rec_conv") == {
      f"convx_{t}" for t in REC_TASKS + CONVERSATION_TASKS}
