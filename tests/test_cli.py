"""The `recjax` command end to end, as a user runs it (subprocesses)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
from tiny_data import tiny_data

PROJECT = pathlib.Path(__file__).resolve().parents[1]


def _recjax(*args, env_extra=None):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-m", "recjax.main", *args],
                        cwd=PROJECT, env=env, capture_output=True, text=True,
                        timeout=300)


def _write_csv(path, rows):
  path.write_text("uid,iid,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))


def test_prepare_bad_input_fails_cleanly_and_writes_nothing(tmp_path):
  rows = [(u, i, u * 10 + i) for u in range(3) for i in range(4)]
  log = tmp_path / "log.csv"
  _write_csv(log, rows)
  with open(log, "a") as f:
    f.write("7,3,yesterday\n")  # line 14: a bad timestamp
  out = tmp_path / "prepared"
  res = _recjax("prepare", "--source=csv", f"--input={log}", f"--output={out}",
                "--option=columns=user=uid,item=iid,time=ts", "--kcore=0")
  assert res.returncode == 1, res.stderr
  last = res.stderr.strip().splitlines()
  assert any(f"{log}:14: field 'ts'" in line for line in last), res.stderr
  assert "Traceback" not in res.stderr
  assert not out.exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]  # no temp dir left

  res = _recjax("prepare", "--source=csv", f"--input={log}", f"--output={out}",
                "--option=columns=user=uid,item=iid,time=ts", "--kcore=0",
                "--on_error=skip", "--vocab_size=300")
  assert res.returncode == 0, res.stderr
  stats = json.loads((out / "stats.json").read_text())
  assert stats["skipped"] == {"bad_timestamp": 1}
  assert stats["final"] == {"users": 3, "items": 4, "interactions": 12}
  manifest = json.loads((out / "tasks" / "manifest.json").read_text())
  assert manifest["counts"]["retrieval"]["test"] == 3
  assert (out / "vocab" / "spiece.model").is_file()
  # The output is not clobbered without --overwrite.
  res = _recjax("prepare", "--source=csv", f"--input={log}", f"--output={out}",
                "--option=columns=user=uid,item=iid,time=ts", "--kcore=0",
                "--on_error=skip")
  assert res.returncode == 1 and "exists" in res.stderr


def test_show_decodes_registered_tasks(tmp_path):
  out = tmp_path / "data" / "synthetic"
  env = {"RECJAX_DATA_DIR": str(tmp_path / "data")}
  res = _recjax("prepare", "--source=synthetic", f"--output={out}",
                "--option=num_users=60", "--option=num_items=40",
                "--vocab_size=500", env_extra=env)
  assert res.returncode == 0, res.stderr
  res = _recjax("show", "--task=synthetic_rec_aux,synthetic_ie",
                "--split=validation", "-n", "1", env_extra=env)
  assert res.returncode == 0, res.stderr
  assert "mixture synthetic_rec_aux: 7 tasks" in res.stdout
  assert "--- synthetic_ie [validation] #0" in res.stdout
  assert "Traceback" not in res.stderr


def test_unknown_command_lists_commands():
  res = _recjax("fly")
  assert res.returncode == 2
  assert "prepare" in res.stderr and "train" in res.stderr


def test_baseline_command_writes_metrics_and_fails_cleanly(tmp_path):
  data = tmp_path / "prepared"
  tiny_data(n_users=30, n_items=40, seed=1, min_len=4, max_len=12).save(data)

  out = tmp_path / "pop"
  res = _recjax("baseline", "--model=pop", f"--data={data}", f"--output={out}")
  assert res.returncode == 0, res.stderr
  m = json.loads((out / "metrics.json").read_text())
  # The names the LM evaluator uses (recjax.infer.report reads metrics.json["test"]).
  assert set(m["test"]) >= {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
  assert m["test"]["count"] == 30
  assert res.stdout.strip() == (
      f"[recjax] pop test recall@10 {m['test']['recall@10']:.4f} "
      f"ndcg@10 {m['test']['ndcg@10']:.4f} (30 users; best epoch None, 1 run, "
      f"{m['wall_seconds']:.1f}s) -> {out}")
  assert "[pop] epoch   0" in res.stderr

  out = tmp_path / "sasrec"
  res = _recjax("baseline", "--model=sasrec", f"--data={data}",
                f"--output={out}", "--epochs=2", "--loss=bce", "--seed=3")
  assert res.returncode == 0, res.stderr
  m = json.loads((out / "metrics.json").read_text())
  assert m["hparams"]["loss"] == "bce" and m["seed"] == 3
  assert m["epochs_run"] == 2 and len(m["history"]) == 2
  assert [line.split()[:3] for line in res.stderr.splitlines()
          if line.startswith("[sasrec]")] == [["[sasrec]", "epoch", "0"],
                                               ["[sasrec]", "epoch", "1"]]
  assert f"-> {out}" in res.stdout
  assert (out / "item_embeddings.npy").is_file()

  # An existing output is refused before training; a missing prepared dir and
  # a flag of another model end with one clear line.
  res = _recjax("baseline", "--model=sasrec", f"--data={data}",
                f"--output={out}", "--epochs=1")
  assert res.returncode == 1
  assert res.stderr.strip().splitlines()[-1] == (
      f"recjax baseline: {out} exists; pass --overwrite to replace it")
  res = _recjax("baseline", "--model=bpr", f"--data={tmp_path / 'nope'}",
                f"--output={tmp_path / 'bpr'}")
  assert res.returncode == 1 and "Traceback" not in res.stderr
  assert "is not a prepared directory" in res.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "bpr").exists()
  res = _recjax("baseline", "--model=pop", f"--data={data}",
                f"--output={tmp_path / 'pop2'}", "--loss=ce")
  assert res.returncode == 2 and "Traceback" not in res.stderr  # bad flag
  assert "--loss applies to --model=sasrec only" in res.stderr


# ------------------------------------------------------------ user errors
# Each class of user error ends in one line naming the bad value and the
# valid choices, a non-zero exit and no traceback (issue 14, item 7).
USER_ERRORS = {
    "unknown_source": (["prepare", "--source=nosuch"],
                       ["'nosuch'", "synthetic", "movielens"]),
    "unknown_task_show": (["show", "--task=nosuch_task"],
                          ["'nosuch_task'", "synthetic_rec"]),
    "unknown_mixture_train": (
        ["train", "--gin_file=runs/finetune.gin",
         "--gin.MIXTURE_OR_TASK_NAME='nosuch_mix'",
         "--gin.MODEL_DIR='/tmp/recjax_test_cli_unused'"],
        ["'nosuch_mix'", "synthetic_rec", "synthetic_retrieval"]),
    "unknown_macro": (["train", "--gin_file=runs/finetune.gin",
                       "--gin.TRAIN_STEP=3"],
                      ["TRAIN_STEP", "TRAIN_STEPS", "MODEL_DIR"]),
    "unquoted_macro_value": (
        ["eval", "--gin_file=runs/eval.gin",
         "--gin.MIXTURE_OR_TASK_NAME=synthetic_rec"],
        ["synthetic_rec", "strings need quotes"]),
    "unknown_configurable": (["infer", "--gin_file=runs/infer.gin",
                              "--gin.T5Confg.emb_dim=8"],
                             ["'T5Confg'", "T5Config"]),
    "unknown_gin_file": (["train", "--gin_file=runs/nosuch.gin"],
                         ["runs/nosuch.gin", "gin_configs"]),
    "required_macro": (["train", "--gin_file=runs/finetune.gin"],
                       ["MODEL_DIR", "--gin.MODEL_DIR="]),
    "missing_prepared_dir": (["baseline", "--model=pop",
                              "--data=/nonexistent/recjax_prepared",
                              "--output=/tmp/recjax_test_cli_unused_b"],
                             ["/nonexistent/recjax_prepared",
                              "recjax prepare"]),
}


@pytest.mark.parametrize("case", sorted(USER_ERRORS))
def test_user_errors_end_in_one_line(case):
  args, must_name = USER_ERRORS[case]
  res = _recjax(*args)
  assert res.returncode != 0, res.stderr
  assert "Traceback" not in res.stderr, res.stderr
  lines = [l for l in res.stderr.strip().splitlines()
           if not l.startswith("[recjax]")]
  assert len(lines) == 1, res.stderr
  assert lines[0].startswith(f"recjax {args[0]}: "), lines[0]
  for part in must_name:
    assert part in lines[0], (part, lines[0])


def test_orbax_metadata_warning_is_filtered_and_others_kept():
  """The expected "Metadata file does not exist" warning from orbax is
  dropped by a filter on absl's logger only; other orbax warnings and the
  same text from elsewhere still pass."""
  import logging  # pylint: disable=g-import-not-at-top
  from recjax import main  # pylint: disable=g-import-not-at-top
  main.quiet_expected_orbax_warnings()
  main.quiet_expected_orbax_warnings()  # idempotent
  absl_logger = logging.getLogger("absl")
  assert absl_logger.filters.count(main._ORBAX_NOISE) == 1  # pylint: disable=protected-access
  assert main._ORBAX_NOISE not in logging.getLogger().filters  # pylint: disable=protected-access
  orbax_file = "/x/orbax/checkpoint/_src/metadata/checkpoint.py"

  def record(pathname, msg):
    return logging.LogRecord("absl", logging.WARNING, pathname, 1, msg,
                             ("/ckpt/_CHECKPOINT_METADATA",), None)

  assert not absl_logger.filter(record(orbax_file,
                                       "Metadata file does not exist: %s"))
  assert absl_logger.filter(record(orbax_file, "Something new: %s"))
  assert absl_logger.filter(record("/x/recjax/train/trainer.py",
                                   "Metadata file does not exist: %s"))


def test_help_lists_flags_defined_outside_main():
  """`recjax aot --help` lists the flags aot_main defines (absl shows only
  the flags registered to sys.argv[0]'s module)."""
  res = _recjax("aot", "--help")  # absl exits 1 after printing help
  assert "Traceback" not in res.stderr
  assert "--topology" in res.stdout and "--gin_file" in res.stdout
