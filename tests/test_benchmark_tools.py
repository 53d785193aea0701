"""The pure parts of the benchmark scripts, on hand-computed cases."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] /
                       "benchmarks"))

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
