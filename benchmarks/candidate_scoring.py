"""Decoder-only candidate scoring: one prompt pass per candidate list, or one per candidate.

Question: what does ranking evaluation (the LLaRA protocol: 20 candidates
per prompt, scored by log-likelihood) cost when the prompt is prefilled once
into the KV cache and every candidate continues from it
(`predict.score_candidates`, the default), against running the whole prompt
again with each candidate (`share_prompt=False`, the former path)? Target:
at most 2x the cost of one prompt pass plus the candidates' own tokens.

Each row jits `score_candidates` both ways for `models/decoder_tiny.gin`
(float32) at an evaluation batch of random full prompts and random
candidates, checks the two give the same scores, and times the median of
`--repeats` calls after a compile; `one prompt pass` is `score_batch` with a
one-token target (the prompt's forward alone). Rows:

* `quickstart`: the quickstart's ranking evaluation: batch 32 (runs/eval.gin),
  prompts of 512 tokens (its ranking prompts run up to 511), 20 candidates of
  4 tokens (`item_N` + EOS), vocabulary 2,304.
* `lastfm`: LLaRA's LastFM ranking as `benchmarks/rsllm_lastfm.py` runs it:
  batch 32, prompts of 512 tokens, 20 candidates of 12 tokens (the longest
  artist names with EOS), vocabulary 2,304.

  .venv/bin/python benchmarks/candidate_scoring.py [--repeats 3] [--rows quickstart,lastfm]

The last stdout line is one JSON object: per row the seconds of
`per_candidate` (before), `shared_prompt` (after) and `one_prompt_pass`, the
speedup, and `after_over_prompt_pass` (target <= 2).
"""
from __future__ import annotations

import argparse
import functools
import json
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import train_throughput as tt  # noqa: E402
from _cli_runs import cpu_model, pick_rows  # noqa: E402

# name -> (vocab, batch, prompt length, candidates, candidate length)
ROWS = {"quickstart": (2304, 32, 512, 20, 4),
        "lastfm": (2304, 32, 512, 20, 12)}


def timed(fn, *args, repeats: int) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return round(statistics.median(times), 4)


def bench_row(vocab: int, b: int, p: int, c: int, t: int,
              repeats: int) -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from recjax.infer import predict  # pylint: disable=g-import-not-at-top
  from recjax.models import decoder_only  # pylint: disable=g-import-not-at-top
  from recjax.train import model_api  # pylint: disable=g-import-not-at-top
  cfg = tt.gin_config(decoder_only.DecoderOnlyConfig,
                      "models/decoder_tiny.gin",
                      ["ACTIVATION_DTYPE = 'float32'", "DROPOUT_RATE = 0.0",
                       f"VOCAB_SIZE = {vocab}"])
  model = model_api.DecoderOnlyModel(decoder_only.DecoderOnlyTransformer(cfg))
  params = flax.linen.unbox(decoder_only.init_variables(
      cfg, jax.random.PRNGKey(0))["params"])
  rng = np.random.default_rng(0)
  prompts = rng.integers(2, vocab, (b, p), dtype=np.int32)
  cands = rng.integers(2, vocab, (b, c, t), dtype=np.int32)
  cands[:, :, -1] = 1  # EOS
  score = lambda share: jax.jit(functools.partial(
      predict.score_candidates, model, share_prompt=share))
  after, before = score(True), score(False)
  np.testing.assert_allclose(np.asarray(after(params, prompts, cands)),
                             np.asarray(before(params, prompts, cands)),
                             rtol=1e-4, atol=1e-4)
  one = jax.jit(functools.partial(predict.score_batch, model))
  one_batch = {"encoder_input_tokens": prompts,
               "decoder_target_tokens": np.ones((b, 1), np.int32)}
  row = {"per_candidate": timed(before, params, prompts, cands,
                                repeats=repeats),
         "shared_prompt": timed(after, params, prompts, cands,
                                repeats=repeats),
         "one_prompt_pass": timed(one, params, one_batch, repeats=repeats)}
  row["speedup"] = round(row["per_candidate"] / row["shared_prompt"], 2)
  row["after_over_prompt_pass"] = round(
      row["shared_prompt"] / row["one_prompt_pass"], 2)
  return row


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", default="quickstart,lastfm",
                 help=f"comma-separated, of {list(ROWS)}")
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)
  names = pick_rows(p, args.rows, ROWS)
  import jax  # pylint: disable=g-import-not-at-top
  cpu = cpu_model()
  print(f"candidate scoring, tiny decoder-only; host CPU: {cpu}; "
        f"{jax.device_count()} devices", flush=True)
  results = {}
  for r in names:
    vocab, b, plen, c, t = ROWS[r]
    print(f"{r}: batch {b}, prompts {plen}, {c} candidates of {t} tokens",
          flush=True)
    results[r] = bench_row(vocab, b, plen, c, t, args.repeats)
    print(f"  {results[r]}", flush=True)
  print()
  print("| shape | prompt per candidate (s) | one prompt pass per list (s) "
        "| one prompt pass alone (s) | speedup | after / prompt pass |")
  print("|---|---:|---:|---:|---:|---:|")
  for r, row in results.items():
    vocab, b, plen, c, t = ROWS[r]
    print(f"| {r}: {b} x {plen} tokens, {c} x {t} | {row['per_candidate']} | "
          f"{row['shared_prompt']} | {row['one_prompt_pass']} | "
          f"{row['speedup']}x | {row['after_over_prompt_pass']} |")
  out = {"host_cpu": cpu, "rows": results}
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
