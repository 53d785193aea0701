"""The `recjax` command: prepare, show, train, eval, infer, baseline.

Each sub-command defines only its own absl flags, so `recjax prepare --help`
lists what `prepare` takes. T5X users will recognise `train`:
`recjax train --gin_file=... --gin.KEY=VALUE`.
"""
from __future__ import annotations

import importlib.util  # noqa: F401  (gin-config 0.5.0 needs it before gin)
import os
import sys
import time
from typing import Callable, Sequence

from absl import app
from absl import flags
from absl import logging

from recjax import host_malloc
from recjax import tf_quiet
from recjax.train import gin_utils

host_malloc.tune()  # before JAX/TF start threads; see recjax/host_malloc.py

FLAGS = flags.FLAGS
# ---------------------------------------------------------------- prepare
def _define_prepare_flags():
  flags.DEFINE_string("source", None, "Loader name: movielens, amazon2014, "
                      "amazon2018, steam, lastfm, lastfm_llara, recbole, csv, "
                      "jsonl, synthetic.", required=True)
  flags.DEFINE_string("input", None, "Raw data file or directory (not needed "
                      "for --source=synthetic).")
  flags.DEFINE_string("output", None, "Prepared directory to create. Default: "
                      "$RECJAX_DATA_DIR/<name>.")
  flags.DEFINE_string("name", None, "Dataset name used in task names "
                      "(<name>_retrieval, ...). Default: from source/input.")
  flags.DEFINE_integer("kcore", 5, "Keep users and items with >= K "
                       "interactions (iterated); 0 disables.")
  flags.DEFINE_enum("on_error", "raise", ["raise", "skip"], "Bad records: "
                    "fail naming file/line/field, or skip and count them in "
                    "stats.json.")
  flags.DEFINE_enum("dedup", "first", ["first", "last", "keep"],
                    "Repeated (user, item) pairs: keep the first, the last, or all.")
  flags.DEFINE_integer("max_history", 20, "History length cap in prompts.")
  flags.DEFINE_enum("item_format", "title_id", ["title", "id", "title_id"],
                    "How prompts name items.")
  flags.DEFINE_integer("num_negatives", 99, "Ranking negatives per example.")
  flags.DEFINE_integer("seed", 0, "Seed for every sampled choice in prompts.")
  flags.DEFINE_list("tasks", None, "Tasks to write (default: all that apply).")
  flags.DEFINE_string("vocab", None, "Existing SentencePiece model (e.g. "
                      "FLAN-T5's spiece.model) instead of training one.")
  flags.DEFINE_integer("vocab_size", None, "Size of the trained vocabulary.")
  flags.DEFINE_multi_string("option", [], "Loader option KEY=VALUE, e.g. "
                            "num_users=5000 for synthetic or "
                            "columns=user=uid,item=iid for csv.")
  flags.DEFINE_multi_string("prompt", [], "Other PromptConfig field "
                            "KEY=VALUE (see recjax/prompts/common.py), e.g. "
                            "mim_examples_per_user=5 or bpr_pairs_per_user=10.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")


def _parse_options(pairs: Sequence[str]) -> dict:
  options = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not key:
      raise app.UsageError(f"--option {pair!r}: expected KEY=VALUE")
    for cast in (int, float):
      try:
        value = cast(value)
        break
      except ValueError:
        pass
    options[key.strip()] = value
  return options


def _prompt_config(config_cls, pairs: Sequence[str]):
  """PromptConfig from the dedicated flags plus `--prompt KEY=VALUE` pairs."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  fields = {f.name for f in dataclasses.fields(config_cls)}
  defaults = config_cls()
  values = {"item_format": FLAGS.item_format,
            "max_history": FLAGS.max_history,
            "num_negatives": FLAGS.num_negatives}
  for key, value in _parse_options(pairs).items():
    if key not in fields:
      raise app.UsageError(f"--prompt {key}=...: not a PromptConfig field; "
                           f"choose from {sorted(fields)}")
    if key in values:
      raise app.UsageError(f"--prompt {key}=...: use --{key} instead")
    if isinstance(getattr(defaults, key), bool):
      value = str(value).lower() in ("1", "true", "yes")
    values[key] = value
  try:
    return config_cls(**values)
  except (TypeError, ValueError) as e:
    raise app.UsageError(f"--prompt: {e}") from e


def _quiet_logs():
  """Library INFO logs (SeqIO's caching notes, ...) only with --verbosity."""
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def _prepare(argv):
  del argv
  _quiet_logs()
  from recjax.data import prepare as prepare_lib
  from recjax.data.prepared import atomic_directory, data_root
  from recjax.prompts import PromptConfig
  from recjax.prompts import export

  name = FLAGS.name or (FLAGS.source if FLAGS.source == "synthetic" or
                        not FLAGS.input else
                        os.path.basename(os.path.normpath(FLAGS.input)))
  output = FLAGS.output or str(data_root() / name)
  start = time.time()
  print(f"[recjax] preparing {FLAGS.source} -> {output}", file=sys.stderr)
  with atomic_directory(output, overwrite=FLAGS.overwrite) as tmp:
    data = prepare_lib.build_prepared(
        FLAGS.source, FLAGS.input, name=name, kcore=FLAGS.kcore,
        on_error=FLAGS.on_error, dedup=FLAGS.dedup,
        max_history=FLAGS.max_history, options=_parse_options(FLAGS.option))
    data.write_into(tmp)
    config = _prompt_config(PromptConfig, FLAGS.prompt)
    manifest = export.write_task_files(
        data, tmp, config=config, seed=FLAGS.seed, tasks=FLAGS.tasks,
        vocab_model=FLAGS.vocab, vocab_size=FLAGS.vocab_size)
  print(f"[recjax] {data.num_users} users, {data.num_items} items, "
        f"{data.num_interactions} interactions; "
        f"{sum(sum(s.values()) for s in manifest['counts'].values())} examples "
        f"in {len(manifest['counts'])} tasks; {time.time() - start:.1f}s",
        file=sys.stderr)
  print(output)


# ---------------------------------------------------------------- show
def _define_show_flags():
  flags.DEFINE_list("task", None, "Registered task or mixture names "
                    "(comma-separated).", required=True)
  flags.DEFINE_string("split", "train", "Split to read.")
  flags.DEFINE_integer("num_examples", 5, "How many examples.", short_name="n")
  flags.DEFINE_multi_string("prepared_dir", [], "Also register the tasks of "
                            "these prepared directories.")


def _show(argv):
  del argv
  _quiet_logs()
  import seqio
  import seqio_tasks
  from seqio_tasks import registry
  from seqio_tasks import show
  del seqio_tasks
  for d in FLAGS.prepared_dir:
    registry.register_prepared(d)
  for name in FLAGS.task:
    if name in seqio.MixtureRegistry.names():
      show.mixture_summary(name)
    if FLAGS.num_examples > 0:
      show.show_examples(name, FLAGS.split, FLAGS.num_examples)
    print()


# ---------------------------------------------------------------- train
def _define_gin_flags():
  flags.DEFINE_multi_string("gin_file", [], "Gin files, in order (model "
                            "config first, then the run config).")
  flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings KEY = VALUE.")
  flags.DEFINE_multi_string("gin_search_paths", ["gin_configs", "."],
                            "Where --gin_file names are looked up.")
  flags.DEFINE_bool("multi_host", False, "Call jax.distributed.initialize() "
                    "first (TPU pods and multi-node GPU; every host runs the "
                    "same command and reads its own SeqIO shard).")


def _train(argv):
  del argv
  _quiet_logs()
  if FLAGS.multi_host:
    import jax
    jax.distributed.initialize()
  from recjax.train import train_main
  train_main.run_train(FLAGS.gin_file, FLAGS.gin_bindings,
                       FLAGS.gin_search_paths)


def _gin_job(job: str):
  """`recjax eval` / `recjax infer`: the same gin flags as `train`."""
  def main(argv):
    del argv
    _quiet_logs()
    if FLAGS.multi_host:
      import jax
      jax.distributed.initialize()
    from recjax.infer import jobs_main
    jobs_main.JOBS[job](FLAGS.gin_file, FLAGS.gin_bindings,
                        FLAGS.gin_search_paths)
  return main


# ---------------------------------------------------------------- baseline
def _define_baseline_flags():
  flags.DEFINE_enum("model", None, ["pop", "bpr", "sasrec"], "Classical "
                    "recommender (recjax/baselines/README.md).", required=True)
  flags.DEFINE_string("data", None, "Prepared directory (`recjax prepare`).",
                      required=True)
  flags.DEFINE_string("output", None, "Directory to write metrics.json and "
                      "the embeddings into (atomically).", required=True)
  flags.DEFINE_integer("seed", 0, "Seed for initialisation, dropout, "
                       "shuffling and negatives.")
  flags.DEFINE_integer("epochs", None, "Maximum epochs (default: RecBole's, "
                       "bpr 200, sasrec 30; early stopping may end sooner). "
                       "pop does not train.")
  flags.DEFINE_enum("loss", None, ["ce", "bce"], "SASRec loss: ce = "
                    "cross-entropy over all items (default), bce = one "
                    "sampled negative per target.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")


def _baseline(argv):
  del argv
  _quiet_logs()
  from recjax.baselines import cli as baseline_cli
  from recjax.data.errors import DataError
  if FLAGS.loss is not None and FLAGS.model != "sasrec":
    raise app.UsageError("--loss applies to --model=sasrec only")
  if FLAGS.epochs is not None and FLAGS.epochs < 1:
    raise app.UsageError(f"--epochs={FLAGS.epochs}: expected >= 1")
  if os.path.exists(FLAGS.output) and not FLAGS.overwrite:
    raise FileExistsError(f"{FLAGS.output} exists; pass --overwrite to "
                          "replace it")
  hparams = {"loss": FLAGS.loss} if FLAGS.loss is not None else {}
  epochs = None if FLAGS.model == "pop" else FLAGS.epochs
  print(f"[recjax] baseline {FLAGS.model} on {FLAGS.data} -> {FLAGS.output}",
        file=sys.stderr)
  try:
    m = baseline_cli.run_baseline(
        FLAGS.model, FLAGS.data, FLAGS.output, seed=FLAGS.seed, epochs=epochs,
        overwrite=FLAGS.overwrite,
        log=lambda line: print(line, file=sys.stderr, flush=True), **hparams)
  except DataError:
    raise
  except ValueError as e:  # unreadable prepared dir, sequences too short
    raise DataError(FLAGS.data, None, None, str(e)) from e
  t = m["test"]
  print(f"[recjax] {FLAGS.model} test recall@10 {t.get('recall@10', 0.0):.4f} "
        f"ndcg@10 {t.get('ndcg@10', 0.0):.4f} ({int(t.get('count', 0))} users; "
        f"best epoch {m['best_epoch']}, {m['epochs_run']} run, "
        f"{m['wall_seconds']:.1f}s) -> {FLAGS.output}")


COMMANDS: dict[str, tuple[Callable[[], None], Callable[[Sequence[str]], None],
                          str]] = {
    "prepare": (_define_prepare_flags, _prepare,
                "raw logs -> prepared directory + task files + vocabulary"),
    "show": (_define_show_flags, _show,
             "print decoded examples of a registered task or mixture"),
    "train": (_define_gin_flags, _train,
              "train a model on a SeqIO task or mixture (gin-configured)"),
    "eval": (_define_gin_flags, _gin_job("eval"),
             "evaluate a checkpoint on rec tasks: metrics.json/.md (gin)"),
    "infer": (_define_gin_flags, _gin_job("infer"),
              "write sharded, resumable predictions or scores JSONL (gin)"),
    "baseline": (_define_baseline_flags, _baseline,
                 "train + evaluate Pop / BPR / SASRec on a prepared directory"),
}


def _usage() -> str:
  lines = ["usage: recjax COMMAND [--flags]", "", "commands:"]
  lines += [f"  {name:<8} {doc}" for name, (_, _, doc) in COMMANDS.items()]
  lines.append("\n`recjax COMMAND --help` lists a command's flags.")
  return "\n".join(lines)


def run(argv: Sequence[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  command = argv[1]
  if command not in COMMANDS:
    print(f"recjax: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    sys.exit(2)
  define, main, _ = COMMANDS[command]
  define()
  tf_quiet.import_tensorflow()
  app.run(_user_errors(command, main),
          argv=[f"{argv[0]} {command}"] + gin_utils.rewrite_gin_args(argv[2:]))


def _user_errors(command: str, main: Callable[[Sequence[str]], None]):
  """Bad input and missing files end with one clear line, not a traceback."""
  from recjax.data.errors import DataError

  def wrapped(argv):
    try:
      main(argv)
    except DataError as e:
      hint = ("" if command != "prepare" or FLAGS.on_error == "skip" else
              "\n(--on_error=skip skips bad records and counts them in "
              "stats.json)")
      print(f"recjax {command}: bad input: {e}{hint}", file=sys.stderr)
      sys.exit(1)
    except (FileNotFoundError, FileExistsError) as e:
      print(f"recjax {command}: {e}", file=sys.stderr)
      sys.exit(1)
  return wrapped


if __name__ == "__main__":
  run()
