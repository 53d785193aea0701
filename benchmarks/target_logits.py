"""Decoder-only training with logits at the targets only, against every position.

Question: what does projecting to the vocabulary only at the positions the
loss reads (`DecoderOnlyModel.max_target_tokens`, bound to the targets
length for unpacked rows by the trainer) save in step time and in XLA's
temporary memory, and where does that put the tiny decoder-only step against
the tiny FLAN-T5's (target: within 1.5x at the quickstart's shape)?

Rows, each the trainer's own jitted, donated train step (`make_train_step`,
Adafactor, float32, dropout 0) on one fixed batch of random full rows
(`decoder_train_throughput.make_batch`: inputs then targets, loss on the
targets), over a mesh of all local devices:

* `quickstart`: `models/decoder_tiny.gin` at the quickstart's lengths and
  batch (16 rows of 512 input + 16 target tokens) and its vocabulary (2,118
  SentencePiece pieces + 100 extra ids, rounded up to 2,304), beside
  `models/flan_t5_tiny.gin` at the same shape and vocabulary. Logits at 96
  positions per row, `runs/quickstart.gin`'s bound for its packed rows
  (which hold at most 38 target tokens over an epoch of synthetic_rec_aux).
* `128k`: decoder_tiny.gin's layers with Llama-3's 128,256-token vocabulary
  at 2,048 + 32 tokens (batch 2): the vocabulary projection of every prompt
  position is the largest activation of the step. Logits at the 32 targets
  (the bound the trainer gives unpacked rows).

Each step is timed as the median of `--steps` steps after a compile and a
warm-up step; temporaries are `compiled.memory_analysis().temp_size_in_bytes`.
The projected positions per row are what the timing depends on, packed or
not; the rows here are unpacked, the bound given as the quickstart gives it.

  .venv/bin/python benchmarks/target_logits.py [--steps 5] [--rows quickstart,128k]
  # the bound a packed run needs: target tokens per packed row over an epoch
  RECJAX_PREPARED_DIRS=~/.cache/recjax/synthetic .venv/bin/python \
      benchmarks/target_logits.py --rows= --packed_mixture synthetic_rec_aux

The last stdout line is one JSON object: per row `every_position` and
`targets_only` (step_s, temp_gib), the speedup, and for `quickstart` the
tiny FLAN-T5's step_s and `decoder_over_t5` (targets only).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import decoder_train_throughput as dtt  # noqa: E402
import train_throughput as tt  # noqa: E402
from _cli_runs import cpu_model, pick_rows  # noqa: E402

GiB = 2**30
# name -> (vocab, batch, inputs, targets, logit positions per row, compare
# with tiny FLAN-T5)
ROWS = {"quickstart": (2304, 16, 512, 16, 96, True),
        "128k": (128256, 2, 2048, 32, 32, False)}


def measure(model, batch: dict, steps: int) -> dict:
  """The train step's median seconds and XLA temporaries for `batch`
  (`train_throughput.RecjaxRunner`'s step, compiled ahead to read them)."""
  runner = tt.RecjaxRunner(None, batch, seed=0, model=model)
  runner.step = runner.step.lower(runner.state, runner.batch,
                                  runner.rng).compile()
  temp = int(runner.step.memory_analysis().temp_size_in_bytes)
  runner.run(1)  # warm-up
  times, loss = [], None
  for _ in range(steps):
    seconds, loss = runner.run(1)
    times.append(seconds)
  return {"step_s": round(statistics.median(times), 4),
          "temp_gib": round(temp / GiB, 4), "loss": round(loss, 4)}


def packed_targets(mixture: str, inputs: int, targets: int) -> dict:
  """Target tokens per packed prefix-LM row over one epoch of `mixture`'s
  training data at these lengths (the trainer's pipeline, batches of 64)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  import seqio_tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from recjax.train import trainer  # pylint: disable=g-import-not-at-top
  it = trainer.get_dataset_iterator(
      mixture, {"inputs": inputs, "targets": targets},
      seqio.PrefixLMFeatureConverter(pack=True), "train", 64, shuffle=True,
      seed=0, num_epochs=1, use_cached=False, shard_info=None)
  counts = np.concatenate([(b["decoder_loss_weights"] > 0).sum(1)
                           for b in it])
  return {"rows": int(len(counts)), "max": int(counts.max()),
          "mean": round(float(counts.mean()), 2)}


def decoder_row(vocab: int, b: int, li: int, lt: int, bound: int,
                steps: int) -> dict:
  from recjax.models import decoder_only  # pylint: disable=g-import-not-at-top
  from recjax.train import model_api  # pylint: disable=g-import-not-at-top
  cfg = tt.gin_config(decoder_only.DecoderOnlyConfig,
                      "models/decoder_tiny.gin",
                      ["ACTIVATION_DTYPE = 'float32'", "DROPOUT_RATE = 0.0",
                       f"VOCAB_SIZE = {vocab}"])
  batch = dtt.make_batch(vocab, b, li, lt, seed=0)
  out = {}
  for name, positions in (("every_position", None), ("targets_only", bound)):
    model = model_api.DecoderOnlyModel(
        decoder_only.DecoderOnlyTransformer(cfg), max_target_tokens=positions)
    out[name] = measure(model, batch, steps)
    print(f"  decoder {name}: {out[name]}", flush=True)
  return out


def t5_row(vocab: int, b: int, li: int, lt: int, steps: int) -> dict:
  from recjax.models import t5  # pylint: disable=g-import-not-at-top
  from recjax.train import model_api  # pylint: disable=g-import-not-at-top
  cfg = tt.gin_config(t5.T5Config, "models/flan_t5_tiny.gin",
                      ["ACTIVATION_DTYPE = 'float32'", "DROPOUT_RATE = 0.0",
                       f"VOCAB_SIZE = {vocab}"])
  model = model_api.EncoderDecoderModel(t5.Transformer(cfg))
  out = measure(model, tt.make_batch(vocab, b, li, lt, seed=0), steps)
  print(f"  tiny FLAN-T5: {out}", flush=True)
  return out


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", default="quickstart,128k",
                 help=f"comma-separated, of {list(ROWS)}")
  p.add_argument("--steps", type=int, default=5,
                 help="timed steps per measurement (median reported)")
  p.add_argument("--packed_mixture", default=None,
                 help="also count the target tokens per packed row (512 + "
                 "16) over an epoch of this registered mixture")
  args = p.parse_args(argv)
  names = pick_rows(p, args.rows, ROWS)
  import jax  # pylint: disable=g-import-not-at-top
  cpu = cpu_model()
  print(f"target-only logits; host CPU: {cpu}; {jax.device_count()} "
        f"devices ({jax.devices()[0].platform})", flush=True)
  results = {}
  for r in names:
    vocab, b, li, lt, bound, with_t5 = ROWS[r]
    print(f"{r}: vocab {vocab}, batch {b}, {li} + {lt} tokens, logits at "
          f"{bound} positions", flush=True)
    row = decoder_row(vocab, b, li, lt, bound, args.steps)
    row["speedup"] = round(row["every_position"]["step_s"] /
                           row["targets_only"]["step_s"], 2)
    if with_t5:
      row["flan_t5_tiny"] = t5_row(vocab, b, li, lt, args.steps)
      row["decoder_over_t5"] = round(row["targets_only"]["step_s"] /
                                     row["flan_t5_tiny"]["step_s"], 2)
      row["decoder_over_t5_before"] = round(
          row["every_position"]["step_s"] / row["flan_t5_tiny"]["step_s"], 2)
    results[r] = row

  print()
  print("| shape | logits at | step (s) | XLA temporaries (GiB) | loss |")
  print("|---|---|---:|---:|---:|")
  for r, row in results.items():
    vocab, b, li, lt, bound, _ = ROWS[r]
    shape = f"{r}: vocab {vocab}, {b} x ({li} + {lt})"
    for name in ("every_position", "targets_only"):
      m = row[name]
      where = f"{bound} positions" if name == "targets_only" else (
          f"all {li + lt}")
      print(f"| {shape} | {where} | {m['step_s']} | "
            f"{m['temp_gib']} | {m['loss']} |")
    if "flan_t5_tiny" in row:
      m = row["flan_t5_tiny"]
      print(f"| {shape} | tiny FLAN-T5 (targets) | {m['step_s']} | "
            f"{m['temp_gib']} | {m['loss']} |")
  print()
  for r, row in results.items():
    line = f"{r}: targets only is {row['speedup']}x faster"
    if "decoder_over_t5" in row:
      line += (f"; decoder step / tiny FLAN-T5 step: "
               f"{row['decoder_over_t5_before']} -> {row['decoder_over_t5']} "
               "(target <= 1.5)")
    print(line)
  out = {"host_cpu": cpu, "devices": jax.device_count(), "rows": results}
  if args.packed_mixture:
    out["packed_targets"] = packed_targets(args.packed_mixture, 512, 16)
    print(f"{args.packed_mixture}, packed 512 + 16: target tokens per row "
          f"{out['packed_targets']}")
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
