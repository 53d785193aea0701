"""Baselines scored on the LMs' ranking candidates (recjax.baselines.candidates)."""
from __future__ import annotations

import numpy as np
import pytest

from recjax.baselines import candidates
from recjax.baselines import cli
from recjax.data.split import held_out
from recjax.prompts import PromptConfig
from recjax.prompts.export import write_task_files
from tiny_data import tiny_data


def test_candidate_metrics_by_hand():
  items = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [2.0, 0.0]])
  users = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  targets = np.array([0, 1, 2])
  cands = np.array([[0, 1, 3], [2, 1, 0], [2, 0, -1]])
  # row 0: scores 1, 0, 2 -> target rank 2; row 1: 0.5, 1, 0 -> rank 1;
  # row 2: 1, 1 (a tie counts against the target), padding -> rank 2.
  m = candidates.candidate_metrics(users, items, targets, cands)
  assert m["hit@1"] == pytest.approx(1 / 3)
  assert m["hit@5"] == 1.0
  assert m["ndcg@5"] == pytest.approx((2 / np.log2(3) + 1) / 3)
  with pytest.raises(ValueError, match="target"):
    candidates.candidate_metrics(users, items, np.array([2, 1, 2]), cands)


def test_baseline_scores_the_prompts_candidates(tmp_path):
  data = tiny_data(n_items=40)
  d = tmp_path / "prepared"
  data.save(d)
  write_task_files(data, d, config=PromptConfig(num_negatives=9,
                                                max_history=4),
                   tasks=("ranking",), vocab_size=300, num_shards=1, seed=3)
  targets, cands = candidates.ranking_cases(data, d, "test")
  # the very lists the ranking records hold
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  spec = {"target_item": tf.io.FixedLenFeature([], tf.string),
          "candidates": tf.io.VarLenFeature(tf.string)}
  files = sorted((d / "tasks" / "ranking").glob("test.tfrecord-*"))
  index = {i: n for n, i in enumerate(data.item_ids)}
  recs = [tf.io.parse_single_example(r, spec) for r in
          tf.data.TFRecordDataset([str(f) for f in files])]
  assert [index[r["target_item"].numpy().decode()] for r in recs] == (
      targets.tolist())
  assert [[index[c.decode()] for c in
           tf.sparse.to_dense(r["candidates"]).numpy()] for r in recs] == (
               cands.tolist())
  cases = list(held_out(data, "test", 4))
  assert targets.tolist() == [c.target for c in cases]
  assert cands.shape == (len(cases), 10)
  assert all(t in row for t, row in zip(targets, cands))
  m = cli.run_baseline("pop", str(d), str(tmp_path / "pop"), log=None)
  assert m["ranking"]["test"]["count"] == len(cases)
  assert 0 <= m["ranking"]["test"]["hit@1"] <= m["ranking"]["test"]["hit@5"]
  # no ranking task: nothing extra
  assert candidates.ranking_cases(data, tmp_path / "nowhere", "test") is None
