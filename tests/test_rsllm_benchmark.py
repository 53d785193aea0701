"""The pure metric functions of benchmarks/rsllm_lastfm.py, on hand-computed cases."""
import math
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] /
                       "benchmarks"))

import _cli_runs  # pylint: disable=g-import-not-at-top,wrong-import-position
import rsllm_lastfm as rb  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_candidate_metrics_from_a_score_matrix():
  scores = np.array([[0.1, 0.9, 0.3],    # target col 1: best -> rank 1
                     [0.5, 0.2, 0.4],    # target col 2: rank 2
                     [0.7, 0.7, 0.1],    # target col 0: tie -> rank 2
                     [0.0, 0.1, 0.2]])   # target col 0: rank 3
  m = rb.candidate_metrics(scores, np.array([1, 2, 0, 0]))
  assert m["rank"].tolist() == [1, 2, 2, 3]
  assert m["hit1"].tolist() == [1.0, 0.0, 0.0, 0.0]
  want = [1.0, 1 / math.log2(3), 1 / math.log2(3), 0.5]
  np.testing.assert_allclose(m["ndcg10"], want)


def test_ndcg10_cuts_at_ten_and_absent():
  np.testing.assert_allclose(rb.ndcg10_of_ranks(np.array([1, 10, 11, 0])),
                             [1.0, 1 / math.log2(11), 0.0, 0.0])


def test_candidate_metrics_twenty_candidates_rank_eleven():
  scores = np.arange(20, dtype=np.float64)[None, :]  # col 19 best
  m = rb.candidate_metrics(scores, np.array([9]))    # 10 higher -> rank 11
  assert m["rank"].tolist() == [11]
  assert m["ndcg10"].tolist() == [0.0]


def test_llara_per_user_matches_llara_metrics():
  from recjax.infer.metrics import llara_metrics
  targets = ["Muse", "Enigma", "Blur", "Oasis"]
  preds = ["muse ", "Enigma and Blur", "nothing", "Blur"]
  cands = [["Muse", "Blur"], ["Enigma", "Blur"], ["Blur", "Oasis"],
           ["Blur", "Oasis"]]
  c, v = rb.llara_per_user(targets, preds, cands)
  assert c.tolist() == [1.0, 0.0, 0.0, 0.0]
  assert v.tolist() == [1.0, 0.0, 0.0, 1.0]
  ref = llara_metrics(targets, preds, cands)
  assert ref["hit_ratio@1"] == pytest.approx(c.sum() / v.sum())  # 1/2
  assert ref["valid_ratio"] == pytest.approx(v.mean())           # 2/4


def test_ratio_se_all_valid_is_plain_se():
  c = np.array([1, 0, 1, 1, 0], float)
  r, se = rb.ratio_mean_se(c, np.ones(5))
  assert r == pytest.approx(0.6)
  assert se == pytest.approx(np.std(c, ddof=1) / math.sqrt(5))


def test_ratio_se_delta_method_by_hand():
  c = np.array([1, 0, 0, 1], float)
  v = np.array([1, 1, 0, 1], float)
  r, se = rb.ratio_mean_se(c, v)
  assert r == pytest.approx(2 / 3)
  # z = (c - r v) / mean(v), mean(v) = 3/4:
  z = np.array([1 / 3, -2 / 3, 0, 1 / 3]) / 0.75
  assert se == pytest.approx(np.std(z, ddof=1) / 2)
  # No valid answer: LLaRA's HitRatio@1 is the constant 0.
  assert rb.ratio_mean_se(np.zeros(3), np.zeros(3)) == (0.0, 0.0)
  assert math.isnan(rb.ratio_mean_se(np.zeros(0), np.zeros(0))[0])


def test_paired_ratio_diff_all_valid_is_paired_se():
  a = np.array([1, 1, 0, 1, 0, 1], float)
  b = np.array([0, 1, 0, 0, 0, 1], float)
  one = np.ones(6)
  d = rb.paired_ratio_diff(a, one, b, one)
  diff = a - b  # [1, 0, 0, 1, 0, 0]: mean 1/3, sd sqrt(4/15)
  assert d["diff"] == pytest.approx(round(1 / 3, 4))
  assert d["se"] == pytest.approx(round(math.sqrt(4 / 15) / math.sqrt(6), 4))
  assert d["se"] == pytest.approx(round(np.std(diff, ddof=1) / math.sqrt(6),
                                        4))
  with pytest.raises(ValueError):
    rb.paired_ratio_diff(a, one, b[:3], one[:3])
  # b never valid (HitRatio@1 = 0, constant): the se is a's alone.
  d0 = rb.paired_ratio_diff(a, one, np.zeros(6), np.zeros(6))
  assert d0["diff"] == pytest.approx(round(4 / 6, 4))
  assert d0["se"] == pytest.approx(round(rb.ratio_mean_se(a, one)[1], 4))


def test_paired_diff_and_mean_se():
  a = {"m": np.array([1.0, 0.0, 1.0, 1.0]), "u": np.array(["x", "y", "z", "w"])}
  b = {"m": np.array([0.0, 0.0, 1.0, 0.0]), "u": a["u"]}
  d = _cli_runs.paired_diff(a, b, "m", "u")
  # differences [1, 0, 0, 1]: mean 0.5, sd sqrt(1/3), se sqrt(1/3)/2
  assert d["diff"] == 0.5
  assert d["se"] == pytest.approx(round(math.sqrt(1 / 3) / 2, 4))
  assert d["z"] == pytest.approx(round(0.5 / d["se"], 2))
  with pytest.raises(ValueError):
    _cli_runs.paired_diff(a, {"m": b["m"], "u": a["u"][::-1]}, "m", "u")
  mean, se = _cli_runs.mean_se(np.array([2.0, 4.0]))
  assert (mean, se) == (3.0, pytest.approx(math.sqrt(2) / math.sqrt(2)))
  assert math.isnan(_cli_runs.mean_se(np.array([1.0]))[1])


def test_llara_users_subset():
  ids = ["train_0", "valid_3", "test_0", "test_12", "xtest_1", "train_test_2"]
  assert rb.llara_users(ids).tolist() == [False, False, True, True, False,
                                          False]
  arrays = {"correct": np.array([1, 0, 1, 0, 1, 1], float),
            "valid": np.ones(6), "ndcg10": np.zeros(6)}
  s = rb.summarize(arrays, rb.llara_users(ids))
  assert s["n"] == 2 and s["hr1"] == 0.5 and s["valid_ratio"] == 1.0
  assert (s["correct_n"], s["valid_n"], s["hit1_all"]) == (1, 2, 0.5)


def test_compare_llara_rows():
  rows = [{"seq": [1, 2], "next": 3}, {"seq": [5], "next": 6},
          {"seq": [7], "next": 8}]
  cases = {"test_0": (["1", "2"], "3"), "test_1": (["4", "5"], "6"),
           "train_0": (["1"], "2")}
  r = rb.compare_llara_rows(cases, rows)
  assert r == {"n": 3, "equal": 1, "missing": 1, "mismatched": ["test_1"]}
