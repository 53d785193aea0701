"""The quickstart comparison: table text, tolerant loaders, the PNG (real files, no mocks)."""
import json
import math

import pytest

from recjax.infer import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

LM_REC = {"retrieval": {"recall@5": 0.125, "recall@10": 0.25, "ndcg@5": 0.0625,
                        "ndcg@10": 0.1},
          "ranking": {"hit@1": 0.5},
          "rating": {"rmse": 1.0123456}}
POP = {"retrieval": {"recall@5": 0.05, "hit@10": 0.1, "ndcg@5": 0.03,
                     "ndcg@10": 0.04, "recall@1": 0.01}}


def test_comparison_table_exact():
  got = report.comparison_table([("rec", LM_REC), ("pop", POP),
                                 ("empty", {})])
  assert got == (
      "| model | retrieval Recall@5 | retrieval Recall@10 | retrieval NDCG@5 "
      "| retrieval NDCG@10 | ranking HitRate@1 | rating RMSE |\n"
      "|---|---:|---:|---:|---:|---:|---:|\n"
      "| rec | 0.1250 | 0.2500 | 0.0625 | 0.1000 | 0.5000 | 1.0123 |\n"
      # hit@10 fills Recall@10 (one relevant item: the same number); the
      # baseline's retrieval recall@1 is not the ranking task's HitRate@1.
      "| pop | 0.0500 | 0.1000 | 0.0300 | 0.0400 | \u2013 | \u2013 |\n"
      "| empty | \u2013 | \u2013 | \u2013 | \u2013 | \u2013 | \u2013 |\n")


def test_load_lm_metrics_tolerates_names_and_nesting(tmp_path):
  d = tmp_path / "eval"
  d.mkdir()
  (d / "metrics.json").write_text(json.dumps({"tasks": {
      "synthetic_retrieval": {"Recall@5": 0.2, "recall_at_10": 0.3,
                              "NDCG@5": 0.1, "ndcg@10": 0.15, "count": 30,
                              "note": "beam 20"},
      "synthetic_ranking_test": {"metrics": {"HR@1": 0.4, "hit_rate@5": 0.9}},
      "synthetic_rating": {"rmse": 0.9, "mae": 0.7},
      "synthetic_mim": {"accuracy": 0.5},
  }, "step": 100}))
  m = report.load_lm_metrics(d)
  assert m == {
      "retrieval": {"recall@5": 0.2, "recall@10": 0.3, "ndcg@5": 0.1,
                    "ndcg@10": 0.15, "count": 30.0},
      "ranking": {"hit@1": 0.4, "hit@5": 0.9},
      "rating": {"rmse": 0.9, "mae": 0.7}}
  assert report.load_lm_metrics(d / "metrics.json") == m  # a file path works
  row = report.comparison_table([("rec", m)]).splitlines()[2]
  assert row == "| rec | 0.2000 | 0.3000 | 0.1000 | 0.1500 | 0.4000 | 0.9000 |"

  # `recjax eval`'s layout (recjax.infer.evaluation.write_outputs): the tasks
  # under "metrics", beside run metadata.
  ev = tmp_path / "eval_cmd"
  ev.mkdir()
  (ev / "metrics.json").write_text(json.dumps({
      "step": 200, "checkpoint": "/m/checkpoint_200", "split": "test",
      "mixture_or_task_name": "synthetic_rec",
      "skipped": {"synthetic_mim": "not a rec task"},
      "metrics": {"synthetic_retrieval": {"recall@5": 0.5, "ndcg@10": 0.25},
                  "synthetic_rating": {"rmse": 1.5}}}))
  assert report.load_lm_metrics(ev) == {
      "retrieval": {"recall@5": 0.5, "ndcg@10": 0.25},
      "rating": {"rmse": 1.5}}

  two = tmp_path / "two"
  two.mkdir()
  (two / "metrics.json").write_text(json.dumps({"tasks": {
      "a_retrieval": {"recall@5": 0.1}, "b_retrieval": {"recall@5": 0.2}}}))
  with pytest.raises(ValueError, match="several datasets"):
    report.load_lm_metrics(two)
  assert report.load_lm_metrics(two, dataset="b") == {
      "retrieval": {"recall@5": 0.2}}
  with pytest.raises(FileNotFoundError):
    report.load_lm_metrics(tmp_path / "missing")
  (two / "metrics.json").write_text("{\"tasks\": ")
  with pytest.raises(ValueError, match="metrics.json:1: not valid JSON"):
    report.load_lm_metrics(two)


def test_load_baseline_metrics_reads_the_test_split(tmp_path):
  (tmp_path / "metrics.json").write_text(json.dumps({
      "model": "pop", "validation": {"recall@5": 0.9},
      "test": {"recall@5": 0.25, "recall@10": 0.5, "hit@10": 0.5,
               "ndcg@5": 0.125, "ndcg@10": 0.2, "mrr": 0.1, "count": 8.0},
      "variants": {"test_unmasked": {"recall@5": 0.0}}}))
  m = report.load_baseline_metrics(tmp_path)
  assert m == {"retrieval": {"recall@5": 0.25, "recall@10": 0.5, "hit@10": 0.5,
                             "ndcg@5": 0.125, "ndcg@10": 0.2, "mrr": 0.1,
                             "count": 8.0}}
  (tmp_path / "metrics.json").write_text(json.dumps({"tasks": {}}))
  with pytest.raises(ValueError, match="field 'test'"):
    report.load_baseline_metrics(tmp_path)


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_load_training_curve(tmp_path):
  _write_jsonl(tmp_path / "metrics.jsonl", [
      {"step": 10, "split": "train", "loss": 3.0, "accuracy": 0.1},
      {"step": 20, "split": "train", "loss": 2.5},
      {"step": 20, "split": "validation", "loss": 2.75, "accuracy": 0.2},
      # resumed from step 10: step 20 is logged again, the last record wins
      {"step": 20, "split": "train", "loss": 2.4},
      {"step": 30, "split": "train", "loss": "nan"},
  ])
  c = report.load_training_curve(tmp_path)
  assert c["train"][:2] == [[10.0, 3.0], [20.0, 2.4]]
  assert c["train"][2][0] == 30.0 and math.isnan(c["train"][2][1])
  assert c["validation"] == [[20.0, 2.75]]
  only_train = tmp_path / "t"
  only_train.mkdir()
  _write_jsonl(only_train / "metrics.jsonl", [{"step": 1, "split": "train",
                                               "loss": 1.0}])
  assert report.load_training_curve(only_train) == {"train": [[1.0, 1.0]]}
  with open(only_train / "metrics.jsonl", "a") as f:
    f.write("{oops\n")
  with pytest.raises(ValueError, match="metrics.jsonl:2: not valid JSON"):
    report.load_training_curve(only_train)


def test_plot_writes_a_png_atomically(tmp_path):
  curves = {"rec": {"train": [[1, 3.0], [2, 2.0], [3, 1.5]],
                    "validation": [[3, 1.8]]},
            "rec_aux": {"train": [[1, 3.2], [2, 2.2], [3, 1.4]]}}
  out = report.plot(curves, [("rec", LM_REC), ("pop", POP)],
                    tmp_path / "fig" / "results.png")
  data = out.read_bytes()
  assert data[:8] == PNG_SIGNATURE and len(data) > 1000
  assert sorted(p.name for p in out.parent.iterdir()) == ["results.png"]
  # Nothing to draw still gives a valid figure.
  empty = report.plot({}, [], tmp_path / "empty.png").read_bytes()
  assert empty[:8] == PNG_SIGNATURE


def test_report_command_writes_three_files(tmp_path, capsys):
  lm = tmp_path / "lm_eval"
  lm.mkdir()
  (lm / "metrics.json").write_text(json.dumps({"tasks": {
      "synthetic_retrieval": LM_REC["retrieval"],
      "synthetic_ranking": LM_REC["ranking"],
      "synthetic_rating": LM_REC["rating"]}}))
  base = tmp_path / "pop"
  base.mkdir()
  (base / "metrics.json").write_text(json.dumps({"test": POP["retrieval"]}))
  run = tmp_path / "run"
  run.mkdir()
  _write_jsonl(run / "metrics.jsonl", [{"step": 1, "split": "train",
                                        "loss": 2.0}])
  out = tmp_path / "results"
  rc = report.main(["--lm", f"rec={lm}", "--baseline", f"pop={base}",
                    "--curves", f"rec={run}", "--output", str(out)])
  assert rc == 0
  table = report.comparison_table([("rec", LM_REC), ("pop", POP)])
  assert capsys.readouterr().out == table
  assert table in (out / "results.md").read_text()
  res = json.loads((out / "results.json").read_text())
  assert [r["name"] for r in res["rows"]] == ["rec", "pop"]
  assert res["rows"][1]["kind"] == "baseline"
  assert res["curves"]["rec"] == {"train": [[1.0, 2.0]]}
  assert (out / "results.png").read_bytes()[:8] == PNG_SIGNATURE
  assert sorted(p.name for p in out.iterdir()) == [
      "results.json", "results.md", "results.png"]
  assert report.main(["--lm", f"rec={tmp_path / 'nope'}",
                      "--output", str(out)]) == 1
  assert "nope" in capsys.readouterr().err
