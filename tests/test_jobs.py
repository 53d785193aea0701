"""The eval and infer jobs end to end: a 2-step train() run (with the
periodic inference-evaluation hook) makes the checkpoint; `recjax eval` via
gin writes metrics.json/metrics.md/TensorBoard; `infer` is sharded and
resumable."""
from __future__ import annotations

import glob
import json
import os

import gin
import numpy as np
import pytest

from recjax.infer import evaluation
from recjax.infer import jobs
from recjax.infer import jobs_main
from recjax.train import metrics_writer
from recjax.train import optimizers
from recjax.train import partitioning
from recjax.train import trainer
from test_evaluation import LENGTHS, TINY_T5, make_prepared, tiny_t5_model

PART = partitioning.Partitioner(mesh_shape=(4, 2))


class Recorder:
  """Wraps an evaluator and records the steps the trainer called it at."""

  def __init__(self, inner):
    self.inner = inner
    self.steps = []

  def bind(self, **kwargs):
    self.inner.bind(**kwargs)

  def __call__(self, step, params):
    self.steps.append(step)
    return self.inner(step, params)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  directory = tmp_path_factory.mktemp('jobtiny')
  make_prepared(directory, 'jobtiny')
  model_dir = tmp_path_factory.mktemp('model')
  hook = Recorder(evaluation.InferenceEvaluator(
      'jobtiny_rating', LENGTHS, 8, split='validation', num_examples=4))
  model = tiny_t5_model()
  step, _ = trainer.train(
      model=model, model_dir=str(model_dir), mixture_or_task_name='jobtiny_rec',
      task_feature_lengths=LENGTHS, train_steps=2, batch_size=8,
      partitioner=PART, learning_rate_fn=optimizers.constant(1e-2),
      checkpoint_period=2, log_every=1, eval_period=0,
      inference_evaluator=hook, inference_eval_period=1)
  assert step == 2
  return directory, model_dir, model, hook


def test_trainer_calls_inference_evaluator(trained):
  _, model_dir, model, hook = trained
  assert hook.steps == [1, 2]
  assert hook.inner.model is model and hook.inner.partitioner is PART
  rows = metrics_writer.read_jsonl(os.path.join(model_dir, 'metrics.jsonl'),
                                   'infer_eval')
  assert [r['step'] for r in rows] == [1, 2]
  assert rows[0]['jobtiny_rating/count'] == 4.0
  assert 'jobtiny_rating/expected_rmse' in rows[0]
  assert glob.glob(os.path.join(model_dir, 'infer_eval', 'events.out.*'))


def test_eval_job_via_gin(trained, tmp_path):
  _, model_dir, _, _ = trained
  out = tmp_path / 'eval'
  bindings = [f'T5Config.{k} = {v!r}' for k, v in TINY_T5.items()] + [
      'VOCAB_SIZE = 512', f"CHECKPOINT_PATH = '{model_dir}'",
      f"EVAL_OUTPUT_DIR = '{out}'", "MIXTURE_OR_TASK_NAME = 'jobtiny_rec'",
      f'TASK_FEATURE_LENGTHS = {LENGTHS!r}', 'BATCH_SIZE = 8',
      'NUM_BEAMS = 4', 'NUM_EXAMPLES = 4',
      'partitioning.Partitioner.num_partitions = 2']
  gin.clear_config()
  try:
    results = jobs_main.run_eval(['runs/eval.gin'], bindings,
                                 import_task_modules=False)
  finally:
    gin.clear_config()
  doc = json.loads((out / 'metrics.json').read_text())
  assert doc['step'] == 2 and doc['checkpoint'] == str(model_dir)
  assert sorted(doc['metrics']) == sorted(results) == [
      'jobtiny_ranking', 'jobtiny_rating', 'jobtiny_retrieval']
  assert doc['metrics']['jobtiny_retrieval']['count'] == 4
  assert results['jobtiny_retrieval']['recall@20'] <= 1.0
  assert '## retrieval' in (out / 'metrics.md').read_text()
  assert glob.glob(str(out / 'infer_eval' / 'events.out.tfevents*'))
  assert jobs.checkpoint_step(str(model_dir / 'checkpoints' / '2')) == 2


def _infer(trained, out, **kwargs):
  _, model_dir, model, _ = trained
  args = dict(model=model, checkpoint_path=str(model_dir),
              mixture_or_task_name='jobtiny_retrieval', output_dir=str(out),
              task_feature_lengths=LENGTHS, batch_size=4, split='test',
              partitioner=PART, chunk_size=4)
  args.update(kwargs)
  return jobs.infer(**args)


def _read(path):
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def one_shard(trained, tmp_path_factory):
  return _read(_infer(trained, tmp_path_factory.mktemp('infer1')))


def test_infer_rows(one_shard):
  rows = one_shard
  assert [r['index'] for r in rows] == list(range(len(rows)))
  assert len(rows) > 8  # several chunks of 4
  for r in rows:
    assert r['task'] == 'jobtiny_retrieval' and r['target_item']
    assert r['prediction'] == r['predictions'][0] and len(r['scores']) == 1


def test_infer_two_shards_union_equals_one(trained, one_shard, tmp_path):
  paths = [_infer(trained, tmp_path, shard_id=k, num_shards=2)
           for k in range(2)]
  assert [os.path.basename(p) for p in paths] == [
      'predictions-00000-of-00002.jsonl', 'predictions-00001-of-00002.jsonl']
  shards = [_read(p) for p in paths]
  assert all(r['index'] % 2 == k for k, rows in enumerate(shards)
             for r in rows)
  union = sorted(shards[0] + shards[1], key=lambda r: r['index'])
  assert [r['prediction'] for r in union] == [
      r['prediction'] for r in one_shard]
  np.testing.assert_allclose([r['scores'][0] for r in union],
                             [r['scores'][0] for r in one_shard], atol=1e-4)


def test_infer_samples_do_not_depend_on_sharding(trained, tmp_path):
  """Sampling keys come from example indices, so 1 shard and 2 shards (other
  batches, other chunks) sample the same outputs for every example."""
  sample = dict(decode_method='sample', num_decodes=3, temperature=1.0,
                seed=7)
  one = _read(_infer(trained, tmp_path / 'one', **sample))
  two = sorted((r for k in range(2) for r in _read(_infer(
      trained, tmp_path / 'two', shard_id=k, num_shards=2, **sample))),
               key=lambda r: r['index'])
  assert [r['predictions'] for r in two] == [r['predictions'] for r in one]
  np.testing.assert_allclose([r['scores'] for r in two],
                             [r['scores'] for r in one], atol=1e-4)
  # Not a constant: another seed samples something else for some example.
  other = _read(_infer(trained, tmp_path / 'other', **dict(sample, seed=8)))
  assert [r['predictions'] for r in other] != [r['predictions'] for r in one]
  # Each example's decodes are sampled with distinct keys.
  assert any(len(set(r['predictions'])) > 1 for r in one)


def test_infer_resumes_after_interruption(trained, one_shard, tmp_path):
  class Stop(Exception):
    pass

  def stop_after_first(c):
    if c == 0:
      raise Stop

  with pytest.raises(Stop):
    _infer(trained, tmp_path, after_chunk=stop_after_first)
  final = tmp_path / 'predictions-00000-of-00001.jsonl'
  assert not final.exists()
  assert (tmp_path / (final.name + '.chunks') / 'chunk-000000.jsonl').exists()
  computed = []
  assert _infer(trained, tmp_path, after_chunk=computed.append) == str(final)
  n_chunks = -(-len(one_shard) // 4)
  assert computed == list(range(1, n_chunks))  # chunk 0 not recomputed
  rows = _read(final)
  assert [r['prediction'] for r in rows] == [r['prediction'] for r in one_shard]
  assert not (tmp_path / (final.name + '.chunks')).exists()


def test_infer_score_mode(trained, tmp_path):
  rows = _read(_infer(trained, tmp_path, mode='score', chunk_size=100,
                      num_examples=4))
  assert len(rows) == 4 and all(r['score'] < 0 for r in rows)
