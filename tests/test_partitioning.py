"""Mesh construction, T5X logical-axis rules and sharding of params/optimizer state."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from recjax.train import optimizers
from recjax.train import partitioning
from recjax.train import test_utils
from recjax.train import trainer

# T5X's `standard_logical_axis_rules` tables, written out by hand, then
# recjax's additions: grouped-query k/v heads split like 'heads', LoRA rank
# replicated.
_REPLICATED = [('relpos_buckets', None), ('abspos_buckets', None),
               ('length', None), ('layers', None), ('stack', None),
               ('mlp_activations', None), ('kv_heads', 'model'),
               ('lora_rank', None)]
_COMMON = [('batch', 'data'), ('vocab', 'model'), ('mlp', 'model'),
           ('heads', 'model'), ('kv', None), ('joined_kv', 'model')]


@pytest.mark.parametrize('act,param,expected', [
    (1, 1, [('batch', 'data'), ('vocab', 'model'), ('embed', None),
            ('mlp', 'model'), ('heads', 'model'), ('kv', None),
            ('joined_kv', 'model')]),
    (2, 1, _COMMON + [('embed', 'model')]),
    (1, 2, _COMMON + [('embed', 'data')]),
    (2, 2, _COMMON + [('embed', 'model'), ('embed', 'data')]),
])
def test_standard_rules_match_t5x(act, param, expected):
  rules = partitioning.standard_logical_axis_rules(act, param)
  assert list(rules) == expected + _REPLICATED


def test_rules_reject_unknown_dims():
  with pytest.raises(ValueError):
    partitioning.standard_logical_axis_rules(3, 1)


@pytest.mark.parametrize('kwargs,shape', [
    ({}, (8, 1)),
    ({'num_partitions': 4}, (2, 4)),
    ({'model_parallel_submesh': (1, 1, 2, 1)}, (4, 2)),
    ({'mesh_shape': (1, 8)}, (1, 8)),
])
def test_mesh_shapes(kwargs, shape):
  mesh = partitioning.get_mesh(**kwargs)
  assert mesh.axis_names == ('data', 'model')
  assert tuple(mesh.devices.shape) == shape


def test_mesh_errors():
  with pytest.raises(ValueError):
    partitioning.get_mesh(num_partitions=3)
  with pytest.raises(ValueError):
    partitioning.get_mesh(num_partitions=2, mesh_shape=(4, 2))


def _setup(mesh_shape, min_dim=4, frozen=()):
  part = partitioning.Partitioner(mesh_shape=mesh_shape)
  model = test_utils.tiny_model()
  shapes = {'encoder_input_tokens': (1, 8), 'decoder_input_tokens': (1, 4),
            'decoder_target_tokens': (1, 4)}
  opt = lambda params: optimizers.build_optimizer(
      optimizers.adafactor(optimizers.constant(1e-3),
                           min_dim_size_to_factor=min_dim),
      frozen_patterns=frozen, params=params)
  return part, trainer.setup_state(model, part, opt, shapes,
                                   jax.random.PRNGKey(0))


def test_param_and_factored_state_shardings():
  part, setup = _setup((2, 4))
  ps = setup.state_shardings.params
  assert ps['token_embedder']['embedding'].spec == P('model')   # vocab, embed
  assert ps['enc_wi']['kernel'].spec == P(None, 'model')         # embed, mlp
  assert ps['query']['kernel'].spec == P(None, 'model')          # embed, heads, kv
  assert ps['out']['kernel'].spec == P('model')                  # heads, kv, embed
  assert ps['final_scale'].spec == P()
  # Factored Adafactor state follows the params. optax reduces the largest
  # dim into v_row: embedding [384, 16] -> v_row [16] (replicated), v_col
  # [384] ('model').
  flat = jax.tree_util.tree_flatten_with_path(setup.state_shardings.opt_state)[0]
  by_path = {partitioning._keystr(p): s.spec for p, s in flat}
  row = [v for k, v in by_path.items()
         if k.endswith('v_row/token_embedder/embedding')]
  col = [v for k, v in by_path.items()
         if k.endswith('v_col/token_embedder/embedding')]
  assert row == [P()] and col == [P('model')]
  wi_row = [v for k, v in by_path.items() if k.endswith('v_row/enc_wi/kernel')]
  wi_col = [v for k, v in by_path.items() if k.endswith('v_col/enc_wi/kernel')]
  assert wi_row == [P()] and wi_col == [P('model')]  # [16] / [32]
  counts = [v for k, v in by_path.items() if k.endswith('count')]
  assert counts and all(c == P() for c in counts)


def test_indivisible_axis_is_replicated():
  # 4 heads on an 8-way 'model' axis cannot be split: replicated, not an error.
  _, setup = _setup((1, 8))
  assert setup.state_shardings.params['query']['kernel'].spec == P()
  assert setup.state_shardings.params['enc_wi']['kernel'].spec == P(None,
                                                                    'model')


def test_sharded_init_places_params():
  part, setup = _setup((2, 4))
  model = test_utils.tiny_model()
  shapes = {'encoder_input_tokens': (1, 8), 'decoder_input_tokens': (1, 4),
            'decoder_target_tokens': (1, 4)}
  state = trainer.init_state(model, setup, part, shapes, jax.random.PRNGKey(0))
  emb = state.params['token_embedder']['embedding']
  assert emb.sharding.spec == P('model')
  assert emb.addressable_shards[0].data.shape == (384 // 4, 16)


def test_batches_and_host_batch_size():
  part = partitioning.Partitioner(mesh_shape=(4, 2))
  assert part.host_batch_size(8) == 8  # single process
  with pytest.raises(ValueError):
    part.host_batch_size(6)
  info = part.get_shard_info()
  assert (info.index, info.num_shards) == (0, 1)
  batch = part.shard_batch({'x': np.arange(16, dtype=np.int32).reshape(8, 2)})
  assert batch['x'].sharding.spec == P('data')
  np.testing.assert_array_equal(np.asarray(batch['x']),
                                np.arange(16).reshape(8, 2))
  assert batch['x'].addressable_shards[0].data.shape == (2, 2)


def test_partitioned_functions_apply_the_activation_rules():
  """The models' `nn.with_logical_constraint`s reach XLA only under a mesh
  and rules context; `Partitioner.partition` traces inside one, a bare
  jax.jit (no context) drops them."""
  from recjax.models import t5  # pylint: disable=g-import-not-at-top
  cfg = t5.T5Config(vocab_size=64, emb_dim=16, num_heads=4, head_dim=8,
                    mlp_dim=32, num_encoder_layers=1, num_decoder_layers=1,
                    dtype='float32')
  module = t5.Transformer(cfg)
  tokens = jnp.ones((4, 8), jnp.int32)
  params = jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), tokens, tokens, tokens,
                          enable_dropout=False))

  def forward(params, tokens):
    return module.apply(params, tokens, tokens, tokens, enable_dropout=False)

  part = partitioning.Partitioner(mesh_shape=(2, 4))
  partitioned = part.partition(
      forward, in_shardings=(part.replicated(), part.data_sharding()),
      out_shardings=part.data_sharding()).lower(params, tokens).as_text()
  bare = jax.jit(forward).lower(params, tokens).as_text()
  assert 'sharding_constraint' not in bare
  # ('batch', 'length', 'embed') -> [data, -, -]; q/k/v ('batch', 'length',
  # 'heads', 'kv') -> [data, -, model, -]; the MLP ('batch', 'length', 'mlp')
  # -> [data, -, model].
  assert '[{"data"}, {}, {}]' in partitioned
  assert '[{"data"}, {}, {"model"}, {}]' in partitioned
  assert '[{"data"}, {}, {"model"}]' in partitioned
