"""The one slot mechanism (recjax.slots): prompts -> records -> SeqIO -> batch
-> model fill, for both backbones, in training and in inference."""
from __future__ import annotations


import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from recjax import main
from recjax import slots
from recjax.infer import evaluation
from recjax.infer import predict
from recjax.models import decoder_only
from recjax.models import hybrid
from recjax.models import t5
from recjax.models.sasrec import SASRecConfig
from recjax.prompts import PromptConfig
from recjax.prompts import common
from recjax.prompts.export import write_task_files
from recjax.train import model_api
from recjax.train import optimizers
from recjax.train import slot_model
from recjax.train import test_utils
from seqio_tasks import registry
from seqio_tasks import slots as slot_ops
from tiny_data import tiny_data

K = 2
LENGTHS = {"inputs": 96, "targets": 8, "slot_items": 12}
T5_CFG = t5.T5Config(vocab_size=512, emb_dim=16, num_heads=2,
                     num_encoder_layers=1, num_decoder_layers=1, head_dim=8,
                     mlp_dim=32, dtype="float32")
DEC_CFG = decoder_only.DecoderOnlyConfig(
    vocab_size=512, emb_dim=16, num_heads=2, num_kv_heads=1, head_dim=8,
    num_layers=1, mlp_dim=32, dtype="float32")


class SlotTable(nn.Module):
  """K learned vectors per item: the simplest slot module."""
  num_items: int
  k: int
  width: int

  def setup(self):
    self.table = self.param(
        "table", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                              ("vocab", "embed")),
        (self.num_items, self.k * self.width))

  def soft_tokens(self, items):
    return jnp.take(self.table, items, axis=0).reshape(
        items.shape + (self.k, self.width))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  data = tiny_data()
  d = tmp_path_factory.mktemp("slots")
  write_task_files(data, d, config=PromptConfig(
      num_negatives=4, max_history=4, item_slots="replace"), vocab_size=400,
                   num_shards=1, tasks=("retrieval", "ranking"))
  registry.register_prepared(d, dataset_name="tslots")
  gin.clear_config()
  gin.parse_config(f"slots.tokens_per_slot.value = {K}")
  yield d, data
  gin.clear_config()


def _lm(arch):
  if arch == "encoder_decoder":
    return model_api.EncoderDecoderModel(model_api.t5_transformer(T5_CFG))
  return model_api.DecoderOnlyModel(
      model_api.decoder_only_transformer(DEC_CFG), bos_id=-1)


def _model(arch, num_items):
  return slot_model.SlotModel(_lm(arch), SlotTable(num_items, K, 16),
                              tokens_per_slot=K)


def _batches(model, pack, n=2, batch=8):
  conv = model.feature_converter_cls(pack=pack)
  ds = seqio.get_dataset("tslots_retrieval", task_feature_lengths=LENGTHS,
                         dataset_split="train", shuffle=False,
                         feature_converter=conv)
  return [{k: np.asarray(v) for k, v in b.items()}
          for b in ds.batch(batch, drop_remainder=True).take(n)
          .as_numpy_iterator()]


def _init(model, pack=False):
  conv = model.feature_converter_cls(pack=pack)
  shapes = {k: (1, v) for k, v in conv.get_model_feature_lengths(
      LENGTHS).items()}
  return nn.unbox(model.get_initial_variables(jax.random.PRNGKey(0),
                                              shapes)["params"])


# ---------------------------------------------------------------- prompts
def test_prompts_carry_slot_indices():
  data = tiny_data()
  cfg = PromptConfig(item_slots="append", max_history=3)
  ctx = common.context(data, cfg)
  ex = common.example(common.history_text(ctx, [5, 0, 7]), "t", "retrieval", 0)
  assert ex["inputs"].count(slots.SLOT_MARKER) == 3
  assert ex["slot_items"] == [6, 1, 8]
  assert '"Thing 5' in ex["inputs"]  # 'append' keeps the title
  plain = common.example("no slots here", "t", "retrieval", 0)
  assert "slot_items" not in plain
  with pytest.raises(ValueError, match="item_slots"):
    PromptConfig(item_slots="sometimes")


# ------------------------------------------------------------------ seqio
def test_tokenize_with_slots_and_expand(prepared):
  del prepared
  task = seqio.get_mixture_or_task("tslots_retrieval")
  vocab = task.output_features["inputs"].vocabulary
  ex = next(task.get_dataset(LENGTHS, split="train", shuffle=False)
            .as_numpy_iterator())
  text = ex["inputs_pretokenized"].decode()
  parts = text.split(slots.SLOT_MARKER)
  want = []
  for i, part in enumerate(parts):
    want += vocab.encode(part)
    if i < len(parts) - 1:
      want += [slots.SLOT_TOKEN_ID] * K
  assert list(ex["inputs"]) == want + [1]
  assert len(ex["slot_items"]) == len(parts) - 1 > 0


def test_truncated_slots_are_refused(prepared):
  del prepared
  model = _model("encoder_decoder", 80)
  conv = model.feature_converter_cls(pack=False)
  short = dict(LENGTHS, inputs=12)
  ds = seqio.get_dataset("tslots_retrieval", task_feature_lengths=short,
                         dataset_split="train", shuffle=False,
                         feature_converter=conv)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="TASK_FEATURE_LENGTHS"):
    for _ in ds.take(50).as_numpy_iterator():
      pass
  with pytest.raises(ValueError, match="slot_items"):
    conv.get_model_feature_lengths({"inputs": 8, "targets": 4})


class _TableOf(SlotTable):
  """SlotTable that states its table (as ILM's encoder and RSLLM's
  projector do), so its converter checks slot values against it."""
  catalogue: str = ""
  user_slot: bool = False

  def slot_table(self):
    return slots.SlotTable(self.num_items, self.user_slot, self.catalogue)


def _first_examples(model, n=50):
  conv = model.feature_converter_cls(pack=False)
  ds = seqio.get_dataset("tslots_retrieval", task_feature_lengths=LENGTHS,
                         dataset_split="train", shuffle=False,
                         feature_converter=conv)
  return list(ds.take(n).as_numpy_iterator())


def test_slot_items_outside_the_modules_table_are_refused(prepared):
  _, data = prepared
  top = max(int(ex["slot_items"].max())
            for ex in _first_examples(_model("encoder_decoder", 80)))
  assert top > 1  # the examples reach past a table one row shorter
  fits = slot_model.SlotModel(
      _lm("encoder_decoder"), _TableOf(data.num_items, K, 16),
      tokens_per_slot=K)
  assert len(_first_examples(fits)) == 50
  for arch in ("encoder_decoder", "decoder_only"):
    short = slot_model.SlotModel(
        _lm(arch), _TableOf(top - 1, K, 16, catalogue="/data/other_shop"),
        tokens_per_slot=K)
    with pytest.raises(tf.errors.InvalidArgumentError, match=(
        rf"outside the table of the slot module \(built from "
        rf"/data/other_shop\), which holds items 1..{top - 1}")) as refused:
      _first_examples(short)
    # the CLI says it in one line (`recjax train: input pipeline: ...`)
    line = main._user_error_line(refused.value)  # pylint: disable=protected-access
    assert line.startswith("input pipeline: Slot") and "\n" not in line
    assert line.endswith("the directory the tasks came from."), line


def test_slot_range_check_allows_padding_items_and_the_user_slot():
  user = slots.USER_SLOT_ITEM
  check = lambda values, user_slot: slot_ops.check_slot_range(
      tf.constant(values), 4, user_slot, "refused")
  check([0, 1, 4, 0], False)
  check([2, user, 0], True)
  for bad, user_slot in (([5], False), ([user], False), ([-1], True),
                         ([1, 5, user], True)):
    with pytest.raises(tf.errors.InvalidArgumentError, match="refused"):
      check(bad, user_slot)


def test_slot_modules_state_their_tables():
  from recjax.models import item_encoder
  cfg = item_encoder.ItemEncoderConfig(num_items=7)
  assert item_encoder.ItemEncoder(cfg, catalogue="/d").slot_table() == (
      slots.SlotTable(7, user_slot=False, catalogue="/d"))
  rc = SASRecConfig(num_items=11, max_len=4, n_layers=1, n_heads=1,
                    hidden=8, inner=16)
  projector = hybrid.HybridProjector(
      hybrid.HybridProjectorConfig(lm_emb_dim=16, tokens_per_slot=K), rc,
      catalogue="/d")
  assert projector.slot_table() == slots.SlotTable(11, True, "/d")
  model = slot_model.SlotModel(_lm("encoder_decoder"), projector,
                               tokens_per_slot=K)
  assert model.feature_converter_cls(pack=False).slot_table == (
      projector.slot_table())


# ------------------------------------------------------------------ fill
def test_fill_slots_places_each_items_vectors():
  sid = slots.SLOT_TOKEN_ID
  tokens = jnp.array([[5, sid, sid, 6, sid, sid, 1, 0],
                      [sid, sid, 7, 1, sid, sid, 1, 0]])  # row 2: packed
  items = jnp.array([[3, 1, 0], [2, 4, 0]])
  vectors = jnp.arange(2 * 3 * K * 1, dtype=jnp.float32).reshape(2, 3, K, 1)
  out, emb, mask = slot_model.fill_slots(tokens, vectors, items, K, 9)
  np.testing.assert_array_equal(out, jnp.where(tokens == sid, 9, tokens))
  np.testing.assert_array_equal(mask, tokens == sid)
  # row 0: item 0's two vectors (0, 1), then item 1's (2, 3)
  np.testing.assert_array_equal(emb[0, [1, 2, 4, 5], 0], [0, 1, 2, 3])
  np.testing.assert_array_equal(emb[1, [0, 1, 4, 5], 0], [6, 7, 8, 9])
  with pytest.raises(ValueError, match="vectors per item"):
    slot_model.fill_slots(tokens, vectors[:, :, :1], items, K, 9)


@pytest.mark.parametrize("arch", ["encoder_decoder", "decoder_only"])
def test_without_slots_the_model_is_the_plain_lm(prepared, arch):
  _, data = prepared
  model = _model(arch, data.num_items)
  params = _init(model)
  batch = _batches(model, pack=False, n=1)[0]
  lm_params, _ = model.split_params(params)
  plain = dict(batch)
  plain[slots.SLOT_FEATURE] = np.zeros_like(batch[slots.SLOT_FEATURE])
  key = ("decoder_input_tokens" if arch == "decoder_only"
         else "encoder_input_tokens")
  for k in (key, "decoder_target_tokens"):  # what the LM sees at slots
    plain[k] = np.where(plain[k] == slots.SLOT_TOKEN_ID, 2, plain[k])
  slotless, _ = model.loss_fn(params, plain, None)
  lm_loss, _ = model.lm.loss_fn(lm_params, {
      k: v for k, v in plain.items() if k != slots.SLOT_FEATURE}, None)
  np.testing.assert_allclose(slotless, lm_loss, rtol=1e-6)
  filled, _ = model.loss_fn(params, batch, None)
  assert abs(float(filled) - float(lm_loss)) > 1e-4  # the slots do matter


@pytest.mark.parametrize("arch", ["encoder_decoder", "decoder_only"])
def test_packed_equals_unpacked(prepared, arch):
  _, data = prepared
  model = _model(arch, data.num_items)
  params = _init(model)
  unpacked = _batches(model, pack=False, n=1, batch=16)[0]
  packed = _batches(model, pack=True, n=1, batch=16)[0]
  n_packed = int(np.sum(packed["slot_items"] > 0))
  n_unpacked = int(np.sum(unpacked["slot_items"] > 0))
  assert n_packed >= n_unpacked
  # The summed token loss of the examples present in both agrees: compare
  # per-token mean on the packed rows' examples with their unpacked twins.
  conv = model.feature_converter_cls(pack=False)
  ds = seqio.get_dataset("tslots_retrieval", task_feature_lengths=LENGTHS,
                         dataset_split="train", shuffle=False,
                         feature_converter=conv)
  n_examples = int(model.loss_fn(params, packed, None)[1]["num_examples"])
  singles = next(ds.batch(n_examples).as_numpy_iterator())
  _, m_packed = model.loss_fn(params, packed, None)
  _, m_single = model.loss_fn(params, singles, None)
  np.testing.assert_allclose(m_packed["cross_ent_loss_sum"],
                             m_single["cross_ent_loss_sum"], rtol=2e-5)


# ------------------------------------------------------------- inference
@pytest.mark.parametrize("arch", ["encoder_decoder", "decoder_only"])
def test_inference_scores_equal_the_training_loss(prepared, arch):
  _, data = prepared
  model = _model(arch, data.num_items)
  model.lm.input_vocabulary = model.lm.output_vocabulary = (
      seqio.get_mixture_or_task("tslots_retrieval")
      .output_features["inputs"].vocabulary)
  params = _init(model)
  task = seqio.get_mixture_or_task("tslots_retrieval")
  exs = list(evaluation.iter_examples(task, "train", LENGTHS,
                                      num_examples=4))
  batch = evaluation.encode_batch(exs, LENGTHS, 4)
  assert batch["slot_items"].shape == (4, LENGTHS["slot_items"])
  scores = predict.score_batch(model, params, batch)
  single = _batches(model, pack=False, n=1, batch=4)[0]
  for r in range(4):
    row = {k: v[r:r + 1] for k, v in single.items()}
    _, m = model.loss_fn(params, row, None)
    np.testing.assert_allclose(-scores[r], m["cross_ent_loss_sum"],
                               rtol=2e-5)
  # candidates: the target among others scores as score_batch does
  cands = np.stack([batch["decoder_target_tokens"],
                    np.roll(batch["decoder_target_tokens"], 1, axis=0)], 1)
  cand_scores = predict.score_candidates(
      model, params, batch["encoder_input_tokens"], cands,
      batch["slot_items"])
  np.testing.assert_allclose(cand_scores[:, 0], scores, rtol=2e-5)
  # greedy decoding runs and its score is its log-likelihood
  tokens, greedy = predict.predict_batch(
      model, params, batch, decode_method="greedy", max_decode_length=6)
  out = np.asarray(tokens[:, 0])
  again = dict(batch, decoder_target_tokens=out,
               decoder_input_tokens=np.pad(out[:, :-1], ((0, 0), (1, 0))))
  again.pop("decoder_loss_weights")
  np.testing.assert_allclose(predict.score_batch(model, params, again),
                             greedy[:, 0], rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------- training
def test_sharded_equals_unsharded_and_the_lm_stays_frozen(prepared):
  _, data = prepared
  model = _model("encoder_decoder", data.num_items)
  batches = _batches(model, pack=True, n=2)
  conv = model.feature_converter_cls(pack=True)
  shapes = {k: (1, v) for k, v in conv.get_model_feature_lengths(
      LENGTHS).items()}
  frozen = ("^(?!item_encoder/)",)
  tx = lambda: optimizers.adafactor(learning_rate=lambda _: 0.05)
  m1, s1, p0 = test_utils.run_train_steps(model, (1, 1), tx, batches, shapes,
                                          frozen_patterns=frozen)
  m8, s8, _ = test_utils.run_train_steps(model, (2, 4), tx, batches, shapes,
                                         frozen_patterns=frozen)
  for a, b in zip(m1, m8):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
  final = jax.device_get(s8.params)
  lm0, table0 = model.split_params(p0)
  lm1, table1 = model.split_params(final)
  jax.tree_util.tree_map(np.testing.assert_array_equal, lm0, lm1)
  assert float(np.abs(table1["table"] - table0["table"]).max()) > 0
  np.testing.assert_allclose(table1["table"],
                             jax.device_get(s1.params)["item_encoder"]["table"],
                             rtol=1e-5, atol=1e-6)
  # the frozen LM carries no optimizer state
  # (Adafactor keeps an unfactored second moment for this small table, plus
  # a few scalars: nothing of the LM's 22k parameters)
  opt_leaves = jax.tree_util.tree_leaves(jax.device_get(s8.opt_state))
  assert table0["table"].size <= sum(np.size(x) for x in opt_leaves) <= (
      table0["table"].size + 8)


def test_width_mismatch_is_refused():
  with pytest.raises(ValueError, match="width"):
    class Cfg:
      lm_emb_dim = 8

    class Mod(SlotTable):
      config: object = Cfg()

    slot_model.SlotModel(_lm("encoder_decoder"), Mod(10, K, 8),
                         tokens_per_slot=K)
