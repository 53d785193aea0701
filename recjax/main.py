"""The `recjax` command: prepare, show, train, eval, infer, baseline, export,
aot, cache_tasks.

Each sub-command defines only its own absl flags, so `recjax prepare --help`
lists what `prepare` takes. T5X users will recognise `train`:
`recjax train --gin_file=... --gin.KEY=VALUE`.
"""
from __future__ import annotations

import importlib.util  # noqa: F401  (gin-config 0.5.0 needs it before gin)
import logging as std_logging
import os
import re
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
  flags.DEFINE_enum("item_format", "title_id", ["title", "id", "title_id", "token",
                                    "title_token"],
                    "How prompts name items (token, title_token: each id "
                    "one vocabulary token, README 'Item tokens').")
  flags.DEFINE_integer("num_negatives", 99, "Ranking negatives per example.")
  flags.DEFINE_integer("seed", 0, "Seed for every sampled choice in prompts.")
  flags.DEFINE_list("tasks", None, "Tasks to write (default: all that apply).")
  flags.DEFINE_string("vocab", None, "Existing vocabulary instead of "
                      "training one: a SentencePiece model (FLAN-T5's "
                      "spiece.model, Llama-2's tokenizer.model), or a Hugging "
                      "Face tokenizer.json or checkpoint directory holding "
                      "one (decoder-only models).")
  flags.DEFINE_integer("pad_swap_id", None, "With a Hugging Face --vocab "
                       "whose id 0 is a real token (Llama-3, Qwen2): the id "
                       "exchanged with 0 (default: the tokenizer's pad "
                       "token); the model's DecoderOnlyConfig.pad_swap_id "
                       "must match.")
  flags.DEFINE_integer("vocab_size", None, "Size of the trained vocabulary.")
  flags.DEFINE_multi_string("option", [], "Loader option KEY=VALUE, e.g. "
                            "num_users=5000 for synthetic or "
                            "columns=user=uid,item=iid for csv.")
  flags.DEFINE_multi_string("prompt", [], "Other PromptConfig field "
                            "KEY=VALUE (see recjax/prompts/common.py), e.g. "
                            "mim_examples_per_user=5 or bpr_pairs_per_user=10.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")
  _define_beam_flags()
  flags.DEFINE_bool("beam", False, "Write the task files with the Apache "
                    "Beam pipeline (recjax/data/beam_prepare.py; needs the "
                    "`beam` extra); the same files as without it.")
  flags.DEFINE_integer("num_shards", None, "Files per task and split "
                       "(default: one per 250k interactions, at most 16).")


def _define_beam_flags():
  flags.DEFINE_string("runner", "DirectRunner", "Beam runner: DirectRunner, "
                      "DataflowRunner, FlinkRunner, SparkRunner, ...")
  flags.DEFINE_integer("num_workers", 2, "DirectRunner worker processes.")
  flags.DEFINE_multi_string("pipeline_option", [], "Passed to Beam's "
                            "PipelineOptions as is, e.g. "
                            "--pipeline_option=--project=my-project.")


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
  from recjax import vocabularies
  from recjax.prompts import PromptConfig
  from recjax.prompts import export

  pad_swap_id = "auto" if FLAGS.pad_swap_id is None else FLAGS.pad_swap_id
  if FLAGS.vocab:  # fail before the (long) preparation, in one line
    try:
      vocabularies.load_vocabulary(FLAGS.vocab, pad_swap_id=pad_swap_id)
    except ValueError as e:
      raise app.UsageError(f"--vocab {FLAGS.vocab}: {e}") from e
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
    kwargs = dict(config=config, seed=FLAGS.seed, tasks=FLAGS.tasks,
                  vocab_model=FLAGS.vocab, vocab_size=FLAGS.vocab_size,
                  pad_swap_id=pad_swap_id, num_shards=FLAGS.num_shards)
    if FLAGS.beam:
      from recjax.data import beam_prepare
      manifest = beam_prepare.write_task_files(
          data, tmp, runner=FLAGS.runner, num_workers=FLAGS.num_workers,
          pipeline_args=FLAGS.pipeline_option, **kwargs)
    else:
      manifest = export.write_task_files(data, tmp, **kwargs)
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


# ---------------------------------------------------------------- cache_tasks
def _define_cache_tasks_flags():
  flags.DEFINE_list("tasks", None, "Registered tasks or mixtures to cache "
                    "(a mixture: its tasks).", required=True)
  flags.DEFINE_string("output", None, "SeqIO cache directory; train from it "
                      "with RECJAX_SEQIO_CACHE_DIRS=DIR and "
                      "--gin.USE_CACHED_TASKS=True.", required=True)
  flags.DEFINE_multi_string("prepared_dir", [], "Also register the tasks of "
                            "these prepared directories (here and in the "
                            "Beam workers).")
  flags.DEFINE_bool("overwrite", False, "Re-cache tasks already cached in "
                    "--output.")
  _define_beam_flags()


def _cache_tasks(argv):
  del argv
  _quiet_logs()
  from seqio_tasks import cache
  for d in cache.cache_tasks(
      FLAGS.tasks, FLAGS.output, prepared_dirs=FLAGS.prepared_dir,
      runner=FLAGS.runner, num_workers=FLAGS.num_workers,
      pipeline_args=FLAGS.pipeline_option, overwrite=FLAGS.overwrite):
    print(d)


# ---------------------------------------------------------------- train
def _define_gin_flags():
  flags.DEFINE_multi_string("gin_file", [], "Gin files, in order (model "
                            "config first, then the run config).")
  flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings KEY = VALUE.")
  flags.DEFINE_multi_string("gin_search_paths", ["gin_configs", "."],
                            "Where --gin_file names are looked up.")
  flags.DEFINE_bool("multi_host", False, "Call jax.distributed.initialize() "
                    "first (TPU pods and multi-node GPU; every host runs the "
                    "same command and reads its own SeqIO shard). The "
                    "RECJAX_COORDINATOR_ADDRESS / RECJAX_NUM_PROCESSES / "
                    "RECJAX_PROCESS_ID variables, if set, are its arguments.")


def _maybe_multi_host():
  from recjax.train import distributed  # pylint: disable=g-import-not-at-top
  distributed.maybe_initialize(multi_host=FLAGS.multi_host)


def _train(argv):
  del argv
  _quiet_logs()
  _maybe_multi_host()
  from recjax.train import train_main
  train_main.run_train(FLAGS.gin_file, FLAGS.gin_bindings,
                       FLAGS.gin_search_paths)


def _gin_job(job: str):
  """`recjax eval` / `recjax infer`: the same gin flags as `train`."""
  def main(argv):
    del argv
    _quiet_logs()
    _maybe_multi_host()
    from recjax.infer import jobs_main
    jobs_main.JOBS[job](FLAGS.gin_file, FLAGS.gin_bindings,
                        FLAGS.gin_search_paths)
  return main


# ---------------------------------------------------------------- export
def _define_export_flags():
  _define_gin_flags()
  flags.DEFINE_string("checkpoint", None, "recjax model dir (latest step) or "
                      "checkpoints/<step> dir.", required=True)
  flags.DEFINE_string("output", None, "Hugging Face folder to write "
                      "(model.safetensors + config.json), atomically.",
                      required=True)
  flags.DEFINE_bool("merge_lora", False, "Fold LoRA adapters into the "
                    "kernels (needed for a checkpoint trained with LoRA).")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                    "Dtype of the written tensors.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")


def _export(argv):
  del argv
  _quiet_logs()
  from recjax.checkpoints import export
  out = export.run_export(
      FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths,
      checkpoint=FLAGS.checkpoint, output=FLAGS.output,
      merge_lora=FLAGS.merge_lora, dtype=FLAGS.dtype,
      overwrite=FLAGS.overwrite)
  print(out)


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


# ---------------------------------------------------------------- aot
def _define_aot_flags():
  from recjax.train import aot_main
  aot_main.define_flags()


def _aot(argv):
  del argv
  _quiet_logs()
  from recjax.train import aot_main
  aot_main.run(FLAGS)


COMMANDS: dict[str, tuple[Callable[[], None], Callable[[Sequence[str]], None],
                          str]] = {
    "prepare": (_define_prepare_flags, _prepare,
                "raw logs -> prepared directory + task files + vocabulary"),
    "cache_tasks": (_define_cache_tasks_flags, _cache_tasks,
                    "SeqIO offline cache of tasks (Apache Beam)"),
    "show": (_define_show_flags, _show,
             "print decoded examples of a registered task or mixture"),
    "train": (_define_gin_flags, _train,
              "train a model on a SeqIO task or mixture (gin-configured)"),
    "eval": (_define_gin_flags, _gin_job("eval"),
             "evaluate a checkpoint on rec tasks: metrics.json/.md (gin)"),
    "infer": (_define_gin_flags, _gin_job("infer"),
              "write sharded, resumable predictions or scores JSONL (gin)"),
    "export": (_define_export_flags, _export,
               "recjax checkpoint -> Hugging Face folder (--merge_lora)"),
    "baseline": (_define_baseline_flags, _baseline,
                 "train + evaluate Pop / BPR / SASRec on a prepared directory"),
    "aot": (_define_aot_flags, _aot,
            "will it fit? compile train/decode for a TPU slice, no TPU (gin)"),
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
  before = set(FLAGS)
  define()
  _list_in_help(set(FLAGS) - before)
  tf_quiet.import_tensorflow()
  app.run(_user_errors(command, main),
          argv=[f"{argv[0]} {command}"] + gin_utils.rewrite_gin_args(argv[2:]))


def _list_in_help(names) -> None:
  """Makes `--help` list the command's flags however recjax was started.

  absl's help shows the flags of the module named by sys.argv[0]; the
  flags are registered to the modules that defined them (recjax.main,
  recjax.train.aot_main, ...), which matches sys.argv[0] only under
  `python recjax/main.py`, not for the `recjax` console script.
  """
  shown = {f.name for f in FLAGS.flags_by_module_dict().get(sys.argv[0], [])}
  for name in sorted(names):
    if FLAGS[name].name not in shown:
      FLAGS.register_flag_by_module(sys.argv[0], FLAGS[name])
      shown.add(FLAGS[name].name)


class _ExpectedOrbaxNoise(std_logging.Filter):
  """Drops orbax's "Metadata file does not exist" warning.

  recjax's checkpoints carry no orbax checkpoint-level metadata file, so
  orbax says so on every restore; every other orbax message still shows.
  """

  def filter(self, record):
    return not ("orbax" in record.pathname and
                str(record.msg).startswith("Metadata file does not exist"))


_ORBAX_NOISE = _ExpectedOrbaxNoise()


def quiet_expected_orbax_warnings() -> None:
  """Installs the filter on absl's logger, which orbax logs through."""
  logger = std_logging.getLogger("absl")
  if _ORBAX_NOISE not in logger.filters:
    logger.addFilter(_ORBAX_NOISE)


def _user_error_line(e: BaseException) -> str | None:
  """One line for an error caused by the user's input, else None (a bug).

  Library messages already name the bad value; gin appends "In call to
  configurable ..." context lines, which are dropped here.
  """
  from recjax.data.errors import DataError
  from recjax.train.checkpointing import CheckpointSaveError
  if isinstance(e, DataError):
    return f"bad input: {e}"
  if isinstance(e, (app.UsageError, FileNotFoundError, FileExistsError,
                    NotADirectoryError, IsADirectoryError,
                    CheckpointSaveError)):
    return str(e)
  first = str(e).strip().splitlines()[0] if str(e).strip() else ""
  if type(e).__name__ == "InvalidArgumentError":  # a tf.data check's refusal
    m = re.search(r"assertion failed: \[(.+?)\] \[", str(e), re.S)
    return f"input pipeline: {m.group(1)}" if m else None
  if isinstance(e, SyntaxError):  # gin could not parse a file or a binding
    where = (e.text or "").strip() or (e.filename or "")
    msg = (e.msg or "").strip().splitlines()[-1:] or [""]
    return (f"gin: cannot parse {where!r}: {msg[0].strip()}; strings need quotes, "
            f"e.g. --gin.MODEL_DIR=\"'/tmp/run'\"")
  if not isinstance(e, (ValueError, KeyError, TypeError)):
    return None
  m = re.match(r"No Task or Mixture found with name '(.*)'", first)
  if m:
    return _unknown_task_line(m.group(1))
  m = re.match(r"(\w+)/macro.value set to `%gin.REQUIRED`", first)
  if m:
    return (f"gin macro {m.group(1)} is required: give "
            f"--gin.{m.group(1)}=... (strings quoted)")
  m = re.match(r"No configurable matching '(.*)'", first)
  if m:
    import difflib  # pylint: disable=g-import-not-at-top
    names = sorted({n.rsplit(".", 1)[-1] for n in gin_utils.configurables()})
    close = difflib.get_close_matches(m.group(1), names, n=5, cutoff=0.5)
    return (f"gin: no configurable {m.group(1)!r}" +
            (f"; did you mean {', '.join(close)}?" if close else
             f"; configurables: {', '.join(names)}"))
  if isinstance(e, ValueError):
    return first
  return None


def _unknown_task_line(name: str) -> str:
  import seqio  # pylint: disable=g-import-not-at-top
  tasks = sorted(n for n in seqio.TaskRegistry.names() if "_test" not in n)
  mixtures = sorted(seqio.MixtureRegistry.names())
  return (f"unknown task or mixture {name!r}; registered mixtures: "
          f"{', '.join(mixtures) or '(none)'}; tasks: "
          f"{', '.join(tasks) or '(none)'} (a dataset's tasks are registered "
          f"once `recjax prepare` has written them)")


def _user_errors(command: str, main: Callable[[Sequence[str]], None]):
  """Every command's user errors end in one line naming the bad value, exit
  status 1 (2 for bad flags); bugs keep their traceback, and --verbosity=1
  shows it for user errors too. New commands in COMMANDS get this as is."""

  def wrapped(argv):
    quiet_expected_orbax_warnings()
    try:
      if "gin_bindings" in FLAGS:
        files = FLAGS.gin_file
        if command == "aot":  # it adds runs/finetune.gin when none is given
          from recjax.train import aot  # pylint: disable=g-import-not-at-top
          files = aot.with_run_gin(files)
        gin_utils.check_bindings(files, FLAGS.gin_bindings,
                                 FLAGS.gin_search_paths)
      main(argv)
    except Exception as e:  # pylint: disable=broad-except
      line = _user_error_line(e)
      if line is None or (FLAGS["verbosity"].present and FLAGS.verbosity > 0):
        raise
      hint = ""
      if command == "prepare" and "bad input" in line and (
          FLAGS.on_error != "skip"):
        hint = ("\n(--on_error=skip skips bad records and counts them in "
                "stats.json)")
      print(f"recjax {command}: {line}{hint}", file=sys.stderr)
      sys.exit(2 if isinstance(e, app.UsageError) else 1)
  return wrapped


if __name__ == "__main__":
  run()
