"""The model protocol the trainer trains (T5X's `BaseModel` shape).

A model wraps a Flax module with its vocabularies, the SeqIO feature converter
that builds its batches, and the loss. `recjax.train` never knows what the
module computes beyond "logits over the output vocabulary".
"""
from __future__ import annotations

import abc
from typing import Any, Mapping, Optional, Tuple, Union

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from recjax.train import losses

Array = jax.Array
Batch = Mapping[str, Array]
Metrics = Mapping[str, Array]
PyTree = Any

# Metric keys whose values are additive over microbatches (the trainer sums
# them); derived metrics are computed from these by `summarize_metrics`.
ADDITIVE_METRICS = ('loss', 'z_loss', 'cross_ent_loss_sum', 'z_loss_sum',
                    'weight_sum',
                    'num_correct', 'num_tokens', 'num_examples')


class BaseModel(abc.ABC):
  """What the trainer needs from a model."""

  feature_converter_cls: type

  def __init__(self, module: nn.Module,
               input_vocabulary: Optional[seqio.Vocabulary],
               output_vocabulary: Optional[seqio.Vocabulary]):
    self.module = module
    self.input_vocabulary = input_vocabulary
    self.output_vocabulary = output_vocabulary

  @abc.abstractmethod
  def get_initial_variables(self, rng: Array,
                            input_shapes: Mapping[str, Tuple[int, ...]],
                            input_types: Optional[Mapping[str, Any]] = None
                           ) -> PyTree:
    """Variables (boxed with logical axis names) for batches of these shapes."""

  @abc.abstractmethod
  def loss_fn(self, params: PyTree, batch: Batch, dropout_rng: Optional[Array],
              normalizer: Optional[Array] = None) -> Tuple[Array, Metrics]:
    """(scalar loss to differentiate, additive metrics)."""

  @abc.abstractmethod
  def loss_normalizer(self, batch: Batch) -> Optional[Array]:
    """Divisor of the summed token loss for this (full) batch."""

  def eval_fn(self, params: PyTree, batch: Batch) -> Tuple[Array, Metrics]:
    """Loss and metrics without dropout."""
    return self.loss_fn(params, batch, dropout_rng=None)


@gin.configurable(module='models')
class EncoderDecoderModel(BaseModel):
  """T5-style encoder-decoder model on SeqIO's EncDecFeatureConverter batches.

  Args:
    module: Flax module called as T5X's Transformer
      (`encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, ...,
      enable_dropout`) returning float32 logits [B, T, V].
    input_vocabulary, output_vocabulary: SeqIO vocabularies; None means "the
      training task's", filled in by the trainer.
    z_loss: auxiliary log(Z)^2 coefficient (T5X default 1e-4).
    loss_normalizing_factor: how the summed token loss is normalised. Unlike
      T5X (where None means "sum"), None here means the per-token mean over
      real target tokens, which is what 'NUM_REAL_TARGET_TOKENS' also gives; a
      number divides the sum by that constant (T5X's fine-tuning recipe uses
      e.g. 233472 to keep the loss scale independent of the batch).
    label_smoothing: T5X label smoothing.
  """

  feature_converter_cls = seqio.EncDecFeatureConverter

  def __init__(self, module: nn.Module,
               input_vocabulary: Optional[seqio.Vocabulary] = None,
               output_vocabulary: Optional[seqio.Vocabulary] = None,
               z_loss: float = 1e-4,
               loss_normalizing_factor: Optional[Union[float, str]] = None,
               label_smoothing: float = 0.0):
    super().__init__(module, input_vocabulary, output_vocabulary)
    if isinstance(loss_normalizing_factor, str) and (
        loss_normalizing_factor != losses.NUM_REAL_TARGET_TOKENS):
      raise ValueError(f'Unsupported loss_normalizing_factor '
                       f'{loss_normalizing_factor!r}; use a number, None or '
                       f'{losses.NUM_REAL_TARGET_TOKENS!r}.')
    self.z_loss = z_loss
    self.loss_normalizing_factor = loss_normalizing_factor
    self.label_smoothing = label_smoothing

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    input_types = input_types or {}
    def zeros(key):
      return jnp.ones(input_shapes[key], input_types.get(key, jnp.int32))
    enc = zeros('encoder_input_tokens')
    dec = zeros('decoder_input_tokens')
    tgt = jnp.ones(input_shapes.get('decoder_target_tokens', dec.shape),
                   jnp.int32)
    rngs = {'params': rng, 'dropout': jax.random.fold_in(rng, 1)}
    return self.module.init(rngs, enc, dec, tgt, enable_dropout=False)

  def _compute_logits(self, params, batch, dropout_rng):
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    return self.module.apply(
        {'params': params},
        batch['encoder_input_tokens'],
        batch['decoder_input_tokens'],
        batch['decoder_target_tokens'],
        encoder_segment_ids=batch.get('encoder_segment_ids'),
        decoder_segment_ids=batch.get('decoder_segment_ids'),
        encoder_positions=batch.get('encoder_positions'),
        decoder_positions=batch.get('decoder_positions'),
        enable_dropout=dropout_rng is not None,
        rngs=rngs)

  def _weights(self, batch):
    if 'decoder_loss_weights' in batch:
      return batch['decoder_loss_weights'].astype(jnp.float32)
    return (batch['decoder_target_tokens'] > 0).astype(jnp.float32)

  def loss_normalizer(self, batch):
    lnf = self.loss_normalizing_factor
    if lnf is None or lnf == losses.NUM_REAL_TARGET_TOKENS:
      return jnp.maximum(jnp.sum(self._weights(batch)), 1.0)
    return jnp.asarray(lnf, jnp.float32)

  def loss_fn(self, params, batch, dropout_rng, normalizer=None):
    """Cross entropy (+ z-loss), normalised by `normalizer`.

    `normalizer` defaults to `loss_normalizer(batch)`; the trainer passes the
    full batch's normalizer to every microbatch so that accumulated gradients
    equal the full-batch gradient exactly.
    """
    if normalizer is None:
      normalizer = self.loss_normalizer(batch)
    logits = self._compute_logits(params, batch, dropout_rng)
    logits = logits.astype(jnp.float32)
    targets = batch['decoder_target_tokens']
    weights = self._weights(batch)
    loss, z_loss, weight_sum = losses.compute_weighted_cross_entropy(
        logits, targets, weights, label_smoothing=self.label_smoothing,
        z_loss=self.z_loss, loss_normalizing_factor=normalizer)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    num_tokens = (jnp.sum(batch['encoder_input_tokens'] > 0) +
                  jnp.sum(targets > 0)).astype(jnp.float32)
    if 'decoder_segment_ids' in batch:  # packed: count sequences, not rows
      num_examples = _count_segments(batch['decoder_segment_ids'])
    else:
      num_examples = jnp.asarray(targets.shape[0], jnp.float32)
    metrics = {
        'loss': loss,
        'z_loss': z_loss,
        'cross_ent_loss_sum': (loss - z_loss) * normalizer,
        'z_loss_sum': z_loss * normalizer,
        'weight_sum': weight_sum,
        'num_correct': jnp.sum(correct * weights),
        'num_tokens': num_tokens,
        'num_examples': num_examples,
    }
    return loss, metrics


@gin.configurable(module='models')
def t5_transformer(config: Any = None) -> nn.Module:
  """`recjax.models.t5.Transformer(T5Config())`, with `T5Config.*` from gin."""
  from recjax.models import t5  # pylint: disable=g-import-not-at-top
  return t5.Transformer(config if config is not None else t5.T5Config())


def _count_segments(segment_ids: Array) -> Array:
  """Number of distinct non-zero segments per row, summed (packed examples)."""
  starts = (segment_ids[:, 1:] != segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0)
  return (jnp.sum(starts) + jnp.sum(segment_ids[:, 0] > 0)).astype(jnp.float32)


def summarize_metrics(m: Mapping[str, Any]) -> dict:
  """Derived, human-facing metrics from additive ones (host-side numpy)."""
  m = {k: float(np.asarray(v)) for k, v in m.items()}
  w = max(m.get('weight_sum', 0.0), 1e-9)
  out = dict(m)
  out['cross_ent_loss_per_token'] = m.get('cross_ent_loss_sum', 0.0) / w
  out['z_loss_per_token'] = m.get('z_loss_sum', 0.0) / w
  out['accuracy'] = m.get('num_correct', 0.0) / w
  return out
