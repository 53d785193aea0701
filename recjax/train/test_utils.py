"""Tiny real objects for trainer tests (as t5x/test_utils.py): a SeqIO task
over synthetic text pairs and a small encoder-decoder Flax module with the
`recjax.models.t5.Transformer` call signature and logical-axis annotations."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf

BYTE_VOCAB = seqio.ByteVocabulary()  # 259 ids (3 special + 256 bytes)


def _pairs(split: str, n: int, seed: int):
  rng = np.random.RandomState({'train': seed, 'validation': seed + 1}[split])
  words = ['apple', 'brick', 'cloud', 'delta', 'ember', 'fjord', 'grape',
           'harbor', 'iris', 'jade']
  inputs, targets = [], []
  for _ in range(n):
    k = rng.randint(1, 5)
    seq = [words[i] for i in rng.randint(0, len(words), size=k)]
    inputs.append('reverse: ' + ' '.join(seq))
    targets.append(' '.join(reversed(seq)))
  return inputs, targets


def register_tiny_task(name: str = 'recjax_tiny_test', num_train: int = 256,
                       num_validation: int = 24, seed: int = 0) -> str:
  """Registers (once) a byte-vocabulary text-to-text task; returns its name."""
  if name in seqio.TaskRegistry.names():
    return name
  data = {s: _pairs(s, n, seed) for s, n in
          (('train', num_train), ('validation', num_validation))}

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    inputs, targets = data[split]
    return tf.data.Dataset.from_tensor_slices({'inputs': inputs,
                                               'targets': targets})

  features = {
      'inputs': seqio.Feature(BYTE_VOCAB, add_eos=True),
      'targets': seqio.Feature(BYTE_VOCAB, add_eos=True),
  }
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(
          dataset_fn, splits=('train', 'validation'),
          num_input_examples={'train': num_train,
                              'validation': num_validation}),
      preprocessors=[
          seqio.preprocessors.tokenize,
          seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=features)
  return name


@dataclasses.dataclass(frozen=True)
class TinyConfig:
  vocab_size: int = 384
  emb_dim: int = 16
  num_heads: int = 4
  head_dim: int = 4
  mlp_dim: int = 32
  dropout_rate: float = 0.0
  dtype: str = 'float32'


def tiny_task_batches(lengths, batch_size: int = 8, n: int = 2) -> list:
  """The first `n` packed EncDec host batches of the tiny task (seeded)."""
  from recjax.train import trainer  # pylint: disable=g-import-not-at-top
  name = register_tiny_task()
  it = trainer.get_dataset_iterator(
      name, lengths, seqio.EncDecFeatureConverter(pack=True), 'train',
      batch_size, shuffle=True, seed=0, num_epochs=None, use_cached=False,
      shard_info=None)
  return [next(it) for _ in range(n)]


def encdec_input_shapes(lengths) -> dict:
  """{feature: (1, length)} of packed EncDec batches, for model init."""
  model_lengths = seqio.EncDecFeatureConverter(
      pack=True).get_model_feature_lengths(lengths)
  return {k: (1, v) for k, v in model_lengths.items()}


def run_train_steps(model, mesh_shape, tx_fn, batches, input_shapes, *,
                    num_microbatches=None, frozen_patterns=(),
                    subtree_norms=False):
  """Runs the real train step on a (data, model) mesh over `batches`.

  Returns (metrics per step as floats, final sharded TrainState, initial
  params on the host): what the sharding, accumulation and freezing tests
  compare between meshes.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from recjax.train import optimizers, partitioning, trainer  # pylint: disable=g-import-not-at-top,g-multiple-import
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  part = partitioning.Partitioner(mesh_shape=mesh_shape, devices=devices)
  opt = lambda params: optimizers.build_optimizer(
      tx_fn(), frozen_patterns=frozen_patterns, params=params)
  setup = trainer.setup_state(model, part, opt, input_shapes,
                              jax.random.PRNGKey(0))
  state = trainer.init_state(model, setup, part, input_shapes,
                             jax.random.PRNGKey(0))
  init_params = jax.device_get(state.params)
  shardings = {k: part.data_sharding() for k in batches[0]}
  step = part.partition(
      trainer.make_train_step(model, setup.tx, num_microbatches,
                              part.data_sharding(),
                              frozen_patterns=frozen_patterns,
                              subtree_norms=subtree_norms),
      in_shardings=(setup.state_shardings, shardings, part.replicated()),
      out_shardings=(setup.state_shardings, part.replicated()),
      donate_argnums=(0,))
  metrics = []
  for b in batches:
    state, m = step(state, part.shard_batch(b), jax.random.PRNGKey(1))
    metrics.append({k: float(v) for k, v in m.items()})
  return metrics, state, init_params


class _Dense(nn.Module):
  """flax's DenseGeneral (same init, same values) whose kernel is boxed at
  its own shape: DenseGeneral boxes the flat initial kernel, which the
  partitioner's activation rules then refuse (3 axis names on 2 dims)."""
  features: Any
  axes: Tuple[str, ...]
  contract_dims: int = 1

  @nn.compact
  def __call__(self, x):
    features = tuple(np.atleast_1d(self.features).tolist())
    in_shape = x.shape[x.ndim - self.contract_dims:]
    def init(rng, shape, dtype=jnp.float32):
      flat = (int(np.prod(in_shape)), int(np.prod(features)))
      return nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')(
          rng, flat, dtype).reshape(shape)
    kernel = self.param('kernel', nn.with_logical_partitioning(init, self.axes),
                        in_shape + features)
    return jnp.tensordot(x, kernel, self.contract_dims)


def _dense(features, axes, name):
  return _Dense(features, axes, name=name)


class TinyEncoderDecoder(nn.Module):
  """Embedding, an MLP encoder and a decoder that cross-attends to it."""
  config: TinyConfig

  @nn.compact
  def __call__(self, encoder_input_tokens, decoder_input_tokens,
               decoder_target_tokens, encoder_segment_ids=None,
               decoder_segment_ids=None, encoder_positions=None,
               decoder_positions=None, *, input_embeddings=None,
               embedding_mask=None, enable_dropout=True, decode=False):
    del decoder_target_tokens, encoder_positions, decoder_positions, decode
    del input_embeddings, embedding_mask
    cfg = self.config
    embed = nn.Embed(cfg.vocab_size, cfg.emb_dim, name='token_embedder',
                     embedding_init=nn.with_logical_partitioning(
                         nn.initializers.normal(1.0), ('vocab', 'embed')))
    drop = nn.Dropout(cfg.dropout_rate, deterministic=not enable_dropout)
    x = embed(encoder_input_tokens)
    h = nn.relu(_dense(cfg.mlp_dim, ('embed', 'mlp'), 'enc_wi')(x))
    x = x + _dense(cfg.emb_dim, ('mlp', 'embed'), 'enc_wo')(drop(h))
    y = embed(decoder_input_tokens)
    q = _dense((cfg.num_heads, cfg.head_dim), ('embed', 'heads', 'kv'),
               'query')(y)
    k = _dense((cfg.num_heads, cfg.head_dim), ('embed', 'heads', 'kv'),
               'key')(x)
    v = _dense((cfg.num_heads, cfg.head_dim), ('embed', 'heads', 'kv'),
               'value')(x)
    mask = (encoder_input_tokens > 0)[:, None, None, :]
    if encoder_segment_ids is not None and decoder_segment_ids is not None:
      mask = mask & (decoder_segment_ids[:, None, :, None] ==
                     encoder_segment_ids[:, None, None, :])
    att = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(cfg.head_dim)
    att = jnp.where(mask, att, -1e9)
    att = nn.softmax(att, axis=-1)
    o = jnp.einsum('bhqk,bkhd->bqhd', att, v)
    y = y + _Dense(cfg.emb_dim, ('heads', 'kv', 'embed'), contract_dims=2,
                   name='out')(o)
    h = nn.gelu(_dense(cfg.mlp_dim, ('embed', 'mlp'), 'dec_wi')(y))
    y = y + _dense(cfg.emb_dim, ('mlp', 'embed'), 'dec_wo')(drop(h))
    scale = self.param('final_scale', nn.with_logical_partitioning(
        nn.initializers.ones, ('embed',)), (cfg.emb_dim,))
    y = y * scale
    logits = _dense(cfg.vocab_size, ('embed', 'vocab'), 'logits_dense')(y)
    return logits.astype(jnp.float32)


def tiny_model(config: Optional[TinyConfig] = None, **kwargs):
  from recjax.train import model_api  # pylint: disable=g-import-not-at-top
  return model_api.EncoderDecoderModel(
      TinyEncoderDecoder(config or TinyConfig()), BYTE_VOCAB, BYTE_VOCAB,
      **kwargs)


def random_t5_params(config, seed: int = 0, logits_scale: float = 1.0):
  """Random `recjax.models.t5.Transformer` params of the right tree and shapes,
  without compiling the flax initialisers (~10 s of CPU per config).

  Layer-norm scales are 1 + 0.2 N(0, 1), kernels N(0, 1/fan_in) (the logits
  kernel times `logits_scale`: > 1 makes output distributions far from
  uniform, which decoding tests want), other parameters N(0, 1).
  """
  from recjax import checkpoints  # pylint: disable=g-import-not-at-top
  from recjax.models import t5  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(seed)
  flat = {}
  for name, shape in t5.param_shapes(config).items():
    if name.endswith('/scale'):
      flat[name] = 1 + 0.2 * rng.randn(*shape)
    elif name.endswith('/kernel'):
      scale = logits_scale if 'logits_dense' in name else 1.0
      flat[name] = scale * rng.randn(*shape) / np.sqrt(shape[0])
    else:
      flat[name] = rng.randn(*shape)
  return checkpoints.unflatten_params(
      {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()})


def checkpoint_params_flat(model_dir) -> dict:
  """The latest recjax checkpoint's params under `model_dir`, flat
  ('a/b/c' -> numpy), restored on one device: what end-to-end tests compare
  between runs."""
  import jax  # pylint: disable=g-import-not-at-top
  from recjax import checkpoints  # pylint: disable=g-import-not-at-top
  from recjax.train import checkpointing  # pylint: disable=g-import-not-at-top
  meta = checkpointing.state_metadata(
      checkpointing.latest_state_dir(str(model_dir)))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
      meta['params'])
  params = checkpointing.restore_params_from_recjax_dir(str(model_dir),
                                                        abstract)
  return checkpoints.flatten_params(jax.device_get(params))


@contextlib.contextmanager
def gin_config(files, bindings):
  """The gin config of one job (files + bindings, as the CLI parses them),
  cleared afterwards."""
  import gin  # pylint: disable=g-import-not-at-top
  from recjax.train import gin_utils  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin_utils.parse_gin_flags(files, bindings)
    yield
  finally:
    gin.clear_config()

