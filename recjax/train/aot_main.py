"""`recjax aot`: compile-ahead sizing of a gin-configured run on a TPU slice.

  recjax aot --gin_file=models/flan_t5_xxl.gin --gin_file=runs/finetune.gin \
    --topology=v5e-256 --num_partitions=16 --partitioning=2d --batch_size=256

Prints one table row per topology (per-chip parameter, optimizer, temporary
and peak bytes against the chip's HBM, FLOPs and roofline step time of the
train step, peak bytes of beam-search decoding), then one JSON line.
Values not given as flags come from gin (BATCH_SIZE, TASK_FEATURE_LENGTHS,
partitioning.Partitioner.num_partitions, NUM_MICROBATCHES, the model gin's
remat_policy). `--extrapolate_depth=2,3` sizes a deep model from two
shallow compiles (`aot.size_model_by_depth`); rows so made end in ' ~'.
"""
from __future__ import annotations

import functools
import json
import sys

from absl import flags


def define_flags() -> None:
  flags.DEFINE_multi_string("gin_file", [], "Gin files, in order (model "
                            "config first, then the run config; "
                            "runs/finetune.gin when no run gin is given).")
  flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings KEY = VALUE.")
  flags.DEFINE_multi_string("gin_search_paths", ["gin_configs", "."],
                            "Where --gin_file names are looked up.")
  flags.DEFINE_list("topology", None, "TPU slices: v5e:4x4, v4:4x4x4 (chips "
                    "per axis) or v5e-256, v4-128, v5p-128 (Cloud names).",
                    required=True)
  flags.DEFINE_integer("num_partitions", None, "Model-parallel size "
                       "(default: gin's partitioning.Partitioner).")
  flags.DEFINE_enum("partitioning", None, ["1d", "2d"], "1d: parameters "
                    "split over 'model'; 2d: also 'embed' over 'data' "
                    "(default: gin's parameter_partitioning_dims).")
  flags.DEFINE_integer("batch_size", None, "Global batch (default: gin's "
                       "BATCH_SIZE).")
  flags.DEFINE_enum("remat", None, ["none", "full", "minimal"], "Remat "
                    "policy (default: the model gin's).")
  flags.DEFINE_integer("num_microbatches", None, "Gradient accumulation "
                       "(default: gin's NUM_MICROBATCHES).")
  flags.DEFINE_bool("train", True, "Compile the train step (--notrain: "
                    "decoding alone; the train columns keep the state bytes).")
  flags.DEFINE_bool("decode", True, "Also compile beam-search decoding.")
  flags.DEFINE_integer("num_beams", 4, "Beams of the decode compile.")
  flags.DEFINE_integer("decode_batch_size", None, "Decode batch (default: "
                       "the train batch).")
  flags.DEFINE_list("extrapolate_depth", None, "Two layer counts, e.g. 2,3: "
                    "compile the model at those depths and extend the "
                    "compiled figures linearly to its full depth (minutes "
                    "instead of a quarter hour and 18+ GB of host memory "
                    "for a 24-layer model; state bytes stay exact). "
                    "Decoding is compiled whole either way. Default: "
                    "compile the whole model.")


def run(FLAGS) -> list:  # pylint: disable=invalid-name
  """Sizes the run on each --topology; returns the reports."""
  from recjax.train import aot  # pylint: disable=g-import-not-at-top
  if not aot.libtpu_available():
    print("recjax aot: needs the libtpu wheel that matches jax: pip install "
          "'recjax[tpu_aot]'", file=sys.stderr)
    sys.exit(1)
  if not (FLAGS.train or FLAGS.decode):
    print("recjax aot: --notrain --nodecode leaves nothing to compile",
          file=sys.stderr)
    sys.exit(2)
  try:
    topologies = [aot.parse_topology(t) for t in FLAGS.topology]
  except ValueError as e:
    print(f"recjax aot: {e}", file=sys.stderr)
    sys.exit(2)
  cfg = aot.model_from_gin(FLAGS.gin_file, FLAGS.gin_bindings,
                           FLAGS.gin_search_paths)
  name = next((f for f in FLAGS.gin_file if "models/" in f),
              FLAGS.gin_file[0] if FLAGS.gin_file else "model")
  size = aot.size_model
  if FLAGS.extrapolate_depth:
    try:
      layers, _ = aot.check_depths(cfg["model"], FLAGS.extrapolate_depth)
    except ValueError as e:
      given = ",".join(FLAGS.extrapolate_depth)
      print(f"recjax aot: --extrapolate_depth={given}: {e}", file=sys.stderr)
      sys.exit(2)
    size = functools.partial(aot.size_model_by_depth, layers=layers)
  reports = []
  for topology in topologies:
    print(f"[recjax] compiling for {topology.accelerator_type} "
          f"({topology.name})", file=sys.stderr)
    reports.append(size(
        cfg["model"], topology,
        num_partitions=FLAGS.num_partitions or cfg["num_partitions"],
        partitioning_name=FLAGS.partitioning or cfg["partitioning_name"],
        batch_size=FLAGS.batch_size or cfg["batch_size"],
        task_feature_lengths=cfg["task_feature_lengths"],
        remat_policy=FLAGS.remat,
        num_microbatches=(FLAGS.num_microbatches
                          or cfg["num_microbatches"]),
        optimizer_fn=cfg["optimizer_fn"],
        frozen_patterns=cfg["frozen_patterns"], pack=cfg["pack"],
        train=FLAGS.train, decode=FLAGS.decode, num_beams=FLAGS.num_beams,
        decode_batch_size=FLAGS.decode_batch_size, model_name=name))
  print(aot.format_table(reports))
  print(json.dumps({"results": [r.to_dict() for r in reports]}))
  return reports
