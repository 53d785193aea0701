"""Every shipped gin config parses; with tiny sizes it builds the model and
trains one step. New model/run configs are picked up automatically."""
from __future__ import annotations

import functools
import glob
import importlib.util  # noqa: F401  (gin-config 0.5.0 needs it before gin)
import os
import re

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio

from recjax.train import gin_utils
from recjax.train import optimizers
from recjax.train import test_utils
from recjax.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(ROOT, 'gin_configs')
MODEL_GINS = sorted(glob.glob(os.path.join(GIN_DIR, 'models', '*.gin')))
RUN_GINS = sorted(glob.glob(os.path.join(GIN_DIR, 'runs', '*.gin')))
# models/architectures/*.gin are fragments every model gin includes (they
# need its MODEL_CONFIG), so the model-gin tests parse them.
ARCHITECTURE_GINS = sorted(glob.glob(os.path.join(GIN_DIR, 'models',
                                                  'architectures', '*.gin')))
OTHER_GINS = sorted(set(glob.glob(os.path.join(GIN_DIR, '**', '*.gin'),
                                  recursive=True)) - set(MODEL_GINS) -
                    set(RUN_GINS) - set(ARCHITECTURE_GINS))
LENGTHS = {'inputs': 24, 'targets': 12}
TINY = [
    'T5Config.vocab_size = 384',
    'T5Config.emb_dim = 16',
    'T5Config.num_heads = 2',
    'T5Config.head_dim = 8',
    'T5Config.mlp_dim = 32',
    'T5Config.num_encoder_layers = 1',
    'T5Config.num_decoder_layers = 1',
    "T5Config.dtype = 'float32'",
]
TINY_DECODER = [
    'DecoderOnlyConfig.vocab_size = 384',
    'DecoderOnlyConfig.emb_dim = 16',
    'DecoderOnlyConfig.num_heads = 2',
    'DecoderOnlyConfig.num_kv_heads = 1',
    'DecoderOnlyConfig.head_dim = 8',
    'DecoderOnlyConfig.mlp_dim = 32',
    'DecoderOnlyConfig.num_layers = 1',
    "DecoderOnlyConfig.dtype = 'float32'",
    'DecoderOnlyConfig.pad_swap_id = None',
]


def _is_decoder_only(model_gin):
  with open(model_gin, encoding='utf-8') as f:
    return 'architectures/decoder_only.gin' in f.read()


def _rel(path):
  return os.path.relpath(path, GIN_DIR)


def _base_model_gin():
  return [os.path.join(GIN_DIR, 'models', 'flan_t5_tiny.gin')]


def _binds_train(path):
  """Whether the gin (or a file it includes) configures a `train()` run (its
  `train:` block); overlays such as runs/lora.gin set one argument of it and
  cannot run alone."""
  with open(path, encoding='utf-8') as f:
    text = f.read()
  if re.search(r'^train:\s*$', text, re.M):
    return True
  return any(_binds_train(os.path.join(GIN_DIR, inc)) for inc in
             re.findall(r"^include\s+'([^']+)'", text, re.M))


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _run_bindings(model_dir, task, tiny=None):
  return (tiny or TINY) + [
      f"MODEL_DIR = '{model_dir}'",
      f"MIXTURE_OR_TASK_NAME = '{task}'",
      f'TASK_FEATURE_LENGTHS = {LENGTHS!r}',
      'TRAIN_STEPS = 1', 'BATCH_SIZE = 8', 'EVAL_PERIOD = 0',
      'train.log_every = 1',
  ]


def test_configs_exist():
  assert RUN_GINS, 'gin_configs/runs/*.gin missing'
  included = set()
  for path in MODEL_GINS:
    with open(path, encoding='utf-8') as f:
      included |= set(re.findall(r"^include\s+'(models/architectures/[^']+)'",
                                 f.read(), re.M))
  # Every model gin picks one architecture, and both are in use.
  assert {_rel(p) for p in ARCHITECTURE_GINS} == included
  names = {os.path.basename(p) for p in RUN_GINS}
  assert {'finetune.gin', 'pretrain.gin'} <= names


@pytest.mark.parametrize('model_gin', MODEL_GINS, ids=_rel)
def test_model_gin_builds_and_steps(model_gin):
  """Model gin + finetune run gin with tiny sizes: builds and traces a step."""
  task = test_utils.register_tiny_task()
  gin_utils.parse_gin_flags(
      [model_gin, 'runs/finetune.gin'],
      _run_bindings('/tmp/unused', task,
                    TINY_DECODER if _is_decoder_only(model_gin) else TINY))
  model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  model = trainer.check_vocab_size(model, task)
  it = trainer.get_dataset_iterator(
      task, LENGTHS, model.feature_converter_cls(pack=True), 'train', 2,
      shuffle=False, seed=0, num_epochs=1, use_cached=False, shard_info=None)
  batch = next(it)
  # Trace init + loss + gradient + Adafactor update abstractly (no XLA
  # compile: the shrunk model gins differ only in options such as remat); the
  # run-gin tests below execute real steps through train().
  loss, update_norm = jax.eval_shape(
      functools.partial(_one_step, model),
      {k: jnp.asarray(v) for k, v in batch.items()})
  assert loss.shape == () and update_norm.shape == ()
  assert model.module.config.emb_dim == 16


def _one_step(model, batch):
  variables = model.get_initial_variables(
      jax.random.PRNGKey(0), {k: v.shape for k, v in batch.items()})
  params = flax.linen.unbox(variables['params'])
  tx = optimizers.adafactor(optimizers.constant(1e-3))
  (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
      params, batch, jax.random.PRNGKey(1))
  updates, _ = tx.update(grads, tx.init(params), params)
  return loss, optax.tree.norm(updates)


# ILM's and RSLLM's stage-2 gins need a prepared catalogue (item table, slot
# tasks, a SASRec): they parse here and train in tests/test_ilm.py and
# tests/test_rsllm.py.
ILM_GINS = [p for p in RUN_GINS if os.path.basename(p).startswith(
    ('ilm_', 'rsllm_stage2', 'rsllm_model'))]


@pytest.mark.parametrize('run_gin', RUN_GINS, ids=_rel)
def test_run_gin_trains_one_step(run_gin, tmp_path):
  task = test_utils.register_tiny_task()
  files = _base_model_gin() + [run_gin]
  if run_gin in ILM_GINS:
    gin_utils.parse_gin_flags(files, TINY + [
        f"MIXTURE_OR_TASK_NAME = '{task}'", f"MODEL_DIR = '{tmp_path}'",
        f"SASREC_DIR = '{tmp_path}'"], skip_unknown=True)
    return
  if not _binds_train(run_gin):
    gin_utils.parse_gin_flags(files, TINY, skip_unknown=True)
    return  # another entry point's config: parsing is the check here
  gin_utils.parse_gin_flags(files, _run_bindings(str(tmp_path), task))
  step, summary = trainer.train()
  assert step == 1 and np.isfinite(summary['loss'])
  assert os.path.isdir(os.path.join(tmp_path, 'checkpoints', '1'))


@pytest.mark.parametrize('path', OTHER_GINS + ARCHITECTURE_GINS, ids=_rel)
def test_other_gins_parse(path):
  # An architecture fragment alone needs the model gin's MODEL_CONFIG.
  bindings = ['MODEL_CONFIG = None'] if path in ARCHITECTURE_GINS else []
  gin_utils.parse_gin_flags([path], bindings, skip_unknown=True)


def test_gin_flag_rewriting():
  files, bindings, paths, rest = gin_utils.split_gin_args([
      '--gin_file=models/a.gin', '--gin_file', 'runs/b.gin',
      "--gin.MODEL_DIR='/tmp/x'", '--gin.TRAIN_STEPS=5',
      '--gin_search_paths=/a,/b', '--alsologtostderr'])
  assert files == ['models/a.gin', 'runs/b.gin']
  assert bindings == ["MODEL_DIR = '/tmp/x'", 'TRAIN_STEPS = 5']
  assert paths == ['/a', '/b'] and rest == ['--alsologtostderr']


def test_missing_gin_file_is_clear():
  with pytest.raises(FileNotFoundError, match='nope.gin'):
    gin_utils.parse_gin_flags(['runs/nope.gin'])


def test_wheel_ships_the_gin_configs(tmp_path):
  """An installed recjax (not a clone) finds --gin_file=runs/finetune.gin."""
  import shutil  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  src = tmp_path / 'src'
  src.mkdir()
  for name in ('setup.py', 'README.md'):
    shutil.copy(os.path.join(ROOT, name), src)
  for name in ('recjax', 'seqio_tasks', 'gin_configs'):
    shutil.copytree(os.path.join(ROOT, name), src / name,
                    ignore=shutil.ignore_patterns('__pycache__'))
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
                  '--no-build-isolation', '-w', str(tmp_path / 'dist'),
                  str(src)], check=True, capture_output=True)
  (wheel,) = (tmp_path / 'dist').glob('recjax-*.whl')
  with zipfile.ZipFile(wheel) as z:
    shipped = {n for n in z.namelist() if n.endswith('.gin')}
    z.extractall(tmp_path / 'site')
  want = {'recjax/gin_configs/' + os.path.relpath(p, GIN_DIR)
          for p in MODEL_GINS + RUN_GINS + OTHER_GINS + ARCHITECTURE_GINS}
  assert shipped == want
  # From elsewhere, the unpacked wheel's gin_utils searches its own configs.
  out = subprocess.run(
      [sys.executable, '-c', 'from recjax.train import gin_utils; '
       'print(gin_utils.DEFAULT_SEARCH_PATHS[0])'],
      cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path / 'site')),
      check=True, capture_output=True, text=True).stdout.strip()
  assert out == str(tmp_path / 'site' / 'recjax' / 'gin_configs')
  assert os.path.isfile(os.path.join(out, 'runs', 'finetune.gin'))
