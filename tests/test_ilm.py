"""ILM end to end through the shipped gin files and the real trainer.

One tiny catalogue is prepared twice (plain prompts, and `item_slots=replace`
with the plain directory's vocabulary). Phase 1 (runs/ilm_phase1.gin) aligns a
tiny item encoder with the item texts; a tiny LM of each backbone is trained a
few steps on the plain tasks (runs/finetune.gin); phase 2
(runs/ilm_phase2.gin) starts from both and trains only the encoder; `recjax
eval` reads the phase-2 model through runs/ilm_model.gin. The runs happen once
per module and several tests read them.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import types

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf

from recjax import checkpoints
from recjax.baselines import cli as baselines_cli
from recjax.infer import jobs_main
from recjax.models import item_encoder as item_encoder_lib
from recjax.prompts import PromptConfig
from recjax.prompts.export import write_task_files
from recjax.train import checkpointing
from recjax.train import ilm_model
from recjax.train import metrics_writer
from recjax.train import partitioning
from recjax.train import test_utils
from recjax.train import trainer
from seqio_tasks import registry
from tiny_data import tiny_data

N_ITEMS = 40
TASKS = ('retrieval', 'ranking')
PROMPTS = dict(num_negatives=4, max_history=4)
K = 2  # soft tokens per item
# The tiny encoder, bound the same way in phase 1, phase 2 and eval (the
# macros of runs/ilm_item_encoder.gin); LM_EMB_DIM = the tiny LMs' emb_dim.
LM_EMB_DIM = 16
ENCODER = [
    f'NUM_QUERY_TOKENS = {K}', 'ITEM_ENCODER_HIDDEN = 32',
    'ITEM_ENCODER_LAYERS = 1', 'ITEM_ENCODER_HEADS = 2',
    'ITEM_ENCODER_MLP = 64', 'CF_DIM = 16', f'LM_EMB_DIM = {LM_EMB_DIM}',
    'ItemEncoderConfig.max_text_length = 24',
    'ItemEncoderConfig.contrastive_dim = 16',
]
# Item text cut to its first 16 tokens ("Thing 5 blue widget A amber thing
# number 5 ..."): the item's number is what tells the texts apart.
P1_LENGTHS = {'inputs': 16, 'targets': 8, 'slot_items': 2}
P1_BATCH = 32
# AdamW at 3e-3: ITC sits at log(batch) for ~60 steps (a fresh text branch
# barely sees its tokens: BERT's 0.02 init, post-LN), then falls to ~1.1 by
# step 300, with item->text recall@1 ~0.85 (chance 1/40). The steps are
# cheap (~40/s on one device); compiling the step is most of the time.
P1_STEPS = 300
LM_LENGTHS = {'inputs': 96, 'targets': 8}
SLOT_LENGTHS = dict(LM_LENGTHS, slot_items=12)  # ranking: 4 history + 5 items
LM_GINS = {
    't5': ('models/flan_t5_tiny.gin', [
        'T5Config.emb_dim = 16', 'T5Config.num_heads = 2',
        'T5Config.head_dim = 8', 'T5Config.mlp_dim = 32',
        'T5Config.num_encoder_layers = 1', 'T5Config.num_decoder_layers = 1']),
    'decoder': ('models/decoder_tiny.gin', [
        'DecoderOnlyConfig.emb_dim = 16', 'DecoderOnlyConfig.num_heads = 2',
        'DecoderOnlyConfig.num_kv_heads = 1', 'DecoderOnlyConfig.head_dim = 8',
        'DecoderOnlyConfig.mlp_dim = 32', 'DecoderOnlyConfig.num_layers = 1']),
}
LM_COMMON = ['VOCAB_SIZE = 512', "ACTIVATION_DTYPE = 'float32'",
             'DROPOUT_RATE = 0.0', 'BATCH_SIZE = 8', 'EVAL_PERIOD = 0',
             'train.log_every = 1']


def _one_device():
  return partitioning.Partitioner(num_partitions=1, devices=jax.devices()[:1])


_gin = test_utils.gin_config


def _gin_model():
  return gin.query_parameter('%MODEL').scoped_configurable_fn()


def _ckpt_paths(model_dir) -> list[str]:
  """'/'-joined paths of every array in the latest checkpoint's state."""
  meta = checkpointing.state_metadata(
      checkpointing.latest_state_dir(str(model_dir)))
  return ['/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in p)
          for p, _ in jax.tree_util.tree_flatten_with_path(meta)[0]]


def _sub(flat: dict, prefix: str) -> dict:
  return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  data = tiny_data(n_users=24, n_items=N_ITEMS, min_len=4, max_len=8)
  plain = tmp_path_factory.mktemp('ilm_plain')
  data.write_into(plain)
  write_task_files(data, plain, config=PromptConfig(**PROMPTS), tasks=TASKS,
                   vocab_size=400, num_shards=1)
  slotted = tmp_path_factory.mktemp('ilm_slots')
  data.write_into(slotted)
  write_task_files(data, slotted, config=PromptConfig(
      item_slots='replace', **PROMPTS), tasks=TASKS, num_shards=1,
                   vocab_model=plain / 'vocab' / 'spiece.model')
  registry.register_prepared(plain, dataset_name='ilmplain')
  registry.register_prepared(slotted, dataset_name='ilmslots')
  return types.SimpleNamespace(data=data, plain=plain, slotted=slotted)


def _phase1_bindings(model_dir, steps=P1_STEPS, extra=()):
  return ENCODER + [
      f"MODEL_DIR = '{model_dir}'",
      "MIXTURE_OR_TASK_NAME = 'ilmslots_item_text'",
      f'TASK_FEATURE_LENGTHS = {P1_LENGTHS!r}', f'TRAIN_STEPS = {steps}',
      f'BATCH_SIZE = {P1_BATCH}', 'LEARNING_RATE = 0.003',
      'train.log_every = 10'] + list(extra)


@pytest.fixture(scope='module')
def phase1(prepared, tmp_path_factory):
  """Phase 1 through runs/ilm_phase1.gin, on one device (its 300 steps
  take ~5 s there, ~25 s on the 8-device default mesh)."""
  del prepared
  model_dir = tmp_path_factory.mktemp('ilm_p1')
  with _gin(['runs/ilm_phase1.gin'], _phase1_bindings(model_dir)):
    model = _gin_model()
    step, summary = trainer.train(partitioner=_one_device())
  assert step == P1_STEPS
  return types.SimpleNamespace(dir=model_dir, summary=summary, model=model)


class _Runs:
  """The LM and phase-2 runs of each backbone, made on first use."""

  def __init__(self, phase1_dir, tmp_path_factory):
    self.phase1_dir = phase1_dir
    self.tmp = tmp_path_factory

  def lm_bindings(self, arch):
    model_gin, tiny = LM_GINS[arch]
    return model_gin, tiny + LM_COMMON

  @functools.cache
  def lm(self, arch):
    """A tiny LM trained 2 steps on the plain tasks (runs/finetune.gin)."""
    model_dir = self.tmp.mktemp(f'ilm_lm_{arch}')
    model_gin, bindings = self.lm_bindings(arch)
    with _gin([model_gin, 'runs/finetune.gin'], bindings + [
        f"MODEL_DIR = '{model_dir}'", "MIXTURE_OR_TASK_NAME = 'ilmplain_rec'",
        f'TASK_FEATURE_LENGTHS = {LM_LENGTHS!r}', 'TRAIN_STEPS = 2',
        'LEARNING_RATE = 0.01']):
      step, _ = trainer.train()
    assert step == 2
    return model_dir

  def phase2_bindings(self, arch, model_dir, encoder_checkpoint='phase1',
                      lengths=None):
    model_gin, bindings = self.lm_bindings(arch)
    if encoder_checkpoint == 'phase1':
      encoder_checkpoint = str(self.phase1_dir)
    return [model_gin, 'runs/ilm_phase2.gin'], bindings + ENCODER + [
        f"MODEL_DIR = '{model_dir}'", "MIXTURE_OR_TASK_NAME = 'ilmslots_rec'",
        f'TASK_FEATURE_LENGTHS = {lengths or SLOT_LENGTHS!r}',
        'TRAIN_STEPS = 2', f"INITIAL_CHECKPOINT_PATH = '{self.lm(arch)}'",
        f'ITEM_ENCODER_CHECKPOINT = {encoder_checkpoint!r}']

  @functools.cache
  def phase2(self, arch):
    """(model dir, the gin's train.frozen_patterns) of a 2-step phase 2."""
    model_dir = self.tmp.mktemp(f'ilm_p2_{arch}')
    with _gin(*self.phase2_bindings(arch, model_dir)):
      frozen = tuple(gin.query_parameter('train.frozen_patterns'))
      step, summary = trainer.train()
    assert step == 2 and np.isfinite(summary['loss'])
    return model_dir, frozen

  def initial_params(self, arch, encoder_checkpoint):
    """What phase 2 starts from (`trainer.load_initial_params`), flat."""
    with _gin(*self.phase2_bindings(arch, '/tmp/unused',
                                    encoder_checkpoint)):
      model = _gin_model()
    converter = model.feature_converter_cls(pack=True)
    shapes = {k: (1, v) for k, v in
              converter.get_model_feature_lengths(SLOT_LENGTHS).items()}
    part = partitioning.Partitioner(num_partitions=2)
    setup = trainer.setup_state(model, part, lambda p: optax.identity(),
                                shapes, jax.random.PRNGKey(0))
    params = trainer.load_initial_params(str(self.lm(arch)), setup, model)
    return checkpoints.flatten_params(jax.device_get(params))


@pytest.fixture(scope='module')
def runs(phase1, tmp_path_factory):
  return _Runs(phase1.dir, tmp_path_factory)


# ------------------------------------------------------------------ phase 1
def test_phase1_logs_each_loss(phase1):
  names = [f'{k}_loss' for k in ilm_model.LOSS_NAMES]
  assert all(np.isfinite(phase1.summary[k]) for k in names + ['loss'])
  rows = metrics_writer.read_jsonl(os.path.join(phase1.dir, 'metrics.jsonl'),
                                   'train')
  assert [r['step'] for r in rows] == list(range(10, P1_STEPS + 1, 10))
  for r in rows:  # every weight is 1 in the gin: the total is their sum
    assert r['loss'] == pytest.approx(sum(r[k] for k in names), rel=1e-5)
  first, last = rows[0], rows[-1]
  assert {k: last[k] for k in names} == {k: phase1.summary[k] for k in names}
  # A fresh encoder: ITC at log(batch) (uniform in-batch softmax).
  assert first['itc_loss'] == pytest.approx(math.log(P1_BATCH), abs=0.05)
  assert last['itc_loss'] < 0.5 * math.log(P1_BATCH), last
  assert last['itg_loss'] < 0.25 * first['itg_loss'], (first, last)
  assert last['iic_loss'] < 0.7 * first['iic_loss'], (first, last)
  # ITM (1 matched : 2 hard negatives) stays a finite binary CE (here near
  # H(1/3) = 0.637, the constant guess: matching is slow to learn).
  assert all(0 < r['itm_loss'] < math.log(2) + 0.02 for r in rows)


def _item_texts():
  """(items [I], text tokens [I, T]) of every item, from the phase-1 task."""
  ds = seqio.get_dataset(
      'ilmslots_item_text', task_feature_lengths=P1_LENGTHS,
      dataset_split='train', shuffle=False,
      feature_converter=ilm_model.ItemTextFeatureConverter())
  rows = list(ds.as_numpy_iterator())
  items = np.array([r['slot_items'][0] - 1 for r in rows])
  return items, np.stack([r['text_tokens'] for r in rows])


@functools.partial(jax.jit, static_argnums=0)
def _itc_embeddings(module, params, items, text):
  return module.apply({'params': params}, items, text,
                      method='itc_embeddings')


def _recall(module, params, items, text, k):
  """Item->text recall@k: an item scores each text by its best query."""
  item_emb, text_emb = _itc_embeddings(module, params, items, text)
  scores = np.asarray(jnp.einsum('ikc,jc->ijk', item_emb, text_emb).max(-1))
  top = np.argsort(-scores, axis=1, kind='stable')[:, :k]
  return float(np.mean(np.any(top == np.arange(len(items))[:, None], 1)))


def test_phase1_lifts_item_to_text_retrieval(phase1):
  items, text = _item_texts()
  assert sorted(items) == list(range(N_ITEMS))
  assert len({t.tobytes() for t in text}) == N_ITEMS  # distinct texts
  chance = 1.0 / N_ITEMS
  module = phase1.model.module
  # The trainer's own initialisation (RANDOM_SEED = 0), jitted as there.
  fresh = nn.unbox(jax.jit(lambda r: phase1.model.get_initial_variables(
      r, {'text_tokens': (1, P1_LENGTHS['inputs'])}))(jax.random.PRNGKey(0))[
          'params'])[ilm_model.PARAMS_KEY]
  trained = checkpoints.unflatten_params(
      _sub(test_utils.checkpoint_params_flat(phase1.dir), 'item_encoder/'))
  before = _recall(module, fresh, items, text, 1)
  after = _recall(module, trained, items, text, 1)
  after5 = _recall(module, trained, items, text, 5)
  assert before <= 3 * chance, f'untrained recall@1 {before} vs chance {chance}'
  assert after >= 10 * chance, (
      f'recall@1 after phase 1 is {after:.3f}; want >= 10x chance '
      f'({10 * chance:.3f}, chance = 1/{N_ITEMS})')
  assert after5 >= 0.5, f'recall@5 {after5:.3f} (chance {5 * chance:.3f})'


# ------------------------------------------------------------------ phase 2
# Frozen in phase 2 besides the LM (runs/ilm_phase2.gin): the encoder parts
# the soft tokens never use, which the phase-2 model does not even build.
TEXT_ONLY = ('embeddings/word_embeddings/', 'embeddings/position_embeddings/',
             'embeddings/token_type_embeddings/', 'itc_', 'itm_head/',
             'lm_head/')


@pytest.mark.parametrize('arch', ['t5', 'decoder'])
def test_phase2_trains_only_the_encoder(runs, arch):
  model_dir, frozen = runs.phase2(arch)
  lm = test_utils.checkpoint_params_flat(runs.lm(arch))
  p2 = test_utils.checkpoint_params_flat(model_dir)
  p1 = _sub(test_utils.checkpoint_params_flat(runs.phase1_dir), 'item_encoder/')
  enc = _sub(p2, 'item_encoder/')
  # (a) Every LM parameter bit-identical to the LM checkpoint's.
  assert set(p2) - set(lm) == {f'item_encoder/{k}' for k in enc}
  for k, v in lm.items():
    np.testing.assert_array_equal(p2[k], v, err_msg=k)
  # The encoder is phase 1's query path: the phase-2 model builds no text
  # branch; the gin freezes what of it the soft tokens still read.
  assert set(enc) < set(p1)
  assert not [k for k in enc if k.startswith(TEXT_ONLY)]
  is_frozen = lambda k: any(re.search(p, k) for p in frozen)
  assert all(is_frozen(k) for k in lm)
  trained = {k for k in enc if not is_frozen(f'item_encoder/{k}')}
  assert {'query_tokens', 'adapter/kernel', 'cf_table/embedding',
          'layer_0/crossattention/value/kernel'} <= trained
  # (b) Optimizer state (AdamW's mu and nu) for the trained encoder
  # parameters alone: none for the LM or anything frozen.
  paths = [p for p in _ckpt_paths(model_dir) if p.startswith('opt_state/')]
  assert all('/item_encoder/' in p or p.endswith('/count') for p in paths), [
      p for p in paths if '/item_encoder/' not in p][:5]
  for moment in ('mu', 'nu'):
    tag = f'/{moment}/item_encoder/'
    assert {p.split(tag)[1] for p in paths if tag in p} == trained, moment
  assert len(paths) == 2 * len(trained) + sum(p.endswith('/count')
                                              for p in paths)
  # (c) Every trained encoder parameter moved on from phase 1's value (2
  # AdamW steps at 1e-3: by ~2e-3), but the cross-attention's query and key:
  # with one CF token per item its softmax is over a single key, so no
  # gradient reaches them. The frozen ones are phase 1's exactly.
  no_gradient = re.compile(r'crossattention/(query|key)/')
  for k, v in enc.items():
    if k in trained and not no_gradient.search(k):
      assert not np.array_equal(v, p1[k]), k
      assert np.max(np.abs(v - p1[k])) < 0.01, k
    else:
      np.testing.assert_array_equal(v, p1[k], err_msg=k)


def test_phase2_starts_from_the_phase1_encoder(runs):
  start = runs.initial_params('t5', 'phase1')
  p1 = _sub(test_utils.checkpoint_params_flat(runs.phase1_dir), 'item_encoder/')
  enc = _sub(start, 'item_encoder/')
  assert enc and set(enc) < set(p1)
  for k, v in enc.items():
    np.testing.assert_array_equal(v, p1[k], err_msg=k)
  lm = test_utils.checkpoint_params_flat(runs.lm('t5'))
  assert set(start) - set(lm) == {f'item_encoder/{k}' for k in enc}
  for k, v in lm.items():
    np.testing.assert_array_equal(start[k], v, err_msg=k)


def test_unaligned_ablation_starts_from_a_fresh_encoder(runs):
  """ITEM_ENCODER_CHECKPOINT = None: a BERT-initialised encoder (0.02
  normals, zero biases, LayerNorms at 1 and 0), not phase 1's; the LM still
  comes from its checkpoint."""
  start = runs.initial_params('t5', None)
  p1 = _sub(test_utils.checkpoint_params_flat(runs.phase1_dir), 'item_encoder/')
  enc = _sub(start, 'item_encoder/')
  assert set(enc) < set(p1)
  for k, v in enc.items():
    if k.endswith('/scale'):  # LayerNorms
      np.testing.assert_array_equal(v, np.ones_like(v), err_msg=k)
    elif k.endswith('/bias'):
      np.testing.assert_array_equal(v, np.zeros_like(v), err_msg=k)
    else:
      assert np.std(v) == pytest.approx(0.02, rel=0.3), k
      assert not np.array_equal(v, p1[k]), k
  # Phase 1 trained what the fresh encoder has at its initial values.
  trained_in_p1 = [k for k in enc if (k.endswith('/scale') and np.any(
      p1[k] != 1)) or (k.endswith('/bias') and np.any(p1[k] != 0))]
  assert {'cf_norm/bias', 'embeddings/LayerNorm/scale',
          'layer_0/output_query/dense/bias'} <= set(trained_in_p1)
  assert np.std(p1['cf_table/embedding']) > 0.03
  lm = test_utils.checkpoint_params_flat(runs.lm('t5'))
  assert set(start) - set(lm) == {f'item_encoder/{k}' for k in enc}
  for k, v in lm.items():
    np.testing.assert_array_equal(start[k], v, err_msg=k)


def test_eval_job_reads_the_phase2_model(prepared, runs, tmp_path):
  model_dir, _ = runs.phase2('t5')
  model_gin, bindings = runs.lm_bindings('t5')
  out = tmp_path / 'eval'
  gin.clear_config()
  try:
    results = jobs_main.run_eval(
        [model_gin, 'runs/eval.gin', 'runs/ilm_model.gin'], bindings + ENCODER
        + [f"CHECKPOINT_PATH = '{model_dir}'", f"EVAL_OUTPUT_DIR = '{out}'",
           "MIXTURE_OR_TASK_NAME = 'ilmslots_rec'",
           f'TASK_FEATURE_LENGTHS = {SLOT_LENGTHS!r}', 'NUM_BEAMS = 4',
           'NUM_EXAMPLES = 4'], import_task_modules=False)
  finally:
    gin.clear_config()
  doc = json.loads((out / 'metrics.json').read_text())
  assert doc['step'] == 2 and doc['checkpoint'] == str(model_dir)
  assert sorted(doc['metrics']) == sorted(results) == [
      'ilmslots_ranking', 'ilmslots_retrieval']
  retrieval = results['ilmslots_retrieval']
  ranking = results['ilmslots_ranking']
  assert retrieval['count'] == ranking['count'] == 4
  assert 0 <= retrieval['recall@1'] <= retrieval['recall@5'] <= 1
  assert 0 <= retrieval['ndcg@5'] <= retrieval['recall@5']
  assert 0 <= ranking['hit@1'] <= ranking['hit@5'] == 1.0  # 5 candidates
  # Slotted prompts name their target by id; constrained beams are ids of
  # the catalogue, distinct, best first.
  ids = {it['id'] for it in prepared.data.items}
  rows = [json.loads(line) for line in
          (out / 'predictions' / 'ilmslots_retrieval.jsonl').open()]
  assert len(rows) == 4 and all(r['target_item'] in ids for r in rows)
  for r in rows:
    assert len(r['predictions']) == len(set(r['predictions'])) == 4
    assert set(r['predictions']) <= ids
    assert r['scores'] == sorted(r['scores'], reverse=True)


# ------------------------------------------------------------------ sharding
def test_alignment_step_sharded_equals_unsharded():
  cfg = item_encoder_lib.ItemEncoderConfig(
      num_items=16, cf_dim=8, num_query_tokens=2, hidden_dim=16,
      num_layers=1, num_heads=4, mlp_dim=32, text_vocab_size=128,
      max_text_length=12, contrastive_dim=8, lm_emb_dim=8)
  model = ilm_model.ILMAlignmentModel(item_encoder_lib.ItemEncoder(cfg),
                                      temperature=0.1)
  rng = np.random.RandomState(0)
  batches = []
  for _ in range(3):
    text = rng.randint(2, 128, (8, 10)).astype(np.int32)
    text[:, 7:] *= rng.rand(8, 3) < 0.5  # some padding
    items = rng.choice(16, 8, replace=False) + 1
    neighbours = np.where(rng.rand(8) < 0.75, rng.randint(1, 17, 8), 0)
    batches.append({'text_tokens': text, 'slot_items': np.stack(
        [items, neighbours], 1).astype(np.int32)})
  shapes = {'text_tokens': (1, 10), 'slot_items': (1, 2)}
  # Plain SGD: Adam's m / sqrt(nu) turns rounding in near-zero gradients
  # into ~lr-sized differences, which would hide what sharding changes.
  tx = lambda: optax.sgd(1.0)
  m1, s1, init = test_utils.run_train_steps(model, (1, 1), tx, batches,
                                            shapes)
  m8, s8, _ = test_utils.run_train_steps(model, (2, 4), tx, batches, shapes)
  init = checkpoints.flatten_params(init)
  for a, b in zip(m1, m8):
    for k in ['loss', 'grad_norm'] + [f'{n}_loss' for n in
                                      ilm_model.LOSS_NAMES]:
      assert b[k] == pytest.approx(a[k], rel=1e-5), k
  f1 = checkpoints.flatten_params(jax.device_get(s1.params))
  f8 = checkpoints.flatten_params(jax.device_get(s8.params))
  assert set(f1) == set(f8)
  moved = 0.0
  for k in f1:
    np.testing.assert_allclose(f8[k], f1[k], atol=1e-5, rtol=1e-5, err_msg=k)
    moved = max(moved, float(np.max(np.abs(f1[k] - init[k]))))
  assert moved > 0.05  # SGD moved the parameters (max |change| ~0.4)


# --------------------------------------------------------------- bad input
def _assert_no_step_ran(model_dir):
  """Refused before training: no checkpoint step, no logged metrics."""
  ckpts = model_dir / 'checkpoints'
  assert not (ckpts.exists() and [p for p in ckpts.iterdir()
                                  if p.name.isdigit()])
  metrics = model_dir / 'metrics.jsonl'
  assert not (metrics.exists() and metrics.read_text().strip())


def test_cf_embeddings_of_another_catalogue_are_refused(prepared, tmp_path):
  other = tiny_data(n_users=10, n_items=N_ITEMS + 5, seed=1, min_len=3,
                    max_len=6)
  (tmp_path / 'other').mkdir()
  other.write_into(tmp_path / 'other')
  baselines_cli.run_baseline('pop', str(tmp_path / 'other'),
                             str(tmp_path / 'pop_other'), log=None)
  model_dir = tmp_path / 'p1'
  with _gin(['runs/ilm_phase1.gin'], _phase1_bindings(
      model_dir, 1, [f"CF_EMBEDDINGS_DIR = '{tmp_path / 'pop_other'}'"])):
    with pytest.raises(ValueError, match='another catalogue'):
      trainer.train(partitioner=_one_device())
  _assert_no_step_ran(model_dir)
  # The same catalogue's embeddings are the encoder's frozen CF table.
  baselines_cli.run_baseline('pop', str(prepared.slotted),
                             str(tmp_path / 'pop'), log=None)
  table = baselines_cli.load_embeddings(tmp_path / 'pop')['item_embeddings']
  with _gin(['runs/ilm_phase1.gin'], _phase1_bindings(
      model_dir, 1, [f"CF_EMBEDDINGS_DIR = '{tmp_path / 'pop'}'"])):
    model = _gin_model()
  module = model.module
  assert module.config.cf_dim == table.shape[1] == 1
  assert module.config.freeze_cf_table
  assert model.frozen_param_patterns == ('^item_encoder/cf_table/',)
  params = module.init(jax.random.PRNGKey(0), jnp.zeros((1,), jnp.int32),
                       method='encode_queries')['params']
  np.testing.assert_array_equal(nn.unbox(params)['cf_table']['embedding'],
                                table)


def test_slot_items_longer_than_their_feature_length_are_refused(runs,
                                                                 tmp_path):
  lengths = dict(SLOT_LENGTHS, slot_items=3)  # prompts name up to 9 items
  with _gin(*runs.phase2_bindings('t5', tmp_path, lengths=lengths)):
    with pytest.raises(tf.errors.InvalidArgumentError, match=(
        r"more items than TASK_FEATURE_LENGTHS\[\\?'slot_items")):
      trainer.train()
  _assert_no_step_ran(tmp_path)


def test_lm_emb_dim_other_than_the_lm_width_is_refused(runs, tmp_path):
  files, bindings = runs.phase2_bindings('t5', tmp_path)
  with _gin(files, bindings + ['LM_EMB_DIM = 24']):
    with pytest.raises(ValueError, match=r'width 24 .*width 16.*LM_EMB_DIM'):
      trainer.train()
  _assert_no_step_ran(tmp_path)
