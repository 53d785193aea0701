"""Inference evaluation on a tiny prepared directory with a tiny real T5:
metrics recomputed by hand from the written predictions, constrained beam
search against brute-force catalogue scoring, the rating expectation path."""
from __future__ import annotations

import json
import math

import flax.linen as nn
import jax
import numpy as np
import pytest

from recjax.infer import evaluation
from recjax.infer import predict
from recjax.models import t5
from recjax.prompts import PromptConfig
from recjax.prompts.export import write_task_files
from recjax.train import model_api
from recjax.train import partitioning
from seqio_tasks import registry
from tiny_data import tiny_data

LENGTHS = {'inputs': 96, 'targets': 8}
TINY_T5 = dict(vocab_size=512, emb_dim=16, num_heads=2, head_dim=8,
               mlp_dim=32, num_encoder_layers=1, num_decoder_layers=1,
               dtype='float32')


def make_prepared(directory, name, n_users=12, n_items=16):
  """A tiny prepared dir (retrieval, ranking, rating + one aux task)."""
  data = tiny_data(n_users=n_users, n_items=n_items, min_len=4, max_len=8)
  data.write_into(directory)
  write_task_files(data, directory, config=PromptConfig(num_negatives=7,
                                                        max_history=5),
                   tasks=['retrieval', 'ranking', 'rating', 'ie'],
                   vocab_size=400, num_shards=1)
  registry.register_prepared(directory, dataset_name=name)
  return data


def tiny_t5_model():
  return model_api.EncoderDecoderModel(t5.Transformer(t5.T5Config(**TINY_T5)))


def init_params(model, partitioner, seed=0):
  shapes = {'encoder_input_tokens': (1, LENGTHS['inputs']),
            'decoder_input_tokens': (1, LENGTHS['targets'])}
  init = lambda r: model.get_initial_variables(r, shapes)['params']
  boxed = jax.eval_shape(init, jax.random.PRNGKey(seed))
  shardings = partitioner.param_shardings(
      nn.unbox(boxed), nn.get_partition_spec(boxed))
  return jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(
      jax.random.PRNGKey(seed))


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  directory = tmp_path_factory.mktemp('evaltiny')
  data = make_prepared(directory, 'evaltiny')
  model = tiny_t5_model()
  model.output_vocabulary = model.input_vocabulary = (
      registry.default_vocabulary(directory))
  part = partitioning.Partitioner(mesh_shape=(4, 2))
  params = init_params(model, part)
  return directory, data, model, part, params


@pytest.fixture(scope='module')
def evaluated(setup, tmp_path_factory):
  """One evaluation of the whole mixture (aux task included, to be skipped)."""
  _, _, model, part, params = setup
  out = tmp_path_factory.mktemp('eval_out')
  ev = evaluation.InferenceEvaluator(
      'evaltiny_rec_aux', LENGTHS, 8, model=model, partitioner=part,
      num_beams=16, alpha=0.0)  # alpha 0: beam scores = log-likelihoods
  results = ev.evaluate(params, step=7, checkpoint='ckpt', output_dir=str(out))
  return ev, results, out


def _rows(out, task):
  with open(out / 'predictions' / f'{task}.jsonl', encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def test_outputs_and_skips(evaluated):
  _, results, out = evaluated
  assert sorted(results) == ['evaltiny_ranking', 'evaltiny_rating',
                             'evaltiny_retrieval']
  doc = json.loads((out / 'metrics.json').read_text())
  assert doc['step'] == 7 and doc['split'] == 'test'
  assert 'evaltiny_ie' in doc['skipped']
  for task, m in results.items():
    for k, v in m.items():
      got = doc['metrics'][task][k]
      assert (got is None and not math.isfinite(v)) or got == pytest.approx(v)
  md = (out / 'metrics.md').read_text()
  assert '| evaltiny_retrieval |' in md and 'ndcg@10' in md
  assert list((out / 'infer_eval').glob('events.out.tfevents*'))


def test_retrieval_metrics_by_hand(setup, evaluated):
  directory, data, _, _, _ = setup
  _, results, out = evaluated
  m = results['evaltiny_retrieval']
  rows = _rows(out, 'evaltiny_retrieval')
  assert len(rows) == m['count'] == data.num_users
  ids = {it['id'] for it in data.items}
  ranks = []
  for r in rows:
    preds = r['predictions']
    assert len(preds) == len(set(preds)) <= 16 and set(preds) <= ids
    assert r['scores'] == sorted(r['scores'], reverse=True)
    ranks.append(preds.index(r['target_item']) + 1
                 if r['target_item'] in preds else 0)
  ranks = np.array(ranks)
  for k in (1, 5, 10, 20):
    want = np.mean((ranks > 0) & (ranks <= k))
    assert m[f'recall@{k}'] == pytest.approx(want)
    assert m[f'hit@{k}'] == pytest.approx(want)
  for k in (5, 10, 20):
    want = np.mean([1 / math.log2(x + 1) if 0 < x <= k else 0 for x in ranks])
    assert m[f'ndcg@{k}'] == pytest.approx(want)
  assert m['mrr'] == pytest.approx(np.mean([1 / x if x else 0 for x in ranks]))
  # Valid ratio of the unconstrained greedy generations.
  texts = set(evaluation.load_catalogue(directory).texts)
  assert m['valid_ratio'] == pytest.approx(
      np.mean([r['prediction'] in texts for r in rows]))


def test_beam_search_equals_brute_force(setup, evaluated):
  """num_beams >= catalogue size and alpha 0: the constrained beam ranking is
  the catalogue sorted by score_candidates log-likelihood."""
  directory, data, model, part, params = setup
  _, _, out = evaluated
  rows = _rows(out, 'evaltiny_retrieval')[:4]
  cat = evaluation.load_catalogue(directory)
  toks = evaluation.item_tokens(model.output_vocabulary, cat)
  t_len = max(len(t) for t in toks)
  cands = evaluation.pad_rows(toks, (len(toks), t_len))
  task = evaluation.leaf_tasks('evaltiny_retrieval')[0]
  exs = list(evaluation.iter_examples(task, 'test', LENGTHS, num_examples=4))
  enc = evaluation.encode_batch(exs, LENGTHS, 8)['encoder_input_tokens']
  scores = evaluation.get_runner(model, part, 8).score_candidates(
      params, enc, np.ascontiguousarray(
          np.broadcast_to(cands, (8,) + cands.shape)))[:4]
  assert len(cat.ids) == data.num_items == 16
  for r, s in zip(rows, scores):
    order = np.argsort(-s, kind='stable')
    assert r['predictions'] == [cat.ids[i] for i in order]
    np.testing.assert_allclose(r['scores'], s[order], rtol=1e-4, atol=1e-4)


def test_ranking_by_likelihood(setup, evaluated):
  directory, _, model, _, params = setup
  _, results, out = evaluated
  m = results['evaltiny_ranking']
  rows = _rows(out, 'evaltiny_ranking')
  ranks = []
  for r in rows:
    s = np.array(r['candidate_scores'])
    assert len(s) == len(r['candidates']) == 8
    ranks.append(int(np.sum(s >= s[r['candidates'].index(r['target_item'])])))
  assert ranks == [r['rank'] for r in rows]
  assert m['hit@1'] == pytest.approx(np.mean(np.array(ranks) == 1))
  assert m['hit@5'] == pytest.approx(np.mean(np.array(ranks) <= 5))
  assert 0.0 <= m['llara_valid_ratio'] <= 1.0
  # One candidate score against teacher-forced score_batch of that target.
  cat = evaluation.load_catalogue(directory)
  task = evaluation.leaf_tasks('evaltiny_ranking')[0]
  ex = next(evaluation.iter_examples(task, 'test', LENGTHS, num_examples=1))
  batch = evaluation.encode_batch([ex], LENGTHS, 1)
  tok = evaluation.item_tokens(model.output_vocabulary, cat)[
      cat.index[rows[0]['candidates'][3]]]
  batch = evaluation.encode_batch([dict(ex, targets=tok)], LENGTHS, 1)
  want = predict.score_batch(model, jax.device_get(params), batch)
  assert rows[0]['candidate_scores'][3] == pytest.approx(float(want[0]),
                                                         abs=1e-4)


def test_rating_expectation(evaluated):
  _, results, out = evaluated
  m = results['evaltiny_rating']
  rows = _rows(out, 'evaltiny_rating')
  values = np.arange(1, 6, dtype=np.float64)
  exp, ys = [], []
  for r in rows:
    lp = np.array(r['scale_scores'])
    p = np.exp(lp - lp.max())
    p /= p.sum()
    exp.append(float(p @ values))
    assert r['expected_rating'] == pytest.approx(exp[-1])
    ys.append(float(r['targets']))
  d = np.array(exp) - np.array(ys)
  assert m['expected_rmse'] == pytest.approx(math.sqrt(np.mean(d * d)))
  assert m['expected_mae'] == pytest.approx(np.mean(np.abs(d)))
  assert m['count'] == len(rows) and 0.0 <= m['valid_ratio'] <= 1.0


def test_catalogue_and_trie_are_cached(setup):
  directory, _, model, _, _ = setup
  cat = evaluation.load_catalogue(directory)
  assert evaluation.load_catalogue(directory) is cat
  trie = evaluation.catalogue_trie(model.output_vocabulary, cat)
  assert evaluation.catalogue_trie(model.output_vocabulary, cat) is trie
  assert cat.item_format == 'title_id' and cat.texts == cat.ids


def test_seqio_metric_fns_registered(setup):
  del setup
  task = evaluation.leaf_tasks('evaltiny_retrieval')[0]
  (fn,) = task.predict_metric_fns
  got = fn(['item_3', 'item_1'], ['item_3; item_2', 'item_2; item_1'])
  assert got['recall@1'] == pytest.approx(0.5)
  assert got['mrr'] == pytest.approx(0.75)
  rating = evaluation.leaf_tasks('evaltiny_rating')[0]
  assert rating.predict_metric_fns[0](['4'], ['3'])['rmse'] == 1.0
  assert not evaluation.leaf_tasks('evaltiny_ie')[0].predict_metric_fns
