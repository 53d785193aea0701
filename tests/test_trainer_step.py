"""The jitted train step: sharded == single device (parameters really split),
microbatches == full batch (gradient norm and SGD parameters), frozen
parameters stay bit-identical and carry no optimizer state."""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from recjax.train import optimizers
from recjax.train import partitioning
from recjax.train import test_utils
from recjax.train import trainer

LENGTHS = {'inputs': 24, 'targets': 12}
# float32 compute throughout; differences come only from reduction order.
RTOL, ATOL = 2e-5, 2e-6


@functools.lru_cache(maxsize=None)
def _host_batches(batch_size=8, n=2):
  return test_utils.tiny_task_batches(LENGTHS, batch_size, n)


def _input_shapes():
  return test_utils.encdec_input_shapes(LENGTHS)


class Run(NamedTuple):
  losses: list
  grad_norms: list
  state: trainer.TrainState   # on the devices, sharded as the step left it
  init_params: dict           # host copy before the first step

  @property
  def params(self):
    return jax.device_get(self.state.params)


def _run(mesh_shape, tx_fn, num_microbatches=None, steps=2, frozen=()) -> Run:
  metrics, state, init_params = test_utils.run_train_steps(
      test_utils.tiny_model(), mesh_shape, tx_fn, _host_batches()[:steps],
      _input_shapes(), num_microbatches=num_microbatches,
      frozen_patterns=frozen)
  return Run([m['loss'] for m in metrics], [m['grad_norm'] for m in metrics],
             state, init_params)


def _adafactor():
  # Factor every >=2-D parameter of the tiny model so v_row/v_col sharding
  # is exercised on every mesh.
  return optimizers.adafactor(optimizers.constant(1e-2),
                              min_dim_size_to_factor=4)


def _sgd():
  # SGD with momentum: the update is linear in the gradients, so any error in
  # the gradient's scale shows in the parameters (Adafactor is
  # scale-invariant), and the momentum trace is optimizer state that frozen
  # parameters must not get.
  return optax.sgd(0.5, momentum=0.9)


def _assert_trees_close(a, b):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0],
                          jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL,
                               err_msg=optimizers.param_path(path))


# (kernel, its spec on a ('data', 'model') mesh, per-device shard shape on
# (2, 4)) under the default 1-D parameter rules: vocab, mlp and heads split
# over 'model', embed kept whole.
_SPLIT_ON_2X4 = {
    'token_embedder/embedding': (P('model', None), (96, 16)),
    'enc_wi/kernel': (P(None, 'model'), (16, 8)),
    'enc_wo/kernel': (P('model', None), (8, 16)),
    'query/kernel': (P(None, 'model', None), (16, 1, 4)),
    'out/kernel': (P('model', None, None), (1, 4, 16)),
    'dec_wi/kernel': (P(None, 'model'), (16, 8)),
    'logits_dense/kernel': (P(None, 'model'), (16, 96)),
}


def _assert_split_on_2x4(params):
  """Parameters are really split over 'model' (not replicated)."""
  flat = {optimizers.param_path(p): x for p, x in
          jax.tree_util.tree_flatten_with_path(params)[0]}
  for name, (spec, shard_shape) in _SPLIT_ON_2X4.items():
    x = flat[name]
    got = tuple(x.sharding.spec)
    got += (None,) * (len(spec) - len(got))  # P('model') == P('model', None)
    assert got == tuple(spec), (name, x.sharding.spec)
    shapes = {s.data.shape for s in x.addressable_shards}
    assert shapes == {shard_shape}, (name, shapes)
    assert len(x.addressable_shards) == 8
  assert flat['final_scale'].sharding.is_fully_replicated


@pytest.fixture(scope='module')
def single_device():
  return _run((1, 1), _adafactor)


@pytest.mark.parametrize('mesh_shape', [(8, 1), (2, 4), (1, 8)])
def test_sharded_step_equals_single_device(single_device, mesh_shape):
  want = single_device
  got = _run(mesh_shape, _adafactor)
  if mesh_shape == (2, 4):
    _assert_split_on_2x4(got.state.params)
    # The optimizer's factored row/column moments follow their parameter.
    split_state = [x for x in jax.tree_util.tree_leaves(got.state.opt_state)
                   if not x.sharding.is_fully_replicated]
    assert len(split_state) >= len(_SPLIT_ON_2X4)
  np.testing.assert_allclose(got.losses, want.losses, rtol=RTOL)
  np.testing.assert_allclose(got.grad_norms, want.grad_norms, rtol=RTOL)
  assert min(want.grad_norms) > 0.1
  _assert_trees_close(got.params, want.params)


def test_microbatches_equal_full_batch_and_frozen_stays_frozen():
  """4 microbatches == the full batch: same losses, gradient norms and, with
  SGD, the same parameters after two steps (so a wrongly scaled accumulated
  gradient fails here). Frozen params stay bit-identical and stateless."""
  frozen = (r'^enc_', r'token_embedder', r'final_scale')
  full = _run((2, 4), _sgd, frozen=frozen)
  micro = _run((2, 4), _sgd, num_microbatches=4, frozen=frozen)
  np.testing.assert_allclose(micro.losses, full.losses, rtol=RTOL)
  np.testing.assert_allclose(micro.grad_norms, full.grad_norms, rtol=RTOL)
  assert min(full.grad_norms) > 0.1
  _assert_trees_close(micro.params, full.params)
  params, init = micro.params, micro.init_params
  for name in ('enc_wi', 'enc_wo'):
    np.testing.assert_array_equal(params[name]['kernel'], init[name]['kernel'])
  np.testing.assert_array_equal(params['token_embedder']['embedding'],
                                init['token_embedder']['embedding'])
  np.testing.assert_array_equal(params['final_scale'], init['final_scale'])
  for name in ('query', 'key', 'value', 'out', 'dec_wi', 'dec_wo',
               'logits_dense'):  # every trainable parameter really moved
    assert np.abs(params[name]['kernel'] - init[name]['kernel']).max() > 1e-3
  # No optimizer-state leaf belongs to a frozen parameter.
  paths = [optimizers.param_path(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(micro.state.opt_state)[0]]
  assert any('dec_wi' in p for p in paths)
  assert not any('enc_w' in p or 'token_embedder' in p or 'final_scale' in p
                 for p in paths), paths


def test_frozen_pattern_must_match():
  with pytest.raises(ValueError, match='match no parameter'):
    _run((1, 1), _adafactor, frozen=('no_such_param',), steps=0)


def test_nonfinite_loss_keeps_params_and_optimizer_state():
  """A NaN in one parameter makes the loss NaN: the step must keep the state."""
  model = test_utils.tiny_model()
  part = partitioning.Partitioner(mesh_shape=(1, 1), devices=jax.devices()[:1])
  opt = lambda params: optimizers.build_optimizer(optimizers.adafactor(),
                                                  params=params)
  setup = trainer.setup_state(model, part, opt, _input_shapes(),
                              jax.random.PRNGKey(0))
  state = trainer.init_state(model, setup, part, _input_shapes(),
                             jax.random.PRNGKey(0))
  step = jax.jit(trainer.make_train_step(model, setup.tx))
  batch = _host_batches()[0]
  state, m = step(state, batch, jax.random.PRNGKey(1))  # one good step
  assert float(m['finite']) == 1.0
  good = jax.device_get(state)
  leaves, treedef = jax.tree_util.tree_flatten(good.params)
  leaves[0] = np.array(leaves[0], copy=True)
  leaves[0].reshape(-1)[0] = np.nan
  bad_params = jax.tree_util.tree_unflatten(treedef, leaves)
  state = good.replace(params=bad_params)
  new, m = step(state, batch, jax.random.PRNGKey(1))
  assert float(m['finite']) == 0.0 and not np.isfinite(float(m['loss']))
  assert int(new.step) == int(good.step) + 1
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(new.params)),
                  jax.tree_util.tree_leaves(bad_params)):
    np.testing.assert_array_equal(a, b)  # unchanged (NaN included)
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(new.opt_state)),
                  jax.tree_util.tree_leaves(good.opt_state)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('kwargs', [{}, {'momentum': 0.9,
                                         'weight_decay_rate': 1e-2}])
def test_adafactor_equals_optax_adafactor(kwargs):
  """recjax's Adafactor (own factored-moment and parameter-scale steps) gives
  optax.adafactor's values and the same state tree, so checkpoints
  interchange. Unfactored parameters match bit for bit; factored ones to
  float32 rounding (a column mean is summed as a matrix-vector product)."""
  rng = np.random.default_rng(0)
  params = {'matrix': rng.normal(size=(256, 160)).astype(np.float32),
            'cube': rng.normal(size=(130, 3, 200)).astype(np.float32),
            'wide': rng.normal(size=(130, 16400)).astype(np.float32),
            'vector': rng.normal(size=(160,)).astype(np.float32),
            'tiny': 1e-5 * rng.normal(size=(4,)).astype(np.float32)}
  ours = optimizers.adafactor(optimizers.constant(1e-2), **kwargs)
  ref = optax.adafactor(learning_rate=optimizers.constant(1e-2), **kwargs)
  s_ours, s_ref = ours.init(params), ref.init(params)
  assert (jax.tree_util.tree_structure(s_ours) ==
          jax.tree_util.tree_structure(s_ref))
  p_ours = p_ref = params
  for _ in range(3):
    grads = jax.tree_util.tree_map(
        lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    u, s_ours = ours.update(grads, s_ours, p_ours)
    p_ours = optax.apply_updates(p_ours, u)
    u, s_ref = ref.update(grads, s_ref, p_ref)
    p_ref = optax.apply_updates(p_ref, u)
  for key in ('vector', 'tiny'):
    np.testing.assert_array_equal(p_ours[key], p_ref[key])
  for key in ('matrix', 'cube', 'wide'):
    np.testing.assert_allclose(p_ours[key], p_ref[key], rtol=0, atol=1e-6)
    assert np.abs(p_ours[key] - params[key]).mean() > 1e-3  # it trained
  for a, b in zip(jax.tree_util.tree_leaves(s_ours),
                  jax.tree_util.tree_leaves(s_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_adafactor_mean_matches_float64_on_both_paths():
  """`_mean` equals the float64 mean to float32 rounding, both where it is a
  dot with ones (a major axis with >= 16k kept elements, also the middle
  axis of a 3-D array) and where it is jnp.mean."""
  rng = np.random.default_rng(1)
  for shape, axis in (((16, 20000), 0), ((8, 3, 6000), 0), ((8, 3, 6000), 1),
                      ((8, 3, 6000), 2), ((256, 160), 0)):
    x = rng.uniform(size=shape).astype(np.float32)
    ours = optimizers._mean(jax.numpy.asarray(x), axis)  # pylint: disable=protected-access
    assert ours.shape == tuple(d for i, d in enumerate(shape) if i != axis)
    np.testing.assert_allclose(ours, x.astype(np.float64).mean(axis=axis),
                               rtol=2e-6)


def test_adafactor_mean_on_a_mesh_equals_unsharded():
  """The dot-with-ones mean of a wide kernel sharded on a (2, 4) mesh over
  both axes (so the contracted axis is split too) equals the unsharded one."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4),
                           ('data', 'model'))
  x = np.random.default_rng(2).uniform(size=(16, 20000)).astype(np.float32)
  sharded = jax.device_put(x, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec('data', 'model')))
  mean = jax.jit(lambda a: optimizers._mean(a, 0))  # pylint: disable=protected-access
  np.testing.assert_allclose(mean(sharded), mean(jax.numpy.asarray(x)),
                             rtol=1e-6)
  np.testing.assert_allclose(mean(sharded), x.astype(np.float64).mean(0),
                             rtol=2e-6)


def test_adafactor_epsilon2_sets_the_minimum_parameter_scale():
  """A parameter with rms below epsilon2 is scaled by epsilon2 (optax's alias
  always used 1e-3)."""
  params = {'w': np.full((4,), 1e-6, np.float32)}
  grads = {'w': np.ones((4,), np.float32)}
  steps = {}
  for eps2 in (1e-3, 1e-1):
    tx = optimizers.adafactor(optimizers.constant(1.0), epsilon2=eps2,
                              clipping_threshold=None)
    u, _ = tx.update(grads, tx.init(params), params)
    steps[eps2] = float(np.abs(u['w'][0]))
  np.testing.assert_allclose(steps[1e-1] / steps[1e-3], 100.0, rtol=1e-5)
