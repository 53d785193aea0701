"""Metrics on tiny cases computed by hand (the arithmetic is in the comments)."""
import math

import numpy as np
import pytest

from recjax.infer import metrics as M

L3, L5, L7 = 1 / math.log2(3), 1 / math.log2(5), 1 / math.log2(7)


def test_ranking_metrics_hand_computed_with_duplicates():
  # ranks: 'a' 1; 'b' 2 (the repeated 'x' is dropped, else it would be 3);
  # 'c' 6; 'd' absent (0).
  targets = ["a", "b", "c", "d"]
  preds = [["a", "x", "y"], ["x", "x", "b"],
           ["x", "y", "z", "w", "v", "c"], ["x"]]
  m = M.ranking_metrics(targets, preds)
  assert m["count"] == 4
  assert m["recall@1"] == pytest.approx(1 / 4)
  assert m["hit@1"] == m["recall@1"]
  assert m["recall@5"] == pytest.approx(2 / 4)
  assert m["recall@10"] == pytest.approx(3 / 4)
  assert m["recall@20"] == pytest.approx(3 / 4)
  # NDCG@5 = (1 + 1/log2 3) / 4 = 0.407732; NDCG@10 adds 1/log2 7 -> 0.496784.
  assert m["ndcg@5"] == pytest.approx((1 + L3) / 4)
  assert m["ndcg@5"] == pytest.approx(0.407732, abs=1e-6)
  assert m["ndcg@10"] == pytest.approx((1 + L3 + L7) / 4)
  assert m["ndcg@20"] == m["ndcg@10"]
  # MRR = (1 + 1/2 + 1/6 + 0) / 4 = 0.416667; MRR@5 drops the 1/6.
  assert m["mrr"] == pytest.approx(0.416667, abs=1e-6)
  assert m["mrr@5"] == pytest.approx(1.5 / 4)
  assert M.rank_of("b", ["x", "x", "b"]) == 2
  assert M.dedupe([3, 1, 3, 2, 1]) == [3, 1, 2]


def test_retrieval_metric_fn_seqio_shape():
  # 'item_3' at rank 2 of "item_1; item_3"; 'item_5' at rank 1 (repeat dropped).
  m = M.retrieval_metric_fn(["item_3", {"target_item": "item_5"}],
                            ["item_1; item_3", ["item_5", "item_5"]])
  assert m["recall@1"] == pytest.approx(0.5)
  assert m["mrr"] == pytest.approx((0.5 + 1) / 2)
  assert m["ndcg@5"] == pytest.approx((L3 + 1) / 2)


def test_rank_from_scores_ties_and_masking():
  scores = np.array([[0.1, 0.9, 0.5, 0.9],
                     [0.5, 0.5, 0.5, 0.1]])
  targets = np.array([2, 1])
  # Row 0: two items (0.9, 0.9) above the target -> rank 3 under every policy.
  # Row 1: two other items tie with the target: pessimistic 3, optimistic 1,
  # index (item 0 precedes item 1; item 2 follows) 2.
  np.testing.assert_array_equal(M.ranks_from_scores(scores, targets), [3, 3])
  np.testing.assert_array_equal(
      M.ranks_from_scores(scores, targets, ties="optimistic"), [3, 1])
  np.testing.assert_array_equal(
      M.ranks_from_scores(scores, targets, ties="index"), [3, 2])
  # Masking item 1 in row 0 leaves one better item -> rank 2; the target
  # (listed in row 1's history) is never masked, item 0 is -> rank 2.
  np.testing.assert_array_equal(
      M.ranks_from_scores(scores, targets, exclude=[[1], [0, 1]]), [2, 2])
  mask = np.array([[False, True, False, False], [True, True, False, False]])
  np.testing.assert_array_equal(
      M.ranks_from_scores(scores, targets, exclude=mask), [2, 2])
  m = M.rank_metrics_from_scores(scores, targets, exclude=[[1], [0, 1]])
  assert m["recall@1"] == 0.0 and m["recall@5"] == 1.0
  assert m["ndcg@5"] == pytest.approx(L3)  # both at rank 2
  assert m["mrr"] == pytest.approx(0.5)
  with pytest.raises(ValueError):
    M.ranks_from_scores(scores, targets, ties="random")


def test_top_k_excludes_and_breaks_ties_by_index():
  scores = np.array([[0.5, 0.5, 0.9, 0.1]])
  np.testing.assert_array_equal(M.top_k(scores, 3), [[2, 0, 1]])
  np.testing.assert_array_equal(M.top_k(scores, 3, exclude=[[2, 0]]), [[1, 3, -1]])


def test_candidate_rank_metric_fn():
  # Example 0: correct candidate scores -2, one better (-1) -> rank 2.
  # Example 1: correct -5, other -4 -> rank 2.
  m = M.candidate_rank_metric_fn(
      [(0, False), (0, True), (0, False), (1, True), (1, False)],
      [-1.0, -2.0, -3.0, -5.0, -4.0])
  assert m["hit@1"] == 0.0 and m["hit@5"] == 1.0
  assert m["ndcg@5"] == pytest.approx(L3)
  assert m["mrr"] == pytest.approx(0.5)


def test_valid_ratio():
  preds = ["item_1", "item_9; item_1", "", "bogus"]
  cat = {"item_1", "item_2"}
  # First id only: item_1 valid; item_9, '', bogus invalid -> 1/4.
  assert M.valid_ratio(preds, cat) == pytest.approx(0.25)
  # Every id: item_1, item_9, item_1, bogus -> 2 valid of 4.
  assert M.valid_ratio(preds, cat, first_only=False) == pytest.approx(0.5)


def test_llara_metrics():
  cands = [["Queen", "ABBA", "Muse", "Blur"]] * 3
  # 'queen ' -> one candidate, correct; 'ABBA or Blur' -> two candidates,
  # invalid; 'Blur' -> one candidate, wrong. HR@1 = 1 correct / 2 valid.
  m = M.llara_metrics(["Queen", "ABBA", "Muse"],
                      ["queen ", "I think ABBA or Blur", "Blur"], cands)
  assert m["hit_ratio@1"] == pytest.approx(0.5)
  assert m["valid_ratio"] == pytest.approx(2 / 3)
  assert m["hit@1_all"] == pytest.approx(1 / 3)


def test_rating_metrics_decoded():
  # Parsed pairs (4, 4), (2, 3.5), (3, 1); 'five' unparseable.
  # Errors 0, 1.5, -2: RMSE = sqrt((0 + 2.25 + 4) / 3) = 1.443376; MAE = 3.5 / 3.
  m = M.rating_metrics([4, "2", 5, 3], ["4", "3.5 stars", "five", "1"])
  assert m["rmse"] == pytest.approx(1.443376, abs=1e-6)
  assert m["mae"] == pytest.approx(3.5 / 3)
  assert m["invalid"] == 1 and m["valid_ratio"] == pytest.approx(0.75)


def test_rating_from_token_scores():
  # Uniform logits -> expectation 3 (softmax is shift invariant, so raw logits
  # of 1 give the same). p = (0, 0, 0, .5, .5) -> 4.5.
  neg = -1e9
  scores = [[1.0] * 5, [neg, neg, neg, math.log(0.5), math.log(0.5)]]
  np.testing.assert_allclose(M.expected_rating(np.array(scores)), [3.0, 4.5])
  # Targets 3 and 5: errors 0 and -0.5 -> RMSE sqrt(0.25 / 2), MAE 0.25.
  m = M.rating_metrics_from_token_scores(["3", "5"], scores)
  assert m["rmse"] == pytest.approx(math.sqrt(0.125))
  assert m["mae"] == pytest.approx(0.25)


def test_as_seqio_metric_binds_kwargs():
  fn = M.as_seqio_metric(M.valid_ratio_metric, catalogue={"a"})
  assert fn(["a", "a"], ["a", "b"]) == {"valid_ratio": 0.5}
