"""The decoder-only backbone through the same gin entry points as FLAN-T5:
runs/finetune.gin trains it (model gin models/decoder_tiny.gin, shrunk),
runs/eval.gin writes the same metrics files, `infer` predicts and scores."""
from __future__ import annotations

import json

import gin
import numpy as np
import pytest

from recjax.infer import jobs
from recjax.infer import jobs_main
from recjax.train import gin_utils
from recjax.train import partitioning
from recjax.train import trainer
from test_evaluation import LENGTHS, make_prepared

TINY = ['DecoderOnlyConfig.emb_dim = 16', 'DecoderOnlyConfig.num_heads = 2',
        'DecoderOnlyConfig.num_kv_heads = 1', 'DecoderOnlyConfig.head_dim = 8',
        'DecoderOnlyConfig.mlp_dim = 32', 'DecoderOnlyConfig.num_layers = 1',
        "ACTIVATION_DTYPE = 'float32'", 'VOCAB_SIZE = 512',
        'partitioning.Partitioner.num_partitions = 2']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  directory = tmp_path_factory.mktemp('dectiny')
  make_prepared(directory, 'dectiny')
  model_dir = tmp_path_factory.mktemp('decmodel')
  gin.clear_config()
  try:
    gin_utils.parse_gin_flags(
        ['models/decoder_tiny.gin', 'runs/finetune.gin'], TINY + [
            f"MODEL_DIR = '{model_dir}'",
            "MIXTURE_OR_TASK_NAME = 'dectiny_rec'",
            f'TASK_FEATURE_LENGTHS = {LENGTHS!r}', 'TRAIN_STEPS = 2',
            'BATCH_SIZE = 8', 'EVAL_PERIOD = 2', 'EVAL_STEPS = 1',
            'LEARNING_RATE = 0.01', 'train.log_every = 1'])
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
    step, summary = trainer.train()
  finally:
    gin.clear_config()
  assert model.architecture == 'decoder_only'
  assert step == 2 and np.isfinite(summary['loss'])
  return directory, model_dir


def test_eval_job_writes_the_same_metrics_files(trained, tmp_path):
  _, model_dir = trained
  out = tmp_path / 'eval'
  gin.clear_config()
  try:
    results = jobs_main.run_eval(
        ['models/decoder_tiny.gin', 'runs/eval.gin'], TINY + [
            f"CHECKPOINT_PATH = '{model_dir}'", f"EVAL_OUTPUT_DIR = '{out}'",
            "MIXTURE_OR_TASK_NAME = 'dectiny_rec'",
            f'TASK_FEATURE_LENGTHS = {LENGTHS!r}', 'BATCH_SIZE = 8',
            'NUM_BEAMS = 4', 'NUM_EXAMPLES = 4'],
        import_task_modules=False)
  finally:
    gin.clear_config()
  doc = json.loads((out / 'metrics.json').read_text())
  assert doc['step'] == 2
  assert sorted(doc['metrics']) == sorted(results) == [
      'dectiny_ranking', 'dectiny_rating', 'dectiny_retrieval']
  retrieval = results['dectiny_retrieval']
  assert retrieval['count'] == 4 and 0 <= retrieval['recall@20'] <= 1
  assert results['dectiny_ranking']['count'] == 4
  assert np.isfinite(results['dectiny_rating']['expected_rmse'])
  rows = [json.loads(line) for line in
          (out / 'predictions' / 'dectiny_retrieval.jsonl').open()]
  # Constrained beams are real items, best first, at most NUM_BEAMS of them.
  assert all(1 <= len(r['predictions']) <= 4 for r in rows)
  assert all(r['scores'] == sorted(r['scores'], reverse=True) for r in rows)


def test_infer_predict_and_score(trained, tmp_path):
  _, model_dir = trained
  gin.clear_config()
  try:
    gin_utils.parse_gin_flags(['models/decoder_tiny.gin'], TINY)
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  finally:
    gin.clear_config()
  common = dict(model=model, checkpoint_path=str(model_dir),
                mixture_or_task_name='dectiny_retrieval',
                task_feature_lengths=LENGTHS, batch_size=4, split='test',
                num_examples=4, auto_vocab_size=True,
                partitioner=partitioning.Partitioner(mesh_shape=(4, 2)))
  path = jobs.infer(output_dir=str(tmp_path / 'p'), decode_method='beam',
                    num_decodes=2, **common)
  rows = [json.loads(line) for line in open(path, encoding='utf-8')]
  assert len(rows) == 4 and all(len(r['predictions']) == 2 for r in rows)
  path = jobs.infer(output_dir=str(tmp_path / 's'), mode='score', **common)
  rows = [json.loads(line) for line in open(path, encoding='utf-8')]
  assert len(rows) == 4 and all(r['score'] < 0 for r in rows)
