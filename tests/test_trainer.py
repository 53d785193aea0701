"""The train() loop on a real tiny SeqIO task: resume == uninterrupted, keep-N
checkpoints, metrics files, NaN guard, initial checkpoints, vocab checks."""
from __future__ import annotations

import glob
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from recjax.train import checkpointing
from recjax.train import metrics_writer
from recjax.train import optimizers
from recjax.train import partitioning
from recjax.train import test_utils
from recjax.train import trainer

LENGTHS = {'inputs': 24, 'targets': 12}


@pytest.fixture(scope='module', autouse=True)
def _compilation_cache(tmp_path_factory):
  """Identical train steps of successive train() calls compile once (a
  restart re-jits the same program); restored afterwards."""
  names = ('jax_compilation_cache_dir',
           'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')
  from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
  old = {n: getattr(jax.config, n) for n in names}
  compilation_cache.reset_cache()
  jax.config.update(names[0], str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update(names[1], 0)
  jax.config.update(names[2], 0)
  yield
  for n, v in old.items():
    jax.config.update(n, v)
  compilation_cache.reset_cache()


def _train(model_dir, train_steps, **kwargs):
  args = dict(
      model=test_utils.tiny_model(), model_dir=str(model_dir),
      mixture_or_task_name=test_utils.register_tiny_task(),
      task_feature_lengths=LENGTHS, train_steps=train_steps, batch_size=8,
      partitioner=partitioning.Partitioner(mesh_shape=(4, 2)),
      learning_rate_fn=optimizers.constant(1e-2), checkpoint_period=2,
      log_every=1, random_seed=3, tensorboard=True)
  args.update(kwargs)
  return trainer.train(**args)


def _final_params(model_dir):
  part = partitioning.Partitioner(mesh_shape=(4, 2))
  lengths = trainer.seqio.EncDecFeatureConverter(
      pack=True).get_model_feature_lengths(LENGTHS)
  setup = trainer.setup_state(
      test_utils.tiny_model(), part,
      lambda p: optimizers.build_optimizer(optimizers.adafactor()),
      {k: (1, v) for k, v in lengths.items()}, jax.random.PRNGKey(0))
  return setup, jax.device_get(trainer.load_initial_params(str(model_dir),
                                                           setup))


def _train_losses(model_dir):
  rows = metrics_writer.read_jsonl(os.path.join(model_dir, 'metrics.jsonl'),
                                   'train')
  return [r['step'] for r in rows], [r['loss'] for r in rows]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp('uninterrupted')
  step, summary = _train(model_dir, 4, keep_checkpoints=1, eval_period=2,
                         eval_steps=1)
  return model_dir, step, summary


def test_metrics_files_and_keep_n(uninterrupted):
  model_dir, step, summary = uninterrupted
  assert step == 4
  rows = metrics_writer.read_jsonl(os.path.join(model_dir, 'metrics.jsonl'))
  train_rows = [r for r in rows if r['split'] == 'train']
  assert [r['step'] for r in train_rows] == [1, 2, 3, 4]
  for key in ('loss', 'accuracy', 'learning_rate', 'steps_per_sec',
              'tokens_per_sec', 'z_loss', 'cross_ent_loss_per_token'):
    assert all(np.isfinite(r[key]) for r in train_rows), key
  assert train_rows[0]['learning_rate'] == pytest.approx(1e-2)
  assert all(r['tokens_per_sec'] > 0 for r in train_rows)
  assert summary['loss'] == train_rows[-1]['loss']
  val = [r for r in rows if r['split'] == 'validation']
  assert [r['step'] for r in val] == [2, 4] and np.isfinite(val[0]['loss'])
  assert glob.glob(os.path.join(model_dir, 'train', 'events.out.tfevents*'))
  assert glob.glob(os.path.join(model_dir, 'validation',
                                'events.out.tfevents*'))
  ckpt = checkpointing.Checkpointer(str(model_dir), keep=1)
  assert ckpt.all_steps() == [4]  # keep_checkpoints=1
  ckpt.close()


def test_restart_reproduces_uninterrupted_run(uninterrupted, tmp_path):
  model_dir, _, _ = uninterrupted
  assert _train(tmp_path, 2)[0] == 2
  assert _train(tmp_path, 4)[0] == 4  # resumes from step 2 and its data position
  steps, losses = _train_losses(tmp_path)
  want_steps, want_losses = _train_losses(model_dir)
  assert steps == want_steps == [1, 2, 3, 4]
  np.testing.assert_allclose(losses, want_losses, rtol=1e-6)
  _, got = _final_params(tmp_path)
  _, want = _final_params(model_dir)
  for x, y in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  # A finished run is not retrained.
  assert _train(tmp_path, 4)[0] == 4
  assert _train_losses(tmp_path)[0] == [1, 2, 3, 4]


def test_restart_restores_the_saved_dataset_position(uninterrupted, tmp_path,
                                                     capsys):
  """checkpoint_dataset=True: the restart restores the tf.data iterator (no
  skipping) and still reproduces the uninterrupted run."""
  model_dir, _, _ = uninterrupted
  assert _train(tmp_path, 2, checkpoint_dataset=True)[0] == 2
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  assert ckpt.has_dataset(2)
  ckpt.close()
  capsys.readouterr()
  assert _train(tmp_path, 4, checkpoint_dataset=True)[0] == 4
  err = capsys.readouterr().err
  assert 'restored the data position of step 2' in err
  assert 'skipping' not in err
  steps, losses = _train_losses(tmp_path)
  want_steps, want_losses = _train_losses(model_dir)
  assert steps == want_steps == [1, 2, 3, 4]
  np.testing.assert_allclose(losses, want_losses, rtol=1e-6)
  # Another batch size: TF would restore the old pipeline's position without
  # complaint, so the trainer does not use it and skips instead.
  capsys.readouterr()
  assert _train(tmp_path, 5, checkpoint_dataset=True, batch_size=16)[0] == 5
  err = capsys.readouterr().err
  assert 'skipping 4 consumed batches' in err and 'restored' not in err


def test_dataset_iterator_round_trip(tmp_path):
  ds = tf.data.Dataset.range(100).shuffle(10, seed=1).batch(4).prefetch(2)
  it = iter(ds)
  seen = [next(it).numpy().tolist() for _ in range(3)]
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  ckpt.save(3, {'x': jnp.zeros(2)}, {'batches_consumed': 3},
            dataset_iterator=it)
  ckpt.save(5, {'x': jnp.zeros(2)}, {'batches_consumed': 5})
  want = [next(it).numpy().tolist() for _ in range(2)]
  assert ckpt.has_dataset(3) and not ckpt.has_dataset(5)
  fresh = iter(ds)
  ckpt.restore_dataset(fresh, 3)
  assert [next(fresh).numpy().tolist() for _ in range(2)] == want
  assert want[0] not in seen
  # Another pipeline's iterator: TF refuses (the trainer then skips instead).
  with pytest.raises(tf.errors.OpError):
    ckpt.restore_dataset(iter(tf.data.Dataset.range(100).map(
        lambda x: x * 2).batch(4)), 3)
  # Saved by another number of processes: no position for this one, so the
  # trainer falls back to skipping.
  os.rename(os.path.join(ckpt.directory, '3', 'dataset', 'process_0-of-1'),
            os.path.join(ckpt.directory, '3', 'dataset', 'process_0-of-2'))
  assert not ckpt.has_dataset(3)
  ckpt.close()


def test_initial_checkpoint_from_recjax_dir(uninterrupted):
  model_dir, _, _ = uninterrupted
  setup, params = _final_params(model_dir)
  shapes = jax.tree_util.tree_map(lambda a: a.shape,
                                  setup.abstract_state.params)
  assert jax.tree_util.tree_map(np.shape, params) == shapes
  assert np.all(np.isfinite(params['logits_dense']['kernel']))


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
  # The learning rate turns NaN for the 4th update (optimizer count 3): the
  # loss and gradients of step 4 are finite, its update is not. The check of
  # the parameters before the step-4 save catches it.
  lr = lambda count: jnp.where(count >= 3, jnp.nan, 1e-2)
  with pytest.raises(trainer.NonFiniteLossError, match='step 4') as e:
    _train(tmp_path, 8, learning_rate_fn=lr)
  assert 'last good checkpoint is step 2' in str(e.value)
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  assert ckpt.all_steps() == [2]
  ckpt.close()
  _, params = _final_params(tmp_path)
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(params))
  steps, _ = _train_losses(tmp_path)
  assert steps == [1, 2, 3, 4]  # step 4's own loss was finite


def test_vocab_size_check():
  name = test_utils.register_tiny_task()
  small = test_utils.tiny_model(test_utils.TinyConfig(vocab_size=128))
  small.input_vocabulary = small.output_vocabulary = None
  with pytest.raises(ValueError, match=r'vocab_size \(128\).*259.*VOCAB_SIZE=384'):
    trainer.check_vocab_size(small, name)
  fixed = trainer.check_vocab_size(small, name, auto_vocab_size=True)
  assert fixed.module.config.vocab_size == 384
  assert fixed.output_vocabulary.vocab_size == 259


def test_eval_hosts_agree_on_the_number_of_batches(monkeypatch):
  """Two hosts with uneven validation shards (3 and 5 batches): both make 5
  eval steps, the short one feeding zero batches, which add nothing to the
  metrics; with one host the iterator is unchanged."""
  import seqio  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  lengths = seqio.EncDecFeatureConverter(pack=True).get_model_feature_lengths(
      LENGTHS)
  real = test_utils.tiny_task_batches(LENGTHS, 4, 3)
  assert list(trainer.agreed_eval_batches(iter(real), lengths, 4)) == real
  other_left = [5]  # the other host's batches

  def allgather(flag):
    other = other_left[0] > 0
    other_left[0] -= 1
    return np.asarray([int(flag), int(other)])
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost_utils, 'process_allgather', allgather)
  got = list(trainer.agreed_eval_batches(iter(real), lengths, 4))
  assert len(got) == 5 and got[:3] == real
  for pad in got[3:]:
    assert set(pad) == set(lengths)
    assert all(v.shape == (4, lengths[k]) and not v.any()
               for k, v in pad.items())
  model = test_utils.tiny_model()
  params = flax.linen.unbox(model.get_initial_variables(
      jax.random.PRNGKey(0), {k: v.shape for k, v in real[0].items()}
  )['params'])
  _, m = model.eval_fn(params, got[3])
  for k in ('cross_ent_loss_sum', 'weight_sum', 'num_tokens', 'num_correct'):
    assert float(m[k]) == 0, k
