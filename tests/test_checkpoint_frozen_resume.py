"""Resuming a checkpoint written with other frozen parameters fails on restore.

Orbax restores the optimizer entry of a parameter that was frozen when the
step was saved (an optax MaskedNode) as None when that parameter trains now;
without the check in `Checkpointer.restore` the first train step failed
inside optax (`float * NoneType`), found by benchmarks/ilm_ml100k.py when
runs/ilm_phase2.gin changed its frozen patterns between two runs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recjax.train import checkpointing
from recjax.train import optimizers


def _state(frozen_patterns):
  params = {'lm': {'kernel': jnp.arange(6., dtype=jnp.float32)},
            'norm': {'scale': jnp.ones((3,), jnp.float32)},
            'adapter': {'kernel': jnp.full((2,), 0.5, jnp.float32)}}
  tx = optimizers.build_optimizer(optimizers.adamw(learning_rate=1e-3),
                                  frozen_patterns=frozen_patterns,
                                  params=params)
  return {'params': params, 'opt_state': tx.init(params)}


def _abstract(state):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      state)


def test_same_frozen_patterns_restore_exactly(tmp_path):
  state = _state(['^lm/', '^norm/'])
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  ckpt.save(3, state, {'batches_consumed': 3})
  restored, data = ckpt.restore(_abstract(state))
  assert data['batches_consumed'] == 3
  np.testing.assert_array_equal(restored['params']['lm']['kernel'],
                                [0., 1., 2., 3., 4., 5.])
  assert (jax.tree_util.tree_structure(restored) ==
          jax.tree_util.tree_structure(state))


def test_parameter_frozen_then_trainable_is_refused(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  ckpt.save(3, _state(['^lm/', '^norm/']), {'batches_consumed': 3})
  # 'norm' trains now: Adam's mu and nu have no saved value for it.
  with pytest.raises(checkpointing.CorruptCheckpointError,
                     match=r'does not fit this run: .* 2 leaves .*norm.*'
                     r'frozen_patterns'):
    ckpt.restore(_abstract(_state(['^lm/'])))
