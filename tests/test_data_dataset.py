"""RecDataset and DatasetBuilder: columns, validation, policies."""
import collections

import numpy as np
import pytest

from recjax.data.dataset import DatasetBuilder, RecDataset, clean_price
from recjax.data.errors import DataError, ErrorPolicy


def _toy():
  return RecDataset.from_records(
      "toy", [{"id": "a", "title": "Apple", "categories": ["Fruit", "Fruit"],
               "price": "$1,299.50"},
              {"id": "b", "title": "Bread", "brand": " Bakery "}],
      [("u1", "a", 3, 5), ("u2", "b", 1), ("u1", "b", 2, 4)])


def test_columns_and_lookups():
  d = _toy()
  assert d.item_ids == ["a", "b"] and d.user_ids == ["u1", "u2"]
  np.testing.assert_array_equal(d.users, [0, 1, 0])
  np.testing.assert_array_equal(d.items, [0, 1, 1])
  np.testing.assert_array_equal(d.timestamps, [3, 1, 2])
  assert d.users.dtype == np.int32 and d.timestamps.dtype == np.float64
  assert d.ratings[0] == 5 and np.isnan(d.ratings[1])
  assert d.item(0) == {"id": "a", "title": "Apple", "categories": ["Fruit"],
                       "brand": None, "description": None, "price": 1299.5}
  assert d.brands[1] == "Bakery"
  assert d.counts() == {"users": 2, "items": 2, "interactions": 3}
  sub = d.select(d.users == 0)
  assert sub.counts() == {"users": 1, "items": 2, "interactions": 2}
  assert sub.num_items == 2  # the catalogue is kept


def test_validation():
  d = _toy()
  with pytest.raises(ValueError, match="titles"):
    RecDataset(**{**d.__dict__, "titles": ["x"]})
  with pytest.raises(ValueError, match="item index out of range"):
    RecDataset(**{**d.__dict__, "items": np.array([0, 1, 2])})
  with pytest.raises(ValueError, match="shape"):
    RecDataset(**{**d.__dict__, "ratings": np.zeros(2)})


def test_prices():
  assert clean_price("$9.99 - $19.99") == 9.99
  assert clean_price("Free to Play") == 0.0
  assert clean_price("call us") is None and clean_price(-1) is None
  assert clean_price(True) is None and clean_price(float("nan")) is None


def test_users_without_interactions_left_are_dropped():
  b = DatasetBuilder("t", ErrorPolicy("skip"))
  b.add_item("a", "A")
  b.add_interaction("gone", "zz", 1, path="log.csv", line=2)
  b.add_interaction("kept", "a", 2, path="log.csv", line=3)
  d = b.build()
  assert d.user_ids == ["kept"] and d.skipped == {"unknown_item": 1}


def test_nothing_to_build_is_an_error():
  b = DatasetBuilder("t", ErrorPolicy("skip"))
  b.add_item("a", "A")
  with pytest.raises(DataError, match="no interactions left"):
    b.build()
  assert isinstance(b.policy.skipped, collections.Counter)
