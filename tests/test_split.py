"""Leave-one-out on hand-built sequences."""
import numpy as np
import pytest

from recjax.data import split
from recjax.data.prepared import PreparedData


def _data():
  items = [{"id": f"item_{i}", "title": f"T{i}"} for i in range(10)]
  return PreparedData.from_sequences(
      "toy", items, ["u0", "u1", "u2"],
      [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]],
      ratings=[[1, 2, 3, 4, 5], [1, 1], [2, 3, 4]])


def test_train_sequence_drops_two_held_out_items():
  data = _data()
  np.testing.assert_array_equal(split.train_sequence(data, 0), [0, 1, 2])
  np.testing.assert_array_equal(split.train_sequence(data, 1), [5, 6])  # too short
  np.testing.assert_array_equal(split.train_sequence(data, 2), [7])


def test_held_out_targets_and_histories():
  data = _data()
  valid = list(split.held_out(data, "validation"))
  test = list(split.held_out(data, "test"))
  assert [c.user for c in valid] == [0, 2]
  assert [c.target for c in valid] == [3, 8]
  assert [c.target for c in test] == [4, 9]
  np.testing.assert_array_equal(valid[0].history, [0, 1, 2])
  np.testing.assert_array_equal(test[0].history, [0, 1, 2, 3])
  assert test[0].target_rating == 5.0
  np.testing.assert_array_equal(test[1].history_ratings, [2, 3])


def test_history_is_capped_to_most_recent():
  data = _data()
  (case, _) = list(split.held_out(data, "test", max_history=2))
  np.testing.assert_array_equal(case.history, [2, 3])


def test_unknown_split_is_an_error():
  with pytest.raises(ValueError, match="unknown split"):
    list(split.held_out(_data(), "dev"))


def test_save_load_round_trip_is_atomic(tmp_path):
  data = _data()
  out = tmp_path / "prep"
  data.save(out)
  again = PreparedData.load(out)
  assert again.item_ids == data.item_ids and again.user_ids == data.user_ids
  np.testing.assert_array_equal(again.seq_items, data.seq_items)
  with pytest.raises(FileExistsError):
    data.save(out)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["prep"]
