"""LoRA: fresh adapters change nothing, training moves only the adapters (no
optimizer state for the frozen base), merged == adapters, dropout only when
enabled, bad targets are errors, (2,4) mesh == one device, base weights load
from a checkpoint without adapters, and `recjax export --merge_lora`."""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recjax import checkpoints
from recjax.checkpoints import export
from recjax.models import decoder_only
from recjax.models import lora
from recjax.models import t5
from recjax.train import checkpointing
from recjax.train import model_api
from recjax.train import optimizers
from recjax.train import partitioning
from recjax.train import test_utils
from recjax.train import trainer

TESTDATA = os.path.join(os.path.dirname(__file__), 'testdata')
HF_TINY_T5 = os.path.join(TESTDATA, 'hf_tiny_t5')
TARGETS = ('(self_attention|encoder_decoder_attention|attention)/'
           '(query|key|value|out)$', 'mlp/(wi_0|wi_1|wo)$')
LORA = lora.LoraConfig(rank=4, alpha=8.0, dropout_rate=0.0, targets=TARGETS)
BASE = t5.T5Config(vocab_size=384, emb_dim=16, num_heads=2, head_dim=8,
                   num_encoder_layers=1, num_decoder_layers=1, mlp_dim=32,
                   dtype='float32')
CFG = dataclasses.replace(BASE, lora=LORA)
LENGTHS = {'inputs': 16, 'targets': 8}


def _tokens(seed, shape=(3, 7)):
  rng = np.random.RandomState(seed)
  x = rng.randint(2, BASE.vocab_size, size=shape).astype(np.int32)
  x[0, -2:] = 0  # some padding
  return x


@functools.lru_cache(maxsize=None)
def _apply_fn(cfg, enable_dropout=False):
  def f(params, enc, dec, rng):
    return t5.Transformer(cfg).apply(
        {'params': params}, enc, dec, dec, enable_dropout=enable_dropout,
        rngs={'dropout': rng})
  return jax.jit(f)


def _logits(cfg, params, enable_dropout=False, seed=0):
  enc, dec = _tokens(1), _tokens(2, (3, 5))
  return np.asarray(_apply_fn(cfg, enable_dropout)(
      params, enc, dec, jax.random.PRNGKey(seed)))


@functools.lru_cache(maxsize=None)
def _lora_init(cfg=CFG):
  """Fresh params of a LoRA config (T5 or decoder-only): lora_b is zero."""
  module = t5 if isinstance(cfg, t5.T5Config) else decoder_only
  return nn.unbox(module.init_variables(cfg, jax.random.PRNGKey(3))['params'])


def _with_base(base_params, lora_params):
  """The LoRA tree with its base leaves taken from `base_params`."""
  return lora.merge_trees(base_params, lora.split_lora(lora_params)[1])


def _random_adapters(params, seed=0):
  """Non-zero lora_b (a trained adapter) so merges and dropout matter."""
  rng = np.random.RandomState(seed)
  flat = checkpoints.flatten_params(params)
  for k in flat:
    if k.endswith('/lora_b'):
      flat[k] = jnp.asarray(0.3 * rng.randn(*flat[k].shape), jnp.float32)
  return checkpoints.unflatten_params(flat)


# ------------------------------------------------------------------ module
def test_param_tree_shapes_and_logical_axes():
  boxed = t5.abstract_variables(CFG)['params']
  specs = nn.get_partition_spec(boxed)
  q = specs['decoder']['layers_0']['self_attention']['query']
  assert tuple(q['lora_a']) == ('embed', 'lora_rank')
  assert tuple(q['lora_b']) == ('lora_rank', 'joined_kv')
  o = specs['encoder']['layers_0']['attention']['out']
  assert tuple(o['lora_a']) == ('joined_kv', 'lora_rank')
  assert tuple(o['lora_b']) == ('lora_rank', 'embed')
  shapes = {k: v.shape for k, v in checkpoints.flatten_params(
      nn.unbox(boxed)).items()}
  assert shapes['encoder/layers_0/mlp/wo/lora_a'] == (32, 4)
  assert shapes['encoder/layers_0/mlp/wo/lora_b'] == (4, 16)
  assert shapes['encoder/layers_0/attention/out/lora_a'] == (16, 4)
  # Targets: 4 projections x 3 attentions + 3 MLP kernels x 2 stacks = 18.
  adapted = sorted(k[:-len('/lora_a')] for k in shapes if k.endswith('lora_a'))
  assert len(adapted) == 18
  assert 'decoder/logits_dense' not in adapted
  # Base shapes unchanged, so base checkpoints map on.
  base = {k: v for k, v in shapes.items() if not lora.is_lora_path(k)}
  assert base == t5.param_shapes(BASE)
  n = sum(4 * (a + b) for a, b in
          [(16, 16)] * 12 + [(16, 32), (16, 32), (32, 16)] * 2)
  assert lora.lora_param_count(boxed) == n
  # lora_b is zero, lora_a is PEFT's U(+-1/sqrt(in)) and not zero.
  p = _lora_init()['decoder']['layers_0']['mlp']['wo']
  assert not np.any(np.asarray(p['lora_b']))
  a = np.asarray(p['lora_a'])
  assert np.abs(a).max() <= 1 / np.sqrt(32) and np.abs(a).max() > 0.5 / np.sqrt(32)


def test_fresh_adapters_leave_logits_bit_identical():
  base = test_utils.random_t5_params(BASE, seed=0)
  want = _logits(BASE, base)
  got = _logits(CFG, _with_base(base, _lora_init()))
  np.testing.assert_array_equal(got, want)
  # With dropout on the adapter input too (lora_b = 0 -> no effect).
  cfg = dataclasses.replace(CFG, lora=dataclasses.replace(LORA,
                                                          dropout_rate=0.5))
  np.testing.assert_array_equal(
      _logits(cfg, _with_base(base, _lora_init()), enable_dropout=True), want)


def test_adapter_is_hand_computable_and_merge_matches():
  base = test_utils.random_t5_params(BASE, seed=1)
  params = _random_adapters(_with_base(base, _lora_init()))
  got = _logits(CFG, params)
  assert np.abs(got - _logits(BASE, base)).max() > 1e-2  # adapters matter
  merged = lora.merge_lora(params, LORA)
  assert not lora.has_lora(merged)
  # Exactly W + (alpha/rank) A @ B for one kernel, in numpy.
  f = checkpoints.flatten_params(params)
  k = 'decoder/layers_0/mlp/wi_1'
  want = np.asarray(f[k + '/kernel']) + 2.0 * (
      np.asarray(f[k + '/lora_a']) @ np.asarray(f[k + '/lora_b']))
  np.testing.assert_allclose(
      checkpoints.flatten_params(merged)[k + '/kernel'], want, rtol=1e-6,
      atol=1e-7)
  np.testing.assert_allclose(_logits(BASE, merged), got, atol=1e-5, rtol=1e-5)
  # The numpy path agrees with the jnp path.
  merged_np = lora.merge_lora(jax.tree_util.tree_map(np.asarray, params), LORA)
  for a, b in zip(jax.tree_util.tree_leaves(merged_np),
                  jax.tree_util.tree_leaves(merged)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_dropout_only_when_enabled():
  cfg = dataclasses.replace(CFG, lora=dataclasses.replace(LORA,
                                                          dropout_rate=0.5))
  base = test_utils.random_t5_params(BASE, seed=2)
  params = _random_adapters(_with_base(base, _lora_init()))
  det = _logits(CFG, params)
  np.testing.assert_array_equal(_logits(cfg, params), det)
  np.testing.assert_array_equal(_logits(cfg, params, seed=5), det)
  d0 = _logits(cfg, params, enable_dropout=True, seed=0)
  d1 = _logits(cfg, params, enable_dropout=True, seed=1)
  assert np.abs(d0 - det).max() > 1e-3 and np.abs(d0 - d1).max() > 1e-3
  np.testing.assert_array_equal(
      _logits(cfg, params, enable_dropout=True, seed=0), d0)


def test_targets_that_match_nothing_are_an_error():
  cfg = dataclasses.replace(BASE, lora=lora.LoraConfig(
      targets=('attention/query$', 'attn/q_proj$')))
  with pytest.raises(ValueError, match=r"attn/q_proj\$.*match no dense layer"
                     r".*decoder/layers_0/encoder_decoder_attention/key"):
    t5.init_variables(cfg, jax.random.PRNGKey(0))
  # A target on the decoder alone is fine through __call__ (one check over
  # both stacks).
  dec = dataclasses.replace(BASE, lora=lora.LoraConfig(
      targets=('decoder/.*self_attention/value$',)))
  params = nn.unbox(t5.abstract_variables(dec)['params'])
  assert lora.lora_param_count(params) == 16 * 8 + 8 * 16
  with pytest.raises(ValueError, match='not a valid regex'):
    lora.LoraConfig(targets=('attention/(query',))
  with pytest.raises(ValueError, match='rank'):
    lora.LoraConfig(rank=0)


# ------------------------------------------------------------------ training
@functools.lru_cache(maxsize=None)
def _host_batches(batch_size=8, n=3):
  return test_utils.tiny_task_batches(LENGTHS, batch_size, n)


def _input_shapes():
  return test_utils.encdec_input_shapes(LENGTHS)


def _adam():
  return optax.adam(1e-2)


def _train_job(model, model_dir, steps, **kwargs):
  """`trainer.train` on the tiny task: one device, AdamW at 1e-2, one
  checkpoint at the end."""
  return trainer.train(
      model=model, model_dir=model_dir,
      mixture_or_task_name=test_utils.register_tiny_task(),
      task_feature_lengths=LENGTHS, train_steps=steps, batch_size=8,
      partitioner=partitioning.Partitioner(mesh_shape=(1, 1),
                                           devices=jax.devices()[:1]),
      optimizer=optimizers.adamw, learning_rate_fn=optimizers.constant(1e-2),
      checkpoint_period=steps, log_every=1, tensorboard=False, **kwargs)


def _train(mesh_shape, steps=3, cfg=CFG):
  model = model_api.EncoderDecoderModel(
      t5.Transformer(cfg), test_utils.BYTE_VOCAB, test_utils.BYTE_VOCAB)
  metrics, state, init = test_utils.run_train_steps(
      model, mesh_shape, _adam, _host_batches()[:steps], _input_shapes(),
      frozen_patterns=lora.FROZEN_BASE_PATTERNS)
  return [m['loss'] for m in metrics], init, jax.device_get(state)


@functools.lru_cache(maxsize=None)
def _train_single():
  return _train((1, 1))


def test_training_moves_only_adapters_and_base_has_no_optimizer_state():
  losses, init, state = _train_single()
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  before = checkpoints.flatten_params(init)
  after = checkpoints.flatten_params(state.params)
  assert set(before) == set(after)
  moved_b = 0
  for k, v in before.items():
    if lora.is_lora_path(k):
      moved_b += k.endswith('/lora_b') and bool(np.any(after[k] != v))
    else:
      np.testing.assert_array_equal(after[k], v, err_msg=k)  # bit-identical
  assert moved_b == 18
  # Optimizer state: exactly Adam's state of the adapters alone.
  lora_only = lora.split_lora(state.params)[1]
  want = jax.tree_util.tree_leaves(_adam().init(lora_only))
  got = jax.tree_util.tree_leaves(state.opt_state)
  nbytes = lambda leaves: sum(np.asarray(x).nbytes for x in leaves)
  assert len(got) == len(want) and nbytes(got) == nbytes(want)
  assert nbytes(want) < 2 * 4 * lora.lora_param_count(state.params) + 64
  # The trained adapters merged into the kernels give the adapter logits.
  np.testing.assert_allclose(
      _logits(BASE, lora.merge_lora(state.params, LORA)),
      _logits(CFG, state.params), atol=1e-5, rtol=1e-5)


def test_sharded_mesh_equals_single_device():
  losses1, _, s1 = _train_single()
  losses8, _, s8 = _train((2, 4))
  np.testing.assert_allclose(losses8, losses1, rtol=2e-5, atol=2e-6)
  for (path, a), b in zip(
      jax.tree_util.tree_flatten_with_path(s1.params)[0],
      jax.tree_util.tree_leaves(s8.params)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6,
                               err_msg=optimizers.param_path(path))


# ------------------------------------------------------------------ loading
HF_BASE = t5.T5Config(vocab_size=128, emb_dim=32, num_heads=4, head_dim=8,
                      num_encoder_layers=2, num_decoder_layers=2, mlp_dim=64,
                      dtype='float32')


def _hf_setup(cfg):
  part = partitioning.Partitioner(mesh_shape=(1, 1),
                                  devices=jax.devices()[:1])
  model = model_api.EncoderDecoderModel(t5.Transformer(cfg))
  setup = trainer.setup_state(
      model, part, lambda p: optimizers.build_optimizer(
          _adam(), lora.FROZEN_BASE_PATTERNS, p), _input_shapes(),
      jax.random.PRNGKey(0))
  return model, part, setup


def test_initial_params_base_from_hf_adapters_fresh():
  cfg = dataclasses.replace(HF_BASE, lora=LORA)
  model, part, setup = _hf_setup(cfg)
  params = trainer.load_initial_params(HF_TINY_T5, setup, model,
                                       rng=jax.random.PRNGKey(7))
  hf = checkpoints.load_params(HF_TINY_T5, config=HF_BASE)
  flat = checkpoints.flatten_params(jax.device_get(params))
  for k, v in checkpoints.flatten_params(hf).items():
    np.testing.assert_array_equal(flat[k], v, err_msg=k)
  # Adapters: a fresh init (lora_b zeros).
  ada = {k: v for k, v in flat.items() if lora.is_lora_path(k)}
  assert len(ada) == 2 * 36  # 2 x (4 + 3) encoder + 2 x (8 + 3) decoder
  for k, v in ada.items():
    if k.endswith('lora_b'):
      assert not np.any(v), k
    else:
      bound = 1 / np.sqrt(v.shape[0])
      assert bound / 2 < np.abs(v).max() <= bound, k


def test_train_freezes_base_and_export_merges(tmp_path, capsys):
  """train() with LoRA from a recjax dir trained without it: base stays those
  weights, only adapters train; `export --merge_lora` writes an HF folder whose re-import
  gives the adapter logits."""
  cfg = CFG
  base_params = test_utils.random_t5_params(BASE, seed=11)
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'base'))
  ckpt.save(5, trainer.TrainState(step=jnp.asarray(5, jnp.int32),
                                  params=base_params, opt_state={}),
            {'batches_consumed': 5})
  ckpt.close()
  model = model_api.EncoderDecoderModel(t5.Transformer(cfg))
  step, summary = _train_job(model, str(tmp_path / 'run'), 2,
                             initial_checkpoint_path=str(tmp_path / 'base'))
  assert step == 2 and np.isfinite(summary['loss'])
  err = capsys.readouterr().err
  total = sum(int(np.prod(s)) for s in t5.param_shapes(cfg).values())
  base_total = sum(int(np.prod(s)) for s in t5.param_shapes(
      dataclasses.replace(cfg, lora=None)).values())
  assert f'trainable parameters: {total - base_total:,} of {total:,}' in err
  # Base bit-identical to the initial checkpoint; adapters moved.
  trained = checkpoints.flatten_params(jax.device_get(
      trainer.load_initial_params(str(tmp_path / 'run'), _hf_setup(cfg)[2],
                                  model)))
  start = checkpoints.flatten_params(base_params)
  assert len(trained) == len(start) + 2 * 18
  for k, v in start.items():
    np.testing.assert_array_equal(trained[k], v, err_msg=k)
  assert any(np.any(trained[k] != 0) for k in trained if k.endswith('lora_b'))
  # Export: adapters need --merge_lora; then an HF folder that load_params
  # reads into the model without LoRA, giving the adapter logits.
  with pytest.raises(ValueError, match='--merge_lora'):
    export.export_checkpoint(cfg, str(tmp_path / 'run'), str(tmp_path / 'hf'))
  assert not os.path.exists(tmp_path / 'hf')
  with pytest.raises(ValueError, match='runs/lora.gin'):
    export.export_checkpoint(dataclasses.replace(cfg, lora=None),
                             str(tmp_path / 'run'), str(tmp_path / 'hf'),
                             merge_lora=True)
  # As `recjax export --gin_file=models/flan_t5_tiny.gin
  # --gin_file=runs/lora.gin --merge_lora` (sizes shrunk to CFG's).
  gin.clear_config()
  try:
    export.run_export(
        ['models/flan_t5_tiny.gin', 'runs/lora.gin'],
        ['VOCAB_SIZE = 384', 'T5Config.emb_dim = 16', 'T5Config.num_heads = 2',
         'T5Config.head_dim = 8', 'T5Config.mlp_dim = 32',
         'T5Config.num_encoder_layers = 1', 'T5Config.num_decoder_layers = 1',
         "ACTIVATION_DTYPE = 'float32'", 'LORA_RANK = 4', 'LORA_ALPHA = 8.0',
         'LORA_DROPOUT = 0.0'], [],
        checkpoint=str(tmp_path / 'run'), output=str(tmp_path / 'hf'),
        merge_lora=True)
    assert gin.query_parameter('%LORA').scoped_configurable_fn() == LORA
  finally:
    gin.clear_config()
  assert sorted(os.listdir(tmp_path / 'hf')) == ['config.json',
                                                 'model.safetensors']
  base_cfg = dataclasses.replace(cfg, lora=None)
  reloaded = checkpoints.load_params(str(tmp_path / 'hf'),
                                     expected_shapes=t5.param_shapes(base_cfg))
  with open(tmp_path / 'hf' / 'config.json') as f:
    assert json.load(f)['d_model'] == 16
  adapter_logits = _logits(cfg, checkpoints.unflatten_params(trained))
  np.testing.assert_allclose(_logits(base_cfg, reloaded), adapter_logits,
                             atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ decoder-only
DEC_BASE = decoder_only.DecoderOnlyConfig(
    vocab_size=384, emb_dim=16, num_heads=2, num_kv_heads=1, head_dim=8,
    num_layers=1, mlp_dim=32, dtype='float32')
DEC = dataclasses.replace(DEC_BASE, lora=LORA)


@functools.lru_cache(maxsize=None)
def _dec_apply_fn(cfg):
  return jax.jit(lambda params, tokens: decoder_only.DecoderOnlyTransformer(
      cfg).apply({'params': params}, tokens, tokens, enable_dropout=False))


def _dec_logits(cfg, params):
  return np.asarray(_dec_apply_fn(cfg)(params, _tokens(4, (2, 9))))


def test_decoder_only_adapters_and_merge():
  shapes = decoder_only.param_shapes(DEC)
  adapted = sorted(k[:-len('/lora_a')] for k in shapes if k.endswith('lora_a'))
  assert adapted == [f'decoder/layers_0/{m}' for m in (
      'mlp/wi_0', 'mlp/wi_1', 'mlp/wo', 'self_attention/key',
      'self_attention/out', 'self_attention/query', 'self_attention/value')]
  base = nn.unbox(decoder_only.init_variables(
      DEC_BASE, jax.random.PRNGKey(0))['params'])
  want = _dec_logits(DEC_BASE, base)
  fresh = _with_base(base, _lora_init(DEC))
  np.testing.assert_array_equal(_dec_logits(DEC, fresh), want)
  params = _random_adapters(fresh, seed=1)
  got = _dec_logits(DEC, params)
  assert np.abs(got - want).max() > 1e-2
  np.testing.assert_allclose(
      _dec_logits(DEC_BASE, lora.merge_lora(params, LORA)), got, atol=1e-5,
      rtol=1e-5)


def test_decoder_only_train_export_round_trip(tmp_path):
  """One LoRA step, `export --merge_lora` to an HF folder, re-import into the
  model without LoRA: the adapter logits; transformers loads it too."""
  model = model_api.DecoderOnlyModel(decoder_only.DecoderOnlyTransformer(DEC))
  step, _ = _train_job(model, str(tmp_path / 'run'), 1)
  assert step == 1
  trained = export.restore_params(str(tmp_path / 'run'), DEC)
  flat = checkpoints.flatten_params(trained)
  assert any(np.any(v != 0) for k, v in flat.items() if k.endswith('lora_b'))
  export.export_checkpoint(DEC, str(tmp_path / 'run'), str(tmp_path / 'hf'),
                           merge_lora=True)
  assert {'config.json', 'model.safetensors'} <= set(
      os.listdir(tmp_path / 'hf'))
  reloaded = checkpoints.load_params(str(tmp_path / 'hf'), config=DEC_BASE)
  want = _dec_logits(DEC, trained)
  np.testing.assert_allclose(_dec_logits(DEC_BASE, reloaded), want, atol=1e-5,
                             rtol=1e-5)
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path / 'hf'), torch_dtype=torch.float32).eval()
  tokens = _tokens(4, (2, 9))
  with torch.no_grad():
    out = hf_model(torch.tensor(tokens[:, :]), attention_mask=torch.tensor(
        (tokens > 0).astype(np.int64))).logits.numpy()
  mask = tokens > 0
  np.testing.assert_allclose(out[mask], want[mask], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------ the shipped recipe
def _train_lora_gin(model_dir, extra=()):
  """`recjax train --gin_file=models/flan_t5_tiny.gin
  --gin_file=runs/finetune.gin --gin_file=runs/lora.gin` at the shipped
  LEARNING_RATE (sizes shrunk to CFG's, dropout off so the loss is the
  adapters' alone): the adapters after training and the logged losses."""
  from recjax.train import gin_utils
  task = test_utils.register_tiny_task()
  gin.clear_config()
  try:
    gin_utils.parse_gin_flags(
        ['models/flan_t5_tiny.gin', 'runs/finetune.gin', 'runs/lora.gin'],
        ['VOCAB_SIZE = 384', 'T5Config.emb_dim = 16', 'T5Config.num_heads = 2',
         'T5Config.head_dim = 8', 'T5Config.mlp_dim = 32',
         'T5Config.num_encoder_layers = 1', 'T5Config.num_decoder_layers = 1',
         "ACTIVATION_DTYPE = 'float32'", 'DROPOUT_RATE = 0.0',
         'LORA_RANK = 4', 'LORA_ALPHA = 8.0', 'LORA_DROPOUT = 0.0',
         f"MODEL_DIR = '{model_dir}'",
         f"MIXTURE_OR_TASK_NAME = '{task}'",
         f'TASK_FEATURE_LENGTHS = {LENGTHS!r}', 'TRAIN_STEPS = 8',
         'BATCH_SIZE = 8', 'EVAL_PERIOD = 0', 'train.log_every = 1',
         *extra])
    lr = gin.query_parameter('%LEARNING_RATE')
    trainer.train()
    params = export.restore_params(model_dir, CFG)
  finally:
    gin.clear_config()
  with open(os.path.join(model_dir, 'metrics.jsonl'), encoding='utf-8') as f:
    losses = [r['loss'] for r in map(json.loads, f)
              if r.get('split') == 'train' and 'loss' in r]
  flat = checkpoints.flatten_params(params)
  return {k: v for k, v in flat.items() if k.endswith('lora_b')}, losses, lr


def test_lora_gin_moves_every_adapter_and_lowers_the_loss(tmp_path):
  """runs/lora.gin's optimizer moves zero-initialised adapters at the run's
  learning rate: AdamW's first steps move every element of B by about the
  learning rate each. Adafactor (finetune.gin's) scales by the parameter's
  RMS floored at 1e-3, so under it a B moves ~1,000x less and this fails."""
  bs, losses, lr = _train_lora_gin(str(tmp_path / 'run'))
  assert len(bs) == 18
  for k, b in bs.items():
    assert np.abs(b).max() > lr, (k, np.abs(b).max())
  assert len(losses) == 8 and losses[-1] < losses[0], losses


def test_subtree_norms_name_what_trains():
  """`train.subtree_norms`: with LoRA only the adapters' group is reported,
  and its gradient, update and parameter norms equal the ones computed from
  the states before and after the step; without LoRA the groups are the
  model's subtrees and their gradient norms make up the global one."""
  def step(cfg, frozen):
    model = model_api.EncoderDecoderModel(
        t5.Transformer(cfg), test_utils.BYTE_VOCAB, test_utils.BYTE_VOCAB)
    metrics, state, init = test_utils.run_train_steps(
        model, (1, 1), _adam, _host_batches()[:1], _input_shapes(),
        frozen_patterns=frozen, subtree_norms=True)
    return (metrics[0], checkpoints.flatten_params(init),
            checkpoints.flatten_params(jax.device_get(state.params)))

  m, before, after = step(CFG, lora.FROZEN_BASE_PATTERNS)
  assert sorted(k for k in m if '/' in k) == [
      'grad_norm/lora', 'param_norm/lora', 'update_norm/lora']
  keys = [k for k in before if lora.is_lora_path(k)]
  norm = lambda xs: float(np.sqrt(sum(np.sum(np.square(x)) for x in xs)))
  np.testing.assert_allclose(m['grad_norm/lora'], m['grad_norm'], rtol=1e-6)
  np.testing.assert_allclose(m['param_norm/lora'],
                             norm(before[k] for k in keys), rtol=1e-5)
  np.testing.assert_allclose(m['update_norm/lora'],
                             norm(after[k] - before[k] for k in keys),
                             rtol=1e-4)
  assert m['update_norm/lora'] > 0

  m, before, _ = step(BASE, ())
  groups = sorted({k.split('/')[0] for k in before})
  assert len(groups) > 1
  assert sorted(k for k in m if k.startswith('grad_norm/')) == [
      f'grad_norm/{g}' for g in groups]
  np.testing.assert_allclose(
      np.sqrt(sum(m[f'grad_norm/{g}'] ** 2 for g in groups)), m['grad_norm'],
      rtol=1e-5)
