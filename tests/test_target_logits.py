"""Decoder-only training projects to the vocabulary only at the targets
(`DecoderOnlyModel.max_target_tokens`): loss, metrics and gradients equal
the every-position computation, causal and bidirectional prefix, packed and
unpacked; a bound below a packed row is counted and stops training."""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
import seqio

from recjax.models import decoder_only
from recjax.train import model_api
from recjax.train import optimizers
from recjax.train import partitioning
from recjax.train import test_utils
from recjax.train import trainer

LENGTHS = {'inputs': 48, 'targets': 32}
CFG = decoder_only.DecoderOnlyConfig(
    vocab_size=384, emb_dim=16, num_heads=2, num_kv_heads=1, head_dim=8,
    num_layers=1, mlp_dim=32, dtype='float32')


def _model(**kwargs):
  return model_api.DecoderOnlyModel(
      decoder_only.DecoderOnlyTransformer(CFG), test_utils.BYTE_VOCAB,
      test_utils.BYTE_VOCAB, **kwargs)


def _batch(pack):
  it = trainer.get_dataset_iterator(
      test_utils.register_tiny_task(), LENGTHS,
      seqio.PrefixLMFeatureConverter(pack=pack), 'train', 8, shuffle=False,
      seed=0, num_epochs=1, use_cached=False, shard_info=None)
  return next(it)


def _params(model, batch):
  shapes = {k: (1, v.shape[1]) for k, v in batch.items()}
  return nn.unbox(model.get_initial_variables(jax.random.PRNGKey(0),
                                              shapes)['params'])


def _most_targets(batch):
  return int((batch['decoder_loss_weights'] > 0).sum(1).max())


@pytest.mark.parametrize('pack', [False, True], ids=['unpacked', 'packed'])
@pytest.mark.parametrize('bidirectional', [False, True],
                         ids=['causal', 'prefix'])
def test_target_logits_equal_every_position(pack, bidirectional):
  batch = _batch(pack)
  full = _model(inputs_bidirectional_attention=bidirectional)
  if pack:  # the tightest bound that holds every row of this batch
    bound = _model(inputs_bidirectional_attention=bidirectional,
                   max_target_tokens=_most_targets(batch))
    assert full.for_feature_lengths(LENGTHS, pack=True) is full
  else:
    bound = full.for_feature_lengths(LENGTHS, pack=False)
    assert bound.max_target_tokens == LENGTHS['targets']
    assert full.max_target_tokens is None
  index = bound._logit_index(batch)  # pylint: disable=protected-access
  total = batch['decoder_target_tokens'].shape[1]
  assert index is not None and index.shape[1] < total / 2
  params = _params(full, batch)

  def loss(model, p):
    return model.loss_fn(p, batch, None)

  (want, wm), wg = jax.value_and_grad(lambda p: loss(full, p),
                                      has_aux=True)(params)
  (got, gm), gg = jax.value_and_grad(lambda p: loss(bound, p),
                                     has_aux=True)(params)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert float(gm[model_api.DROPPED_TARGET_TOKENS]) == 0
  for k in wm:
    np.testing.assert_allclose(gm[k], wm[k], rtol=1e-6, err_msg=k)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(gg),
                          jax.tree_util.tree_leaves(wg)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7,
                               err_msg=jax.tree_util.keystr(path))


def test_a_bound_below_a_packed_row_stops_training(tmp_path):
  batch = _batch(True)
  most = _most_targets(batch)
  short = _model(max_target_tokens=most - 1)
  _, m = short.loss_fn(_params(short, batch), batch, None)
  rows = (batch['decoder_loss_weights'] > 0).sum(1)
  assert float(m[model_api.DROPPED_TARGET_TOKENS]) == np.maximum(
      rows - (most - 1), 0).sum() > 0
  with pytest.raises(ValueError, match='max_target_tokens'):
    trainer.train(  # every target is at least a token and EOS
        model=_model(max_target_tokens=1), model_dir=str(tmp_path), train_steps=1, batch_size=8,
        mixture_or_task_name=test_utils.register_tiny_task(),
        task_feature_lengths=LENGTHS, log_every=1, tensorboard=False,
        partitioner=partitioning.Partitioner(mesh_shape=(1, 1),
                                             devices=jax.devices()[:1]),
        optimizer=optimizers.adamw, random_seed=0)
  assert not (tmp_path / 'checkpoints' / '1').exists()
