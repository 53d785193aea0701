"""The model protocol the trainer trains (T5X's `BaseModel` shape).

A model wraps a Flax module with its vocabularies, the SeqIO feature converter
that builds its batches, and the loss. `recjax.train` never knows what the
module computes beyond "logits over the output vocabulary".
"""
from __future__ import annotations

import abc
import copy
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
# Target tokens a row held beyond `DecoderOnlyModel.max_target_tokens`: left
# out of its loss, so the trainer stops on any.
DROPPED_TARGET_TOKENS = 'dropped_target_tokens'


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

  def for_feature_lengths(self, task_feature_lengths: Mapping[str, int],
                          pack: bool) -> 'BaseModel':
    """This model for batches of these task lengths (the trainer calls it
    once): a model may bound what it computes by them. Default: itself."""
    del task_feature_lengths, pack
    return self


class TokenLossModel(BaseModel):
  """Shared by both architectures: weighted token cross entropy + z-loss on
  `decoder_target_tokens`.

  Args:
    module: the Flax module (see the subclasses for its call signature),
      returning float32 logits [B, T, V].
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

  architecture: str = ''

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

  @abc.abstractmethod
  def _compute_logits(self, params, batch, dropout_rng, *,
                      input_embeddings=None, embedding_mask=None,
                      **apply_kwargs) -> Array:
    """Teacher-forced logits [B, T, V] for the batch's targets.

    `apply_kwargs` go to the module's `apply` (e.g. `capture_intermediates`
    and `mutable`, which make it return (logits, state)).

    input_embeddings [B, L, emb] (with embedding_mask [B, L]) replace the
    embeddings of the prompt tokens (the encoder's inputs, or the decoder-only
    model's input sequence): soft tokens filled by a `SlotModel`.
    """

  def _num_tokens(self, batch) -> Array:
    return jnp.sum(batch['decoder_target_tokens'] > 0).astype(jnp.float32)

  def _weights(self, batch):
    if 'decoder_loss_weights' in batch:
      return batch['decoder_loss_weights'].astype(jnp.float32)
    return (batch['decoder_target_tokens'] > 0).astype(jnp.float32)

  def loss_normalizer(self, batch):
    lnf = self.loss_normalizing_factor
    if lnf is None or lnf == losses.NUM_REAL_TARGET_TOKENS:
      return jnp.maximum(jnp.sum(self._weights(batch)), 1.0)
    return jnp.asarray(lnf, jnp.float32)

  def loss_fn(self, params, batch, dropout_rng, normalizer=None, *,
              input_embeddings=None, embedding_mask=None):
    """Cross entropy (+ z-loss), normalised by `normalizer`.

    `normalizer` defaults to `loss_normalizer(batch)`; the trainer passes the
    full batch's normalizer to every microbatch so that accumulated gradients
    equal the full-batch gradient exactly. `input_embeddings` /
    `embedding_mask`: see `_compute_logits`.
    """
    if normalizer is None:
      normalizer = self.loss_normalizer(batch)
    logits = self._compute_logits(params, batch, dropout_rng,
                                  input_embeddings=input_embeddings,
                                  embedding_mask=embedding_mask)
    return self.token_loss(logits, batch, normalizer)

  def _logit_index(self, batch) -> Optional[Array]:
    """[B, P] positions whose logits the loss reads, or None for all; the
    same for `_compute_logits` and `token_loss`."""
    del batch
    return None

  def token_loss(self, logits, batch, normalizer):
    """(loss, metrics) of teacher-forced `logits` against the batch's
    targets: `loss_fn` after the forward pass (models adding terms to the
    LM loss call it with their own forward). `logits` are [B, T, V], or
    [B, P, V] at `_logit_index(batch)`'s positions."""
    logits = logits.astype(jnp.float32)
    targets = batch['decoder_target_tokens']
    weights = self._weights(batch)
    index = self._logit_index(batch)
    extra = {}
    if index is not None:
      count = jnp.sum(weights > 0, axis=1)
      extra[DROPPED_TARGET_TOKENS] = jnp.sum(
          jnp.maximum(count - index.shape[1], 0)).astype(jnp.float32)
      targets = jnp.take_along_axis(targets, index, axis=1)
      weights = jnp.take_along_axis(weights, index, axis=1)
    loss, z_loss, weight_sum = losses.compute_weighted_cross_entropy(
        logits, targets, weights, label_smoothing=self.label_smoothing,
        z_loss=self.z_loss, loss_normalizing_factor=normalizer)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
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
        'num_tokens': self._num_tokens(batch),
        'num_examples': num_examples,
        **extra,
    }
    return loss, metrics


@gin.configurable(module='models')
class EncoderDecoderModel(TokenLossModel):
  """T5-style encoder-decoder model on SeqIO's EncDecFeatureConverter batches.

  `module` is called as T5X's Transformer (`encoder_input_tokens,
  decoder_input_tokens, decoder_target_tokens, ..., enable_dropout`); the
  other arguments are `TokenLossModel`'s.
  """

  feature_converter_cls = seqio.EncDecFeatureConverter
  architecture = 'encoder_decoder'

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

  def _compute_logits(self, params, batch, dropout_rng, *,
                      input_embeddings=None, embedding_mask=None,
                      **apply_kwargs):
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
        input_embeddings=input_embeddings,
        embedding_mask=embedding_mask,
        enable_dropout=dropout_rng is not None,
        rngs=rngs, **apply_kwargs)

  def _num_tokens(self, batch):
    return (jnp.sum(batch['encoder_input_tokens'] > 0) +
            jnp.sum(batch['decoder_target_tokens'] > 0)).astype(jnp.float32)


@gin.configurable(module='models')
class DecoderOnlyModel(TokenLossModel):
  """Decoder-only (Llama / Qwen2) prefix LM on SeqIO's PrefixLMFeatureConverter
  batches (T5X's `DecoderOnlyModel`).

  Inputs and targets are concatenated into one sequence (`[0] + inputs +
  targets`, shifted right); the loss covers the targets only
  (`decoder_loss_weights`). With `inputs_bidirectional_attention` the inputs
  attend to each other in both directions (`decoder_causal_attention`, T5X's
  PrefixLM); the default is fully causal, as Hugging Face checkpoints are
  trained.

  The shifted-in start token (0 at position 0 of every sequence) becomes
  `bos_id` when there is one: the given id, else the input vocabulary's
  `bos_id` (a Hugging Face tokenizer's BOS, as its `tokenizer_config.json`
  says). Llama checkpoints expect their BOS first; the embedded SentencePiece
  vocabulary has none and keeps 0.

  Args: as `TokenLossModel`, plus
    inputs_bidirectional_attention: bidirectional attention over the inputs.
    bos_id: start token id; None = the vocabulary's, -1 = always 0.
    max_target_tokens: project to the vocabulary only at each row's first
      `max_target_tokens` loss-weighted positions (the targets), not at every
      prompt position. Unpacked batches get their targets length from the
      trainer (`for_feature_lengths`: exact, nothing can be left out); a
      packed row holds as many targets as its examples do, so for packed
      training set it here (None = every position) and the trainer stops if
      a row ever holds more.
  """

  feature_converter_cls = seqio.PrefixLMFeatureConverter
  architecture = 'decoder_only'

  def __init__(self, module: nn.Module,
               input_vocabulary: Optional[seqio.Vocabulary] = None,
               output_vocabulary: Optional[seqio.Vocabulary] = None,
               z_loss: float = 1e-4,
               loss_normalizing_factor: Optional[Union[float, str]] = None,
               label_smoothing: float = 0.0,
               inputs_bidirectional_attention: bool = False,
               bos_id: Optional[int] = None,
               max_target_tokens: Optional[int] = None):
    super().__init__(module, input_vocabulary, output_vocabulary,
                     z_loss=z_loss,
                     loss_normalizing_factor=loss_normalizing_factor,
                     label_smoothing=label_smoothing)
    self.inputs_bidirectional_attention = inputs_bidirectional_attention
    self._bos_id = bos_id
    if max_target_tokens is not None and int(max_target_tokens) < 1:
      raise ValueError(f'DecoderOnlyModel.max_target_tokens must be >= 1 or '
                       f'None, got {max_target_tokens}.')
    self.max_target_tokens = (None if max_target_tokens is None
                              else int(max_target_tokens))

  def for_feature_lengths(self, task_feature_lengths, pack):
    """Unpacked rows hold one example: at most `targets` target tokens."""
    if pack or self.max_target_tokens is not None or (
        'targets' not in task_feature_lengths):
      return self
    bound = copy.copy(self)
    bound.max_target_tokens = int(task_feature_lengths['targets'])
    return bound

  def _logit_index(self, batch):
    p = self.max_target_tokens
    length = batch['decoder_target_tokens'].shape[-1]
    if p is None or p >= length:
      return None
    # Each row's weighted positions first, in order (a stable sort), then
    # the others: their weight is 0, so padding the bound costs nothing.
    read = self._weights(batch) > 0
    return jnp.argsort(~read, axis=1, stable=True)[:, :p].astype(jnp.int32)

  @property
  def bos_id(self) -> int:
    """The start token fed at position 0 (0 when there is no BOS)."""
    if self._bos_id is not None:
      return max(int(self._bos_id), 0)
    return vocabulary_bos_id(self.input_vocabulary)

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    input_types = input_types or {}
    shape = input_shapes.get('decoder_input_tokens',
                             input_shapes.get('decoder_target_tokens'))
    tokens = jnp.ones(shape, input_types.get('decoder_input_tokens',
                                             jnp.int32))
    rngs = {'params': rng, 'dropout': jax.random.fold_in(rng, 1)}
    return self.module.init(rngs, tokens, tokens, enable_dropout=False)

  def with_start_token(self, tokens: Array,
                       positions: Optional[Array] = None) -> Array:
    """`tokens` with the start token at each sequence's position 0."""
    bos = self.bos_id
    if not bos:
      return tokens
    if positions is None:
      first = jnp.arange(tokens.shape[-1]) == 0
      first = jnp.broadcast_to(first, tokens.shape)
    else:
      first = positions == 0
    return jnp.where(first & (tokens == 0), bos, tokens)

  def _compute_logits(self, params, batch, dropout_rng, *,
                      input_embeddings=None, embedding_mask=None,
                      **apply_kwargs):
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    positions = batch.get('decoder_positions')
    causal = (batch.get('decoder_causal_attention')
              if self.inputs_bidirectional_attention else None)
    # Unpacked rows carry no segment ids: the module then masks the keys
    # whose target is 0 (T5X's convention).
    return self.module.apply(
        {'params': params},
        self.with_start_token(batch['decoder_input_tokens'], positions),
        batch['decoder_target_tokens'],
        decoder_segment_ids=batch.get('decoder_segment_ids'),
        decoder_positions=positions,
        decoder_causal_attention=causal,
        input_embeddings=input_embeddings,
        embedding_mask=embedding_mask,
        enable_dropout=dropout_rng is not None,
        logit_positions=self._logit_index(batch),
        rngs=rngs, **apply_kwargs)


def vocabulary_bos_id(vocabulary: Optional[seqio.Vocabulary]) -> int:
  """A vocabulary's BOS id (Hugging Face tokenizers whose checkpoint expects
  it first, Llama-2's SentencePiece), or 0 when it has none (T5-style
  SentencePiece, Qwen2)."""
  if vocabulary is None or not getattr(vocabulary, 'add_bos', True):
    return 0
  try:
    bos = getattr(vocabulary, 'bos_id', None)
  except NotImplementedError:  # seqio's base Vocabulary (e.g. PassThrough)
    bos = None
  if bos is None and isinstance(vocabulary, seqio.SentencePieceVocabulary):
    try:
      bos = vocabulary.tokenizer.bos_id()
    except Exception:  # pylint: disable=broad-except
      bos = None
  return int(bos) if bos is not None and bos > 0 else 0


@gin.configurable(module='models')
def decoder_only_transformer(config: Any = None) -> nn.Module:
  """`recjax.models.decoder_only.DecoderOnlyTransformer(DecoderOnlyConfig())`."""
  from recjax.models import decoder_only  # pylint: disable=g-import-not-at-top
  return decoder_only.DecoderOnlyTransformer(
      config if config is not None else decoder_only.DecoderOnlyConfig())


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
