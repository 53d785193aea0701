"""benchmarks/decoder_train_throughput.py's pure parts: configs, FLOPs, batch."""
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] /
                       "benchmarks"))

import decoder_train_throughput as bench  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_100m_config_has_100m_parameters():
  from recjax.models import decoder_only  # pylint: disable=g-import-not-at-top
  cfg = bench.load_config("100m", 0.0, "float32")
  n = sum(int(np.prod(s)) for s in decoder_only.param_shapes(cfg).values())
  # 32000 x 768 tied embedding + 12 x (q, o 768^2; k, v 768 x 256; SwiGLU
  # 3 x 768 x 2048; two norms) + final norm; transformers' LlamaForCausalLM
  # of hf_arch(cfg) reported the same count.
  assert n == 32000 * 768 + 12 * (2 * 768 * 768 + 2 * 768 * 256 +
                                  3 * 768 * 2048 + 2 * 768) + 768
  assert n == 100_092_672
  assert cfg.dtype == "float32" and cfg.tie_word_embeddings
  arch = bench.hf_arch(cfg)
  assert (arch["num_attention_heads"], arch["num_key_value_heads"],
          arch["head_dim"], arch["vocab_size"]) == (12, 4, 64, 32000)


def test_forward_matmul_flops_by_hand():
  cfg = bench.load_config("tiny", 0.0, "float32")  # d 64, f 128, 4/2 x 16
  b, li, lt = 2, 3, 1
  n, length = 8, 4
  per_layer = (2 * n * 64 * 64           # q, o: 4 heads x 16
               + 2 * n * 64 * 32         # k, v: 2 kv heads x 16
               + 2 * b * 4 * length * length * 16   # QK^T, AV
               + 3 * n * 64 * 128)       # SwiGLU
  forward = 2 * (2 * per_layer + n * 64 * 32128)   # 2 layers + logits
  flops = train_throughput.matmul_train_flops(
      bench.forward_matmuls(cfg, b, li, lt))
  assert flops == 3 * forward
  # 6 N D counts the same weight matmuls, without the attention products.
  attention = 3 * 2 * 2 * (2 * b * 4 * length * length * 16)
  assert bench.approx_6nd_flops(cfg, b, li, lt) == flops - attention


def test_batch_is_the_prefix_lm_converters():
  """make_batch = seqio.PrefixLMFeatureConverter(pack=False) on the rows."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  b, li, lt = 2, 5, 3
  batch = bench.make_batch(100, b, li, lt, seed=0)
  seq = batch["decoder_target_tokens"]
  assert seq.shape == (b, li + lt) and seq.min() >= 1
  ds = tf.data.Dataset.from_tensor_slices(
      {"inputs": seq[:, :li], "targets": seq[:, li:]})
  rows = list(seqio.PrefixLMFeatureConverter(pack=False)(
      ds, {"inputs": li, "targets": lt}).as_numpy_iterator())
  assert set(batch) <= set(rows[0])
  for k, v in batch.items():
    np.testing.assert_array_equal(v, np.stack([r[k] for r in rows]), err_msg=k)
  assert batch["decoder_loss_weights"].sum() == b * lt
