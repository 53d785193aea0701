"""The pure parts of the benchmark scripts, on hand-computed cases."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] /
                       "benchmarks"))

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import math  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

import lm_quality  # pylint: disable=g-import-not-at-top,wrong-import-position
import profile_train_step  # pylint: disable=g-import-not-at-top,wrong-import-position


def _mark(name, ts, tid):
  return {"name": f"ThreadpoolListener::{name}", "ts": ts, "tid": tid,
          "ph": "X", "dur": 0}


def test_pool_regions_pairs_marks_per_thread():
  events = [_mark("StartRegion", 22, 1), _mark("StartRegion", 25, 2),
            _mark("StopRegion", 30, 1), _mark("StopRegion", 41, 2),
            _mark("StopRegion", 50, 3),  # no start on thread 3: dropped
            {"name": "dot.1", "ts": 0, "dur": 5, "tid": 1, "ph": "X"}]
  assert sorted(profile_train_step.pool_regions(events)) == [(22, 30),
                                                              (25, 41)]


def test_wall_split_by_what_ran():
  ops = [(0, 10, "mm", True), (5, 20, "b", False), (12, 16, "c", False),
         (35, 40, "d", False)]
  # [2, 8) lies under the matmul; [22, 30) and [25, 41) cover 22..35 of the
  # gap 20..35 (41 is clipped to the last op's end, 40).
  regions = [(2, 8), (22, 30), (25, 41)]
  split, per_op = profile_train_step.wall_split(ops, regions)
  # 0-10 matmul; 10-20 b (c shares 12-16); 20-22 idle; 22-35 pool only;
  # 35-40 d, with the clipped pool region beside it (ops take precedence).
  assert split == {"matmul": 10, "other_only": 15, "pool_only": 13,
                   "idle": 2}
  assert per_op == {"b": 8, "c": 2, "d": 5}
  assert sum(split.values()) == 40


def test_lm_quality_budget_seconds_and_validation_from_the_log(tmp_path):
  """Training seconds to a step are the logged windows' step counts over
  their rates (25 steps at 0.5/s = 50 s, then 25 at 2.5/s = 10 s)."""
  lines = [{"step": 25, "split": "train", "steps_per_sec": 0.5},
           {"step": 25, "split": "validation", "loss": 3.0},
           {"step": 50, "split": "train", "steps_per_sec": 2.5},
           {"step": 50, "split": "validation", "loss": 2.5}]
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps(x) + "\n" for x in lines))
  seconds = lm_quality.train_seconds(tmp_path)
  assert seconds == {25: 50.0, 50: 60.0}
  assert lm_quality.nearest(seconds, 40) == 50.0
  assert lm_quality.nearest(seconds, 10) is None
  assert lm_quality.validation_losses(tmp_path) == {25: 3.0, 50: 2.5}


def test_lm_quality_binary_standard_error():
  """A mean of 0/1 values: std(ddof=1)/sqrt(n) = sqrt(p(1-p)/(n-1))."""
  x = [1, 0, 0, 1, 0, 0, 0, 0]
  p, n = sum(x) / len(x), len(x)
  mean = p
  sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
  assert math.isclose(lm_quality.binary_se(p, n), sd / math.sqrt(n))


def test_slot_diagnostics_swaps_items_not_padding_or_user_slots():
  import numpy as np  # pylint: disable=g-import-not-at-top
  import slot_diagnostics  # pylint: disable=g-import-not-at-top
  from recjax import slots  # pylint: disable=g-import-not-at-top
  user = slots.USER_SLOT_ITEM
  items = np.array([[3, 1, user, 0], [2, 0, 0, 0]])
  perm = np.array([2, 0, 1])  # item 0 -> 2, 1 -> 0, 2 -> 1 (0-based)
  np.testing.assert_array_equal(
      slot_diagnostics.permute_items(items, perm),
      [[2, 3, user, 0], [1, 0, 0, 0]])


def test_slot_diagnostics_groups_gradient_norms_by_subtree():
  import numpy as np  # pylint: disable=g-import-not-at-top
  import slot_diagnostics  # pylint: disable=g-import-not-at-top
  grads = {"encoder": {"q": {"kernel": np.full((2,), 3.0),
                             "lora_a": np.full((1,), 4.0)}},
           "rsllm": {"mlp_in": {"kernel": np.full((4,), 1.0)},
                     "user_head": {"kernel": np.zeros((2,))}}}
  # The trainer's groups (optimizers.norm_group): adapters, the slot
  # module's children, the LM's subtrees by name.
  assert slot_diagnostics.subtree_norms(grads, "rsllm") == pytest.approx({
      "encoder": 18 ** 0.5, "lora": 4.0, "rsllm/mlp_in": 2.0,
      "rsllm/user_head": 0.0}, rel=1e-6)


def test_lm_quality_retrieval_prompt_gain_is_paired(tmp_path):
  """Three users: the listing prompt ranks the target first for user 0
  only, the retrieval prompt for users 1 and 2: HitRate@1 1/3 -> 2/3,
  paired gains (-1, +1, +1)."""

  def write(d, task, ranks, candidates=("a", "b", "c")):
    (d / "predictions").mkdir(parents=True)
    with open(d / "predictions" / f"{task}.jsonl", "w") as f:
      for n, r in enumerate(ranks):
        f.write(json.dumps({"target_item": f"t{n}", "rank": r,
                            "candidates": list(candidates)}) + "\n")

  write(tmp_path / "listed", "x_ranking", [1, 3, 2])
  write(tmp_path / "scored", "x_rankret_ranking", [2, 1, 1])
  got = lm_quality.retrieval_prompt_gain(
      tmp_path / "listed", "x_ranking", tmp_path / "scored",
      "x_rankret_ranking")
  assert got["hit1_retrieval_prompt"] == round(2 / 3, 4)
  assert got["hit1_gain"] == round(1 / 3, 4)
  sd = math.sqrt(((-1 - 1 / 3) ** 2 + 2 * (1 - 1 / 3) ** 2) / 2)  # ddof 1
  assert got["hit1_gain_se"] == round(sd / math.sqrt(3), 4)
  write(tmp_path / "other", "x_rankret_ranking", [1, 1, 1],
        candidates=("a", "b", "d"))
  with pytest.raises(ValueError, match="ranking examples differ"):
    lm_quality.retrieval_prompt_gain(tmp_path / "listed", "x_ranking",
                                     tmp_path / "other", "x_rankret_ranking")
