"""RSLLM: user slots in prompts, the hybrid projector over a frozen SASRec,
the two InfoNCE losses, and training on the 8-device mesh."""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from recjax import checkpoints
from recjax import slots
from recjax.baselines import cli as baselines_cli
from recjax.infer import jobs_main
from recjax.models import decoder_only
from recjax.models import hybrid
from recjax.models import lora as lora_lib
from recjax.models import t5
from recjax.models.sasrec import SASRec, SASRecConfig
from recjax.prompts import PromptConfig
from recjax.prompts import common
from recjax.prompts.export import write_task_files
from recjax.train import checkpointing
from recjax.train import model_api
from recjax.train import optimizers
from recjax.train import rsllm_model
from recjax.train import test_utils
from recjax.train import trainer
from seqio_tasks import registry
from tiny_data import tiny_data

K = 2
WIDTH = 16
LENGTHS = {"inputs": 160, "targets": 12, "slot_items": 16}
T5_CFG = t5.T5Config(vocab_size=512, emb_dim=WIDTH, num_heads=2,
                     num_encoder_layers=1, num_decoder_layers=1, head_dim=8,
                     mlp_dim=32, dtype="float32")
DEC_CFG = decoder_only.DecoderOnlyConfig(
    vocab_size=512, emb_dim=WIDTH, num_heads=2, num_kv_heads=1, head_dim=8,
    num_layers=1, mlp_dim=32, dtype="float32")
TASK = "trsllm_retrieval"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  data = tiny_data()
  d = tmp_path_factory.mktemp("rsllm") / "prepared"
  data.save(d)
  write_task_files(data, d, config=PromptConfig(
      num_negatives=4, max_history=4, item_format="title",
      item_slots="append", user_slot=True), vocab_size=400, num_shards=1,
                   tasks=("retrieval", "ranking"))
  registry.register_prepared(d, dataset_name="trsllm")
  sasrec_dir = tmp_path_factory.mktemp("sasrec") / "out"
  result = baselines_cli.train_baseline("sasrec", data, epochs=1, log=None,
                                        hidden=8, inner=16, max_len=8)
  baselines_cli.write_result(result, data, sasrec_dir)
  gin.clear_config()
  gin.parse_config(f"slots.tokens_per_slot.value = {K}")
  yield d, data, sasrec_dir
  gin.clear_config()


def _lm(arch, lora=None):
  if arch == "encoder_decoder":
    cfg = T5_CFG if lora is None else dataclasses.replace(T5_CFG, lora=lora)
    return model_api.EncoderDecoderModel(model_api.t5_transformer(cfg))
  cfg = DEC_CFG if lora is None else dataclasses.replace(DEC_CFG, lora=lora)
  return model_api.DecoderOnlyModel(
      model_api.decoder_only_transformer(cfg), bos_id=-1)


def _model(arch, sasrec_dir, *, lora=None, **kwargs):
  projector = rsllm_model.rsllm_projector(
      hybrid.HybridProjectorConfig(lm_emb_dim=WIDTH, tokens_per_slot=K),
      mixture_or_task_name=TASK, sasrec_dir=str(sasrec_dir))
  titles = rsllm_model.item_title_tokens(TASK, max_tokens=6)
  return rsllm_model.RSLLMModel(_lm(arch, lora), projector, tokens_per_slot=K,
                                item_titles=titles, **kwargs)


def _batches(model, n=2, batch=8):
  conv = model.feature_converter_cls(pack=False)
  ds = seqio.get_dataset(TASK, task_feature_lengths=LENGTHS,
                         dataset_split="train", shuffle=False,
                         feature_converter=conv)
  return [{k: np.array(v) for k, v in b.items()}
          for b in ds.batch(batch, drop_remainder=True).take(n)
          .as_numpy_iterator()]


def _shapes(model):
  conv = model.feature_converter_cls(pack=False)
  return {k: (1, v) for k, v in conv.get_model_feature_lengths(
      LENGTHS).items()}


def _init(model):
  return nn.unbox(model.get_initial_variables(jax.random.PRNGKey(0),
                                              _shapes(model))["params"])


# ---------------------------------------------------------------- prompts
def test_user_slot_follows_the_history():
  data = tiny_data()
  cfg = PromptConfig(item_slots="append", user_slot=True, item_format="title")
  ctx = common.context(data, cfg)
  ex = common.example(common.user_history_text(ctx, [5, 0]) + " then "
                      + common.history_text(ctx, [7]), "t", "ranking", 0)
  assert ex["slot_items"] == [6, 1, slots.USER_SLOT_ITEM, 8]
  assert ex["inputs"].count(slots.SLOT_MARKER) == 4
  assert "Thing 5" in ex["inputs"]
  with pytest.raises(ValueError, match="user_slot needs item_slots"):
    PromptConfig(user_slot=True)


def test_prepared_records_carry_the_user_slot(prepared):
  del prepared
  task = seqio.get_mixture_or_task(TASK)
  for ex in task.get_dataset(LENGTHS, split="train", shuffle=False).take(5):
    items = ex["slot_items"].numpy().tolist()
    assert items.count(slots.USER_SLOT_ITEM) == 1
    assert items[-1] == slots.USER_SLOT_ITEM  # retrieval: after the history


# -------------------------------------------------------------- projector
def _projector(sasrec_dir):
  """(SASRec's config, its saved values, a projector over them)."""
  config, values = baselines_cli.load_model(sasrec_dir)
  rc = SASRecConfig(**config)
  return rc, values, hybrid.HybridProjector(
      hybrid.HybridProjectorConfig(lm_emb_dim=WIDTH, tokens_per_slot=K), rc,
      recommender_values=lambda: values)


def test_user_slot_is_sasrecs_state_after_the_history(prepared):
  _, _, sasrec_dir = prepared
  rc, values, proj = _projector(sasrec_dir)
  u = slots.USER_SLOT_ITEM
  rows = jnp.array([[4, 9, 2, u, 30, 31], [u, 7, 0, 0, 0, 0]], jnp.int32)
  params = nn.unbox(proj.init(jax.random.PRNGKey(0), rows)["params"])
  # the frozen subtree is the saved SASRec, bit for bit
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         params["recommender"], values)
  got = proj.apply({"params": params}, rows, method="user_vectors")
  want = SASRec(rc).apply({"params": values}, jnp.array([[4, 9, 2]]),
                          jnp.array([3]), method=SASRec.encode)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  np.testing.assert_array_equal(got[1], 0.0)  # no history before the slot
  tokens = proj.apply({"params": params}, rows, method="soft_tokens")
  assert tokens.shape == (2, 6, K, WIDTH)
  # atol: the soft tokens are ~1e-3, and a batched and a single projection
  # may round differently in float32 (1e-9 apart on an Intel Xeon host).
  np.testing.assert_allclose(
      tokens[0, 3], proj.apply({"params": params}, got[0], method="project"),
      rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(
      tokens[0, 4], proj.apply({"params": params},
                               jnp.asarray(values["item_embedding"][30]),
                               method="project"), rtol=1e-6, atol=1e-8)


def test_user_slot_reads_the_last_max_len_items(prepared):
  """A history longer than SASRec's max_len: the user slot is SASRec's state
  over the last max_len items (as SASRec reads a sequence), not the first."""
  _, _, sasrec_dir = prepared
  rc, values, proj = _projector(sasrec_dir)
  history = list(range(3, 3 + rc.max_len + 3))  # 3 more than max_len
  rows = jnp.array([history + [slots.USER_SLOT_ITEM, 0]], jnp.int32)
  params = nn.unbox(proj.init(jax.random.PRNGKey(0), rows)["params"])
  got = proj.apply({"params": params}, rows, method="user_vectors")[0]
  encode = lambda items: SASRec(rc).apply(
      {"params": values}, jnp.array([items]), jnp.array([len(items)]),
      method=SASRec.encode)[0]
  np.testing.assert_allclose(got, encode(history[-rc.max_len:]), rtol=1e-6)
  assert np.abs(got - encode(history[:rc.max_len])).max() > 1e-3


def test_sasrec_of_another_catalogue_is_refused(prepared, tmp_path):
  d, data, _ = prepared
  other = tiny_data(n_items=81)
  result = baselines_cli.train_baseline("sasrec", other, epochs=1, log=None,
                                        hidden=8, inner=16, max_len=8)
  baselines_cli.write_result(result, other, tmp_path / "other")
  with pytest.raises(ValueError, match="another catalogue") as e:
    rsllm_model.rsllm_projector(
        hybrid.HybridProjectorConfig(lm_emb_dim=WIDTH, tokens_per_slot=K),
        mixture_or_task_name=TASK, sasrec_dir=str(tmp_path / "other"))
  assert str(d) in str(e.value)
  bpr = baselines_cli.train_baseline("bpr", data, epochs=1, log=None)
  baselines_cli.write_result(bpr, data, tmp_path / "bpr")
  with pytest.raises(ValueError, match="no saved model"):
    rsllm_model.rsllm_projector(
        hybrid.HybridProjectorConfig(lm_emb_dim=WIDTH, tokens_per_slot=K),
        mixture_or_task_name=TASK, sasrec_dir=str(tmp_path / "bpr"))


def test_ilm_refuses_a_user_slot_directory(prepared):
  """ILM's item encoder has no row for the user slot: the directory is
  refused by name (its item-text task, without user slots, is not)."""
  from recjax.models import item_encoder as item_encoder_lib
  from recjax.train import ilm_model
  d, _, _ = prepared
  config = item_encoder_lib.ItemEncoderConfig(num_query_tokens=K)
  with pytest.raises(ValueError, match="user_slot=true") as e:
    ilm_model.item_encoder(config, mixture_or_task_name=TASK)
  assert str(d) in str(e.value)
  ilm_model.item_encoder(config, mixture_or_task_name="trsllm_item_text")


def test_projector_width_and_slot_count_mismatches_are_refused(prepared):
  _, _, sasrec_dir = prepared
  projector = rsllm_model.rsllm_projector(
      hybrid.HybridProjectorConfig(lm_emb_dim=WIDTH * 2, tokens_per_slot=K),
      mixture_or_task_name=TASK, sasrec_dir=str(sasrec_dir))
  with pytest.raises(ValueError, match="width 32"):
    rsllm_model.RSLLMModel(_lm("encoder_decoder"), projector,
                           tokens_per_slot=K, id_text_weight=0)
  projector = rsllm_model.rsllm_projector(
      hybrid.HybridProjectorConfig(lm_emb_dim=WIDTH, tokens_per_slot=1),
      mixture_or_task_name=TASK, sasrec_dir=str(sasrec_dir))
  with pytest.raises(ValueError, match="1 vectors per slot"):
    rsllm_model.RSLLMModel(_lm("encoder_decoder"), projector,
                           tokens_per_slot=K, id_text_weight=0)


def test_slots_cut_by_the_input_length_are_refused(prepared):
  _, _, sasrec_dir = prepared
  model = _model("encoder_decoder", sasrec_dir)
  conv = model.feature_converter_cls(pack=False)
  ds = seqio.get_dataset(TASK, task_feature_lengths=dict(LENGTHS, inputs=20),
                         dataset_split="train", shuffle=False,
                         feature_converter=conv)
  with pytest.raises(Exception, match="slot"):
    next(ds.as_numpy_iterator())


# ----------------------------------------------------------------- losses
def _l2n(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _nce_rows(logits, targets):
  """Mean over rows of -sum(targets * log_softmax(logits))."""
  z = logits - logits.max(1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  return float(np.mean(-(targets * logp).sum(1)))


def _nce_once_per_item(logits, same):
  """InfoNCE with each row's own column as its target and every other
  column of the same item left out of its softmax (`same` [B, B] bool)."""
  eye = np.eye(len(logits), dtype=bool)
  return _nce_rows(np.where(same & ~eye, -1e9, logits), eye.astype(float))


def test_id_text_infonce_equals_the_hand_computed_value(prepared):
  _, _, sasrec_dir = prepared
  model = _model("encoder_decoder", sasrec_dir, temperature=0.5)
  params = _init(model)
  # items 3, 5, 3 (a duplicate: counted once, never a negative) and padding
  slot_items = jnp.array([[4, 6], [4, 0]], jnp.int32)
  got = float(model.id_text_loss(params, slot_items))
  emb = np.asarray(params["token_embedder"]["embedding"])
  proj = model.slot_module
  rp = {"params": params["rsllm"]}
  ids = np.array([4, 6, 4])
  idv = np.stack([np.asarray(proj.apply(rp, jnp.array([i]),
                                        method="soft_tokens"))[0].mean(0)
                  for i in ids])
  tv = []
  for i in ids:
    t = model.item_titles[i - 1]
    tv.append(emb[t[t > 0]].mean(0))
  tv = np.stack(tv)
  logits = _l2n(idv) @ _l2n(tv).T / 0.5
  same = ids[:, None] == ids[None, :]
  want = (_nce_once_per_item(logits, same) +
          _nce_once_per_item(logits.T, same)) / 2
  assert got == pytest.approx(want, rel=1e-5)
  assert want > 0


@pytest.mark.parametrize("arch", ["encoder_decoder", "decoder_only"])
def test_user_item_infonce_equals_the_hand_computed_value(prepared, arch):
  _, _, sasrec_dir = prepared
  model = _model(arch, sasrec_dir, temperature=0.2)
  params = _init(model)
  batch = _batches(model, n=1, batch=4)[0]
  # rows 0 and 2 share a target: each leaves the other out of its softmax
  for key in [k for k in batch if k.startswith("decoder_")]:
    batch[key][2] = batch[key][0]
  filled, emb, mask = model._filled_batch(params, batch)
  _, hidden = model._logits_and_hidden(params, filled, None, emb, mask)
  got = float(model.user_item_loss(params, filled, hidden))
  hidden = np.asarray(hidden)
  weights = np.asarray(model.lm._weights(filled)) > 0
  if arch == "encoder_decoder":
    m = batch["encoder_input_tokens"] > 0
    pooled = (hidden * m[..., None]).sum(1) / m.sum(1, keepdims=True)
  else:
    pooled = np.stack([h[np.argmax(w)] for h, w in zip(hidden, weights)])
  query = np.asarray(model.slot_module.apply(
      {"params": params["rsllm"]}, jnp.asarray(pooled), method="user_query"))
  table = np.asarray(params["token_embedder"]["embedding"])
  tgt_tokens = np.where(weights, batch["decoder_target_tokens"], 0)
  target = np.stack([table[t[t > 0]].mean(0) for t in tgt_tokens])
  logits = _l2n(query) @ _l2n(target).T / 0.2
  same = np.all(tgt_tokens[:, None] == tgt_tokens[None], -1)
  assert same[0, 2] and same.sum() == 6
  want = _nce_once_per_item(logits, same)
  assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("arch", ["encoder_decoder", "decoder_only"])
def test_without_id_slots_it_is_the_text_model(prepared, arch):
  _, _, sasrec_dir = prepared
  model = _model(arch, sasrec_dir, user_item_weight=0.0)
  params = _init(model)
  batch = _batches(model, n=1)[0]
  text = {k: v for k, v in batch.items() if k != slots.SLOT_FEATURE}
  text_key = ("encoder_input_tokens" if arch == "encoder_decoder"
              else "decoder_input_tokens")
  text[text_key] = np.where(text[text_key] == slots.SLOT_TOKEN_ID, 2,
                            text[text_key])
  if arch == "decoder_only":
    text["decoder_target_tokens"] = np.where(
        text["decoder_target_tokens"] == slots.SLOT_TOKEN_ID, 2,
        text["decoder_target_tokens"])
  lm_params, _ = model.split_params(params)
  want, _ = model.lm.loss_fn(lm_params, text, None)
  got, metrics = model.loss_fn(params, text, None)
  assert float(got) == float(want)
  assert set(metrics) >= {"lm_loss"} and "id_text_loss" not in metrics
  # ...and with slots its loss differs (the slots are read)
  with_slots, _ = model.loss_fn(params, batch, None)
  assert float(with_slots) != float(want)


def test_decoder_target_logits_leave_every_loss_unchanged(prepared):
  """The trainer binds RSLLM's decoder-only LM to the targets length
  (logits at the targets only): the LM loss, both InfoNCE losses (which
  read the hidden states of every position) and the gradients are equal."""
  _, _, sasrec_dir = prepared
  model = _model("decoder_only", sasrec_dir)
  bound = model.for_feature_lengths(LENGTHS, pack=False)
  assert bound.lm.max_target_tokens == LENGTHS["targets"]
  assert model.lm.max_target_tokens is None
  params = _init(model)
  batch = _batches(model, n=1)[0]
  grad = lambda m: jax.value_and_grad(
      lambda p: m.loss_fn(p, batch, None), has_aux=True)(params)
  (want, wm), wg = grad(model)
  (got, gm), gg = grad(bound)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for k in wm:
    np.testing.assert_allclose(gm[k], wm[k], rtol=1e-5, err_msg=k)
  for a, b in zip(jax.tree_util.tree_leaves(gg), jax.tree_util.tree_leaves(wg)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_packed_batches_are_refused(prepared):
  _, _, sasrec_dir = prepared
  model = _model("encoder_decoder", sasrec_dir)
  params = _init(model)
  batch = dict(_batches(model, n=1)[0])
  batch["encoder_segment_ids"] = np.ones_like(batch["encoder_input_tokens"])
  with pytest.raises(ValueError, match="unpacked"):
    model.loss_fn(params, batch, None)


# --------------------------------------------------------------- training
def test_stage2_trains_the_projector_and_lora_on_the_mesh(prepared):
  """Gradients reach the projector; SASRec and the LoRA base stay bit-
  identical; the (2, 4) mesh equals one device."""
  _, _, sasrec_dir = prepared
  lora = lora_lib.LoraConfig(rank=2)
  model = _model("encoder_decoder", sasrec_dir, lora=lora)
  batches = _batches(model, n=2)
  shapes = _shapes(model)
  frozen = trainer.training_frozen_patterns(model)
  assert any("rsllm/" in f for f in frozen)
  tx = lambda: optimizers.adafactor(learning_rate=lambda _: 0.05)
  m1, s1, p0 = test_utils.run_train_steps(model, (1, 1), tx, batches, shapes,
                                          frozen_patterns=frozen)
  m8, s8, _ = test_utils.run_train_steps(model, (2, 4), tx, batches, shapes,
                                         frozen_patterns=frozen)
  for a, b in zip(m1, m8):
    for k in ("loss", "lm_loss", "user_item_loss", "id_text_loss",
              "grad_norm"):
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, err_msg=k)
  assert m8[0]["user_item_loss"] > 0 and m8[0]["id_text_loss"] > 0
  final = jax.device_get(s8.params)
  base0, _ = lora_lib.split_lora(model.split_params(p0)[0])
  base1, adapters1 = lora_lib.split_lora(model.split_params(final)[0])
  jax.tree_util.tree_map(np.testing.assert_array_equal, base0, base1)
  _, adapters0 = lora_lib.split_lora(model.split_params(p0)[0])
  assert any(float(np.abs(a - b).max()) > 0 for a, b in zip(
      jax.tree_util.tree_leaves(adapters0),
      jax.tree_util.tree_leaves(adapters1)))
  proj0, proj1 = p0["rsllm"], final["rsllm"]
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         proj0["recommender"], proj1["recommender"])
  for name in ("mlp_in", "mlp_out", "user_head"):
    assert float(np.abs(proj1[name]["kernel"] - proj0[name]["kernel"]).max()
                 ) > 0, name
  np.testing.assert_allclose(
      proj1["mlp_out"]["kernel"],
      jax.device_get(s1.params)["rsllm"]["mlp_out"]["kernel"], rtol=1e-4,
      atol=1e-6)


# ------------------------------------------------------- the slot pathway
def _oracle_batches(batches, titles, seed, leak):
  """`batches` whose targets are random items' titles, unpredictable from
  the text; the user slot holds the target item itself (`leak`: an oracle
  leak, for pathway checks only) or always item 0."""
  rng = np.random.default_rng(seed)
  out = []
  for b in batches:
    b = dict(b)
    rows, length = b["decoder_target_tokens"].shape
    targets = rng.integers(len(titles), size=rows)
    tgt = np.zeros((rows, length), np.int32)
    for r, item in enumerate(targets):
      t = [int(x) for x in titles[item] if x > 0] + [1]
      tgt[r, :len(t)] = t
    b["decoder_target_tokens"] = tgt
    b["decoder_input_tokens"] = np.pad(tgt[:, :-1], ((0, 0), (1, 0)))
    b["decoder_loss_weights"] = (tgt > 0).astype(np.int32)
    items = b["slot_items"].copy()
    for r, item in enumerate(targets):
      items[r][items[r] == slots.USER_SLOT_ITEM] = (item if leak else 0) + 1
    b["slot_items"] = items
    out.append(b)
  return out


def test_the_lm_reads_what_the_slot_holds(prepared):
  """The forward half of the pathway: changing the item in one user slot
  changes that row's logits and no other row's (no leak across rows)."""
  _, _, sasrec_dir = prepared
  model = _model("encoder_decoder", sasrec_dir,
                 user_item_weight=0.0, id_text_weight=0.0)
  params = _init(model)
  b = _oracle_batches(_batches(model, n=1, batch=4), model.item_titles, 0,
                      True)[0]
  other = dict(b, slot_items=b["slot_items"].copy())
  user = np.argmax(np.cumsum(other["slot_items"][0] > 0))  # row 0's last slot
  other["slot_items"][0, user] = other["slot_items"][0, user] % 60 + 2

  def logits(batch):
    filled, emb, mask = model._filled_batch(  # pylint: disable=protected-access
        params, {k: jnp.asarray(v) for k, v in batch.items()})
    return np.asarray(model.lm._compute_logits(  # pylint: disable=protected-access
        params, filled, None, input_embeddings=emb, embedding_mask=mask))

  a, c = logits(b), logits(other)
  assert np.abs(a[0] - c[0]).max() > 1e-3
  np.testing.assert_array_equal(a[1:], c[1:])


# ------------------------------------------------- the shipped gins, end to end
LM_GINS = {
    "t5": ("models/flan_t5_tiny.gin", [
        f"T5Config.emb_dim = {WIDTH}", "T5Config.num_heads = 2",
        "T5Config.head_dim = 8", "T5Config.mlp_dim = 32",
        "T5Config.num_encoder_layers = 1", "T5Config.num_decoder_layers = 1"]),
    "decoder": ("models/decoder_tiny.gin", [
        f"DecoderOnlyConfig.emb_dim = {WIDTH}",
        "DecoderOnlyConfig.num_heads = 2",
        "DecoderOnlyConfig.num_kv_heads = 1", "DecoderOnlyConfig.head_dim = 8",
        "DecoderOnlyConfig.mlp_dim = 32", "DecoderOnlyConfig.num_layers = 1"]),
}
COMMON = ["VOCAB_SIZE = 512", "ACTIVATION_DTYPE = 'float32'",
          "DROPOUT_RATE = 0.0", "BATCH_SIZE = 8", "EVAL_PERIOD = 0",
          "train.log_every = 1", "TRAIN_STEPS = 2", "LEARNING_RATE = 0.01"]
TEXT_LENGTHS = {"inputs": 96, "targets": 12}


_gin = test_utils.gin_config


@pytest.fixture(scope="module")
def text_dir(prepared, tmp_path_factory):
  """The same catalogue with text-only prompts (stage 1), in the slotted
  directory's vocabulary."""
  d, data, _ = prepared
  plain = tmp_path_factory.mktemp("rsllm_text") / "prepared"
  data.save(plain)
  write_task_files(data, plain, config=PromptConfig(
      num_negatives=4, max_history=4, item_format="title"), num_shards=1,
                   tasks=("retrieval", "ranking"),
                   vocab_model=d / "vocab" / "spiece.model")
  registry.register_prepared(plain, dataset_name="trsllmtext")
  return plain


def _stage2_gins(arch, sasrec_dir, model_dir, init):
  model_gin, tiny = LM_GINS[arch]
  return [model_gin, "runs/rsllm_stage2.gin"], tiny + COMMON + [
      f"MODEL_DIR = '{model_dir}'", "MIXTURE_OR_TASK_NAME = 'trsllm_rec'",
      f"TASK_FEATURE_LENGTHS = {LENGTHS!r}", f"SASREC_DIR = '{sasrec_dir}'",
      f"INITIAL_CHECKPOINT_PATH = '{init}'", f"TOKENS_PER_SLOT = {K}",
      f"LM_EMB_DIM = {WIDTH}", "LORA_RANK = 2"]


class _Stages:
  """Stage 1 and stage 2 of each backbone through the shipped gins, made on
  first use and shared by the tests below."""

  def __init__(self, sasrec_dir, tmp_path_factory):
    self.sasrec_dir = sasrec_dir
    self.tmp = tmp_path_factory

  @functools.cache
  def __call__(self, arch):
    model_gin, tiny = LM_GINS[arch]
    s1 = self.tmp.mktemp(f"rsllm_stage1_{arch}")
    s2 = self.tmp.mktemp(f"rsllm_stage2_{arch}")
    with _gin([model_gin, "runs/rsllm_stage1.gin"], tiny + COMMON + [
        f"MODEL_DIR = '{s1}'", "MIXTURE_OR_TASK_NAME = 'trsllmtext_rec'",
        f"TASK_FEATURE_LENGTHS = {TEXT_LENGTHS!r}"]):
      step, _ = trainer.train()
    assert step == 2
    with _gin(*_stage2_gins(arch, self.sasrec_dir, s2, s1)):
      assert gin.query_parameter("train.pack") is False
      step, summary = trainer.train()
    assert step == 2
    return s1, s2, summary


@pytest.fixture(scope="module")
def stages(prepared, text_dir, tmp_path_factory):
  del text_dir
  return _Stages(prepared[2], tmp_path_factory)


@pytest.mark.parametrize("arch", ["t5", "decoder"])
def test_two_stages_through_the_gins(prepared, stages, arch):
  """Stage 1 (text-only, full fine-tuning) then stage 2 (LoRA + projector)
  through runs/rsllm_stage{1,2}.gin and the real trainer: stage 2 keeps the
  stage-1 LM and the saved SASRec bit-identical, and trains only the
  adapters and the projector (their optimizer state alone)."""
  _, data, sasrec_dir = prepared
  s1, s2, summary = stages(arch)
  for k in ("lm_loss", "user_item_loss", "id_text_loss"):
    assert np.isfinite(summary[k]) and summary[k] > 0, k
  lm = test_utils.checkpoint_params_flat(s1)
  p2 = test_utils.checkpoint_params_flat(s2)
  for k, v in lm.items():
    np.testing.assert_array_equal(p2[k], v, err_msg=k)
  _, saved = baselines_cli.load_model(sasrec_dir, data)
  for k, v in checkpoints.flatten_params(saved).items():
    np.testing.assert_array_equal(p2[f"rsllm/recommender/{k}"], v,
                                  err_msg=k)
  added = set(p2) - set(lm)
  adapters = {k for k in added if lora_lib.is_lora_path(k)}
  projector = {k for k in added if k.startswith("rsllm/")
               and not k.startswith("rsllm/recommender/")}
  assert adapters and projector
  assert added == adapters | projector | {
      k for k in added if k.startswith("rsllm/recommender/")}
  # lora_b starts at zero: a non-zero one was trained.
  assert any(np.abs(p2[k]).max() > 0 for k in adapters if k.endswith("lora_b"))
  # AdamW's moments (mu, nu) for exactly the adapters and the projector:
  # none for the LM's base or SASRec; the rest is scalar counters.
  meta = checkpointing.state_metadata(checkpointing.latest_state_dir(str(s2)))
  leaves = {"/" + "/".join(str(getattr(k, "key", getattr(k, "idx", k)))
                           for k in path): leaf for path, leaf in
            jax.tree_util.tree_flatten_with_path(meta["opt_state"])[0]}
  for moment in ("mu", "nu"):
    tag = f"/{moment}/"
    got = {q.split(tag, 1)[1] for q in leaves if tag in q}
    assert got == adapters | projector, moment
  assert all(np.prod(leaf.shape) <= 1 for q, leaf in leaves.items()
             if "/mu/" not in q and "/nu/" not in q)


def test_eval_reads_the_stage2_model(prepared, stages, tmp_path):
  _, _, sasrec_dir = prepared
  _, s2, _ = stages("t5")
  model_gin, tiny = LM_GINS["t5"]
  out = tmp_path / "eval"
  gin.clear_config()
  try:
    results = jobs_main.run_eval(
        [model_gin, "runs/eval.gin", "runs/lora.gin", "runs/rsllm_model.gin"],
        tiny + [f"CHECKPOINT_PATH = '{s2}'", f"EVAL_OUTPUT_DIR = '{out}'",
                "MIXTURE_OR_TASK_NAME = 'trsllm_rec'", "VOCAB_SIZE = 512",
                "ACTIVATION_DTYPE = 'float32'",
                f"TASK_FEATURE_LENGTHS = {LENGTHS!r}",
                f"SASREC_DIR = '{sasrec_dir}'", f"TOKENS_PER_SLOT = {K}",
                f"LM_EMB_DIM = {WIDTH}", "LORA_RANK = 2", "NUM_BEAMS = 4",
                "NUM_EXAMPLES = 4"], import_task_modules=False)
  finally:
    gin.clear_config()
  ranking = results["trsllm_ranking"]
  assert ranking["count"] == 4
  assert 0 <= ranking["hit@1"] <= ranking["hit@5"] == 1.0  # 5 candidates
  assert 0 <= ranking["llara_valid_ratio"] <= 1
  assert results["trsllm_retrieval"]["count"] == 4
