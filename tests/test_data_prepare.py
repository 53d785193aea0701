"""build_prepared: dedup, iterative k-core, chronological order, re-indexing, stats."""
import json

import numpy as np
import pytest

from recjax.data import prepare
from recjax.data.errors import DataError
from recjax.data import prepared
from recjax.data.prepared import PreparedData
from test_data_loaders import write  # pylint: disable=g-bad-import-order


def _log(tmp_path, rows, items=None, name="log.csv"):
  """Writes a CSV log (user,item,time[,rating]) and optionally an item file."""
  text = "user,item,time,rating\n" + "".join(
      ",".join(str(x) for x in (tuple(r) + ("",) * (4 - len(r)))) + "\n"
      for r in rows)
  write(tmp_path / name, text)
  options = {}
  if items is not None:
    write(tmp_path / "items.csv", "id,title\n" + "".join(
        f"{i},{t}\n" for i, t in items))
    options["items"] = str(tmp_path / "items.csv")
  return str(tmp_path / name), options


def _sequences(p: PreparedData):
  return {p.user_ids[u]: [p.items[i]["id"] for i in p.sequence(u)]
          for u in range(p.num_users)}


def test_kcore_cascades_until_stable():
  # k=2. u4 is short; dropping it leaves c with one interaction; dropping
  # (u3, c) leaves u3 short; dropping u3 leaves the 2-core {u1,u2} x {a,b}.
  users = np.array([1, 1, 2, 2, 3, 3, 4])
  items = np.array([0, 1, 0, 1, 2, 0, 2])  # a=0, b=1, c=2
  keep, iterations = prepare.kcore_mask(users, items, 2)
  assert keep.tolist() == [True, True, True, True, False, False, False]
  assert iterations == 3
  keep, iterations = prepare.kcore_mask(users, items, 1)
  assert keep.all() and iterations == 0


def test_kcore_can_empty_everything_and_that_is_an_error(tmp_path):
  users = np.array([0, 0, 1])
  items = np.array([0, 1, 0])
  keep, _ = prepare.kcore_mask(users, items, 2)
  assert not keep.any()
  path, opts = _log(tmp_path, [("u", "a", 1), ("u", "b", 2), ("v", "a", 3)])
  with pytest.raises(DataError, match="nothing left after filtering"):
    prepare.build_prepared("csv", path, kcore=2, options=opts)


def test_kcore_five_exact_counts(tmp_path):
  # 6 users x items i0..i5: users u0..u4 rate i0..i4 (5 each); u5 rates
  # i0..i3 + i5 (5 interactions). i5 has 1 interaction -> dropped, then u5
  # has 4 -> dropped. Result: 5 users x 5 items, 25 interactions.
  rows = [(f"u{u}", f"i{i}", u * 10 + i) for u in range(5) for i in range(5)]
  rows += [("u5", f"i{i}", 100 + i) for i in (0, 1, 2, 3, 5)]
  path, opts = _log(tmp_path, rows)
  p = prepare.build_prepared("csv", path, kcore=5, options=opts)
  kc = p.stats["filters"][1]
  assert kc == {"name": "kcore", "k": 5, "iterations": 2, "removed": 5,
                "after": {"users": 5, "items": 5, "interactions": 25}}
  assert p.stats["final"] == {"users": 5, "items": 5, "interactions": 25}
  assert p.user_ids == ["u0", "u1", "u2", "u3", "u4"]
  assert [it["id"] for it in p.items] == ["i0", "i1", "i2", "i3", "i4"]


@pytest.mark.parametrize("policy,expected,removed", [
    ("first", {"u": ["a", "b"]}, 2),
    ("last", {"u": ["b", "a"]}, 2),
    ("keep", {"u": ["a", "b", "a", "a"]}, 0),
])
def test_dedup_policies(tmp_path, policy, expected, removed):
  # File order is not time order: 'first'/'last' are chronological.
  rows = [("u", "a", 5, 1), ("u", "b", 3, 2), ("u", "a", 1, 3), ("u", "a", 9, 4)]
  path, opts = _log(tmp_path, rows)
  p = prepare.build_prepared("csv", path, kcore=0, dedup=policy, options=opts)
  assert _sequences(p) == expected
  dedup = p.stats["filters"][0]
  assert dedup["name"] == "dedup" and dedup["removed"] == removed
  if policy == "first":
    np.testing.assert_array_equal(p.ratings(0), [3, 2])
    np.testing.assert_array_equal(p.timestamps(0), [1, 3])
  if policy == "last":
    np.testing.assert_array_equal(p.ratings(0), [2, 4])


def test_chronological_order_with_stable_ties(tmp_path):
  rows = [("u", "x", 2), ("u", "y", 1), ("v", "x", 7), ("u", "z", 2),
          ("u", "w", 1)]
  path, opts = _log(tmp_path, rows)
  p = prepare.build_prepared("csv", path, kcore=0, options=opts)
  assert _sequences(p) == {"u": ["y", "w", "x", "z"], "v": ["x"]}
  np.testing.assert_array_equal(p.timestamps(0), [1, 1, 2, 2])
  assert np.isnan(p.seq_ratings).all() and not p.has_ratings


def test_reindexing_is_catalogue_order_and_drops_unused_items(tmp_path):
  rows = [("v", "i3", 1, 5), ("u", "i1", 2, 4), ("u", "i3", 3, 3)]
  path, opts = _log(tmp_path, rows, items=[("i1", "One"), ("i2", "Two"),
                                           ("i3", "Three")])
  p = prepare.build_prepared("csv", path, kcore=0, options=opts)
  assert [it["id"] for it in p.items] == ["i1", "i3"]  # catalogue order
  assert p.items[1] == {"id": "i3", "title": "Three", "categories": [],
                        "brand": None, "description": None, "price": None}
  assert p.user_ids == ["v", "u"]  # first appearance
  np.testing.assert_array_equal(p.user_ptr, [0, 1, 3])
  np.testing.assert_array_equal(p.seq_items, [1, 0, 1])
  assert p.stats == {
      "raw": {"users": 2, "items": 3, "interactions": 3},
      "filters": [
          {"name": "dedup", "policy": "first", "removed": 0,
           "after": {"users": 2, "items": 2, "interactions": 3}},
          {"name": "kcore", "k": 0, "iterations": 0, "removed": 0,
           "after": {"users": 2, "items": 2, "interactions": 3}}],
      "skipped": {}, "items_without_interactions": 1,
      "final": {"users": 2, "items": 2, "interactions": 3}}
  assert p.meta == {"source": "csv", "input": path, "kcore": 0,
                    "dedup": "first", "max_history": 20, "on_error": "raise",
                    "options": opts, "item_order": "catalogue",
                    "user_order": "first_appearance"}
  assert p.name == "log"


def test_skipped_reasons_reach_stats(tmp_path):
  rows = [("u", "a", 1), ("u", "b", "never"), ("u", "zz", 3), ("u", "b", 4)]
  path, opts = _log(tmp_path, rows, items=[("a", "A"), ("b", "B")])
  with pytest.raises(DataError, match=r"log.csv:3: field 'time'"):
    prepare.build_prepared("csv", path, kcore=0, options=opts)
  p = prepare.build_prepared("csv", path, kcore=0, on_error="skip",
                             options=opts)
  assert p.stats["skipped"] == {"bad_timestamp": 1, "unknown_item": 1}
  assert p.meta["on_error"] == "skip"
  assert p.num_interactions == 2


def test_prepare_dataset_writes_atomically(tmp_path):
  path, opts = _log(tmp_path, [("u", "a", 1, 5), ("u", "b", 2, 4)])
  out = tmp_path / "prepared"
  p = prepare.prepare_dataset("csv", path, out, kcore=0, name="tiny",
                              options=opts)
  back = PreparedData.load(out)
  assert back.name == "tiny" and back.items == p.items
  np.testing.assert_array_equal(back.seq_ratings, [5, 4])
  stats = json.loads((out / "stats.json").read_text())
  assert stats["final"] == {"users": 1, "items": 2, "interactions": 2}
  with pytest.raises(FileExistsError):
    prepare.prepare_dataset("csv", path, out, kcore=0, options=opts)
  # A failing run leaves neither the target nor a temporary directory.
  bad, _ = _log(tmp_path, [("u", "a", "x")], name="bad.csv")
  with pytest.raises(DataError):
    prepare.prepare_dataset("csv", bad, tmp_path / "never", kcore=0)
  assert sorted(x.name for x in tmp_path.iterdir()) == [
      "bad.csv", "log.csv", "prepared"]


def test_synthetic_prepares_with_string_options():
  p = prepare.build_prepared("synthetic", None, options={
      "num_users": "60", "num_items": "40", "seed": "3"})
  assert p.name == "synthetic" and p.meta["kcore"] == 5
  assert p.stats["raw"]["users"] == 60
  assert p.num_interactions == p.stats["final"]["interactions"] > 0
  assert all(np.all(np.diff(p.timestamps(u)) > 0) for u in range(p.num_users))
  assert min(np.diff(p.user_ptr)) >= 5


def test_argument_checks():
  with pytest.raises(ValueError, match="dedup"):
    prepare.build_prepared("synthetic", None, dedup="newest")
  with pytest.raises(ValueError, match="on_error"):
    prepare.build_prepared("synthetic", None, on_error="ignore")
  with pytest.raises(ValueError, match="needs an input path"):
    prepare.build_prepared("movielens", None)


def test_read_items_names_file_and_line(tmp_path):
  path, opts = _log(tmp_path, [("u", "a", 1, 5), ("u", "b", 2, 4)])
  out = tmp_path / "prepared"
  p = prepare.prepare_dataset("csv", path, out, kcore=0, name="tiny",
                              options=opts)
  assert prepared.read_items(out) == p.items
  items = out / "items.jsonl"
  lines = items.read_text().splitlines()
  items.write_text(lines[0] + "\n{oops\n")
  with pytest.raises(ValueError, match=r"items.jsonl:2: not JSON"):
    prepared.read_items(out)
  items.write_text(lines[0] + '\n{"index": 1, "title": "b"}\n')
  with pytest.raises(ValueError, match=r"items.jsonl:2: field 'id' missing"):
    PreparedData.load(out)
  with pytest.raises(FileNotFoundError, match="run `recjax prepare`"):
    prepared.read_items(tmp_path / "nothing")
