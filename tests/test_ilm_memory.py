"""benchmarks/ilm_memory.py at toy sizes: the sizes it reports are exact."""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] /
                       "benchmarks"))

import ilm_memory as bench  # pylint: disable=g-import-not-at-top,wrong-import-position

# LM emb 32; item encoder hidden 24 (!= cf 16, != emb), K 2, 1 layer.
H, C, K, M, N, E = 24, 16, 2, 40, 50, 32
ARGV = ["--vocab_size", "256", "--emb_dim", str(E), "--num_heads", "2",
        "--head_dim", "8", "--mlp_dim", "48", "--num_layers", "1",
        "--encoder_hidden", str(H), "--encoder_layers", "1",
        "--encoder_heads", "2", "--encoder_mlp", str(M), "--cf_dim", str(C),
        "--query_tokens", str(K), "--num_items", str(N), "--batch", "2",
        "--inputs", "20", "--targets", "4", "--slots", "3", "--steps", "1",
        "--repeats", "1", "--warmup_steps", "1", "--malloc_tuning", "off"]
# Two compiled rows keep the test short; AdamW fine-tuning is sized only.
TIMED = ["--rows", "ilm,finetune"]
SIZED = ["--rows", "finetune_adamw", "--size_only"]


def _trainable_encoder_params() -> int:
  """The phase-2 encoder's trained parameters, by hand: what soft_tokens
  uses (ilm_phase2.gin freezes only the LM)."""
  attention = 4 * (H * H + H) + 2 * H                     # q, k, v, out, LN
  cross = 2 * (H * H + H) + 2 * (C * H + H) + 2 * H       # k, v read the CF
  ffn = (H * M + M) + (M * H + H) + 2 * H                 # query FFN + LN
  return (K * H + 2 * H               # query_tokens, their LayerNorm
          + N * C + 2 * C             # cf_table (learned ids), cf_norm
          + attention + cross + ffn   # one layer
          + H * E + E)                # adapter to the LM's width


def test_ilm_optimizer_state_is_the_encoders_alone(capsys):
  result = bench.main(ARGV + TIMED)
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert json.loads(last)["ilm_optimizer_bytes"] == (
      result["ilm_optimizer_bytes"])
  for key in ("ilm_examples_per_s", "finetune_examples_per_s",
              "ilm_trainable_params", "ilm_optimizer_bytes",
              "finetune_optimizer_bytes"):
    assert result[key] is not None, key
  assert result["ilm_examples_per_s"] > 0
  assert result["finetune_examples_per_s"] > 0
  rows = {r["row"]: r for r in result["rows"]}
  assert all(0 < r["last_loss"] < 20 for r in rows.values())

  n = _trainable_encoder_params()
  assert n == 8_224 + 2 * H
  assert result["ilm_trainable_params"] == n
  # AdamW: mu and nu in float32 for each trained parameter, plus two int32
  # step counters (scale_by_adam's and the learning-rate schedule's); the
  # frozen LM (optax.set_to_zero) holds nothing.
  assert result["ilm_optimizer_bytes"] == 2 * 4 * n + 2 * 4
  assert result["ilm_optimizer_bytes"] < result["finetune_optimizer_bytes"]

  lm_params = rows["finetune"]["params"]
  assert rows["finetune"]["trainable_params"] == lm_params
  sized = bench.main(ARGV + SIZED)
  assert sized["finetune_adamw_examples_per_s"] is None  # not timed
  assert sized["finetune_adamw_optimizer_bytes"] == 2 * 4 * lm_params + 8
  # ILM's parameters: the same LM plus the encoder.
  assert rows["ilm"]["params"] == lm_params + n
  assert rows["ilm"]["param_bytes"] == 4 * rows["ilm"]["params"]
