"""An LM whose prompts carry item slots filled by a small model (ILM, RSLLM).

`SlotModel` wraps any `TokenLossModel` (FLAN-T5 or decoder-only) with a slot
module: ILM's item encoder (`recjax.models.item_encoder.ItemEncoder`,
method `soft_tokens`) or RSLLM's projector. Both turn the batch's
`slot_items` [B, S] (catalogue index + 1, 0 = padding) into K vectors per
item [B, S, K, emb]; `fill_slots` puts vector n % K of item n // K at the
n-th slot token of each row (`recjax.slots`) and the LM reads them through
its `input_embeddings` entry. The LM never knows who filled its slots, and
the trainer never knows there are any: the parameters are the LM's own tree
plus one extra top-level subtree (`params_key`), which initial checkpoints
of the bare LM leave fresh (`SlotModel.split_params`).
"""
from __future__ import annotations

import copy
import functools
from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import seqio
import tensorflow as tf

from recjax import slots
from recjax.train import model_api

Array = jax.Array
PyTree = Any
_Spec = seqio.FeatureConverter.FeatureSpec
_SLOT = slots.SLOT_FEATURE


def _need_slot_length(task_feature_lengths: Mapping[str, int]) -> None:
  if _SLOT not in task_feature_lengths:
    raise ValueError(
        f"TASK_FEATURE_LENGTHS needs {_SLOT!r} (the most slotted items in one "
        f"example) for a model with item slots; got "
        f"{dict(task_feature_lengths)}.")


class _SlotConverter:
  """What both slot converters add to SeqIO's: `tokens_per_slot`, the
  `slot_items` model feature, and per-example checks, before packing, that
  trimming kept every slot and (given `slot_table`, the slot module's
  `slots.SlotTable`) that every value names a row of the module's table."""

  def __init__(self, *args, tokens_per_slot: int = 1,
               slot_table: Optional[slots.SlotTable] = None, **kwargs):
    super().__init__(*args, **kwargs)
    self.tokens_per_slot = int(tokens_per_slot)
    self.slot_table = slot_table

  def _convert_example(self, features):
    d = dict(super()._convert_example(features))
    d[_SLOT] = features[_SLOT]
    return d

  def _convert_features(self, ds, task_feature_lengths):
    _need_slot_length(task_feature_lengths)
    return super()._convert_features(self._checked(ds), task_feature_lengths)

  def _checked(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    from seqio_tasks import slots as slot_ops  # pylint: disable=g-import-not-at-top
    k = self.tokens_per_slot

    table = self.slot_table
    where = type(self).__name__

    def check(ex):
      checks = [slot_ops.check_slots(ex["inputs"], ex[_SLOT], k, where)]
      if table is not None:
        checks.append(slot_ops.check_slot_range(
            ex[_SLOT], table.num_items, table.user_slot,
            table.refusal(where)))
      with tf.control_dependencies(checks):
        return {key: tf.identity(v) for key, v in ex.items()}

    return ds.map(check, num_parallel_calls=tf.data.AUTOTUNE)


class SlotEncDecFeatureConverter(_SlotConverter, seqio.EncDecFeatureConverter):
  """EncDecFeatureConverter that packs and passes `slot_items` along."""

  TASK_FEATURES = dict(seqio.EncDecFeatureConverter.TASK_FEATURES,
                       **{_SLOT: _Spec(dtype=tf.int32)})
  MODEL_FEATURES = dict(seqio.EncDecFeatureConverter.MODEL_FEATURES,
                        **{_SLOT: _Spec(dtype=tf.int32)})

  def get_model_feature_lengths(self, task_feature_lengths):
    _need_slot_length(task_feature_lengths)
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    lengths[_SLOT] = task_feature_lengths[_SLOT]
    return lengths


class SlotPrefixLMFeatureConverter(_SlotConverter,
                                   seqio.PrefixLMFeatureConverter):
  """PrefixLMFeatureConverter that packs and passes `slot_items` along.

  The slots sit in the inputs part of the concatenated sequence, in order, so
  the model finds them in `decoder_input_tokens` as it would in the inputs.
  """

  TASK_FEATURES = dict(seqio.PrefixLMFeatureConverter.TASK_FEATURES,
                       **{_SLOT: _Spec(dtype=tf.int32)})
  MODEL_FEATURES = dict(seqio.PrefixLMFeatureConverter.MODEL_FEATURES,
                        **{_SLOT: _Spec(dtype=tf.int32)})

  @staticmethod
  def _without_slots(lengths):
    return {k: v for k, v in lengths.items() if k != _SLOT}

  def _concat_and_add_masks(self, features):
    d = dict(super()._concat_and_add_masks(features))
    d[_SLOT] = features[_SLOT]
    return d

  def _concat_task_feature_lengths(self, task_feature_lengths):
    lengths = dict(super()._concat_task_feature_lengths(
        self._without_slots(task_feature_lengths)))
    lengths[_SLOT] = task_feature_lengths[_SLOT]
    return lengths

  def get_model_feature_lengths(self, task_feature_lengths):
    _need_slot_length(task_feature_lengths)
    lengths = dict(super().get_model_feature_lengths(
        self._without_slots(task_feature_lengths)))
    lengths[_SLOT] = task_feature_lengths[_SLOT]
    return lengths


def slot_table_of(module: nn.Module) -> Optional[slots.SlotTable]:
  """The module's `slot_table()` (ILM's encoder, RSLLM's projector); None
  for a module that does not say (no range check)."""
  fn = getattr(module, 'slot_table', None)
  return fn() if callable(fn) else None


_CONVERTERS = {'encoder_decoder': SlotEncDecFeatureConverter,
               'decoder_only': SlotPrefixLMFeatureConverter}


def frozen_cf_table_patterns(module: nn.Module, params_key: str) -> tuple:
  """The pattern freezing an item encoder's CF table when its config says
  the table is an input (`freeze_cf_table`: a recommender's embeddings)."""
  config = getattr(module, 'config', None)
  if getattr(config, 'freeze_cf_table', False):
    return (f'^{params_key}/cf_table/',)
  return ()


def fill_slots(tokens: Array, slot_vectors: Array, slot_items: Array,
               tokens_per_slot: int, placeholder_id: int
              ) -> Tuple[Array, Array, Array]:
  """(tokens with slots -> placeholder_id, input_embeddings, embedding_mask).

  tokens [B, L] hold SLOT_TOKEN_ID at slot positions; slot_vectors
  [B, S, K, E] are the vectors of the row's slot_items [B, S] (0 = padding).
  The n-th slot token of a row takes vector n % K of item n // K; slot tokens
  beyond the row's items (which the feature converter refuses) stay masked.
  """
  b, s, k, e = slot_vectors.shape
  if k != tokens_per_slot:
    raise ValueError(f'The slot module gives {k} vectors per item but the '
                     f'prompts hold {tokens_per_slot} slot tokens per item.')
  is_slot = tokens == slots.SLOT_TOKEN_ID
  occurrence = jnp.cumsum(is_slot.astype(jnp.int32), axis=1) - 1
  index = jnp.clip(occurrence, 0, s * k - 1)
  flat = slot_vectors.reshape(b, s * k, e)
  embeddings = jnp.take_along_axis(flat, index[..., None], axis=1)
  item_present = jnp.take_along_axis(slot_items, index // k, axis=1) > 0
  mask = is_slot & item_present & (occurrence < s * k)
  return (jnp.where(is_slot, placeholder_id, tokens).astype(tokens.dtype),
          embeddings, mask)


@gin.configurable(module='models')
class SlotModel(model_api.BaseModel):
  """`lm` reading soft tokens that `slot_module` makes from `slot_items`.

  Args:
    lm: the language model (`EncoderDecoderModel` or `DecoderOnlyModel`, as
      the model gin builds it); its vocabularies, module and loss are used
      as they are.
    slot_module: a Flax module; `slot_module.apply(..., items, method=
      slot_method)` maps 0-based item indices [B, S] to [B, S, K, emb].
    slot_method: that method's name.
    tokens_per_slot: K, the soft tokens per item (must equal the prompts'
      `slots.tokens_per_slot.value`, the same gin macro in the run gins).
    params_key: the top-level parameter subtree of the slot module.
    placeholder_id: the token id the LM is given at slot positions (its
      embedding is replaced; it only needs to be a real, non-padding id).
    slot_checkpoint_path: a recjax model dir whose params[params_key]
      initialise the slot module when the LM comes from a bare checkpoint
      (ILM: the phase-1 run); None = a fresh init.
  """

  def __init__(self, lm: model_api.TokenLossModel = gin.REQUIRED,
               slot_module: nn.Module = gin.REQUIRED, *,
               slot_method: str = 'soft_tokens', tokens_per_slot: int = 1,
               params_key: str = 'item_encoder',
               placeholder_id: int = 2,
               slot_checkpoint_path: Optional[str] = None):
    # Not BaseModel.__init__: module and vocabularies are the LM's (below).
    self.lm = lm
    self.slot_module = slot_module
    self.slot_method = slot_method
    self.tokens_per_slot = int(tokens_per_slot)
    self.params_key = params_key
    self.placeholder_id = int(placeholder_id)
    self.slot_checkpoint_path = slot_checkpoint_path or None
    lm_width = getattr(getattr(lm.module, 'config', None), 'emb_dim', None)
    slot_width = getattr(getattr(slot_module, 'config', None), 'lm_emb_dim',
                         None)
    if lm_width is not None and slot_width is not None and (
        lm_width != slot_width):
      raise ValueError(
          f'The slot module maps items to width {slot_width} '
          f'({type(slot_module).__name__}.config.lm_emb_dim) but the LM reads '
          f'embeddings of width {lm_width} ({type(lm.module.config).__name__}'
          '.emb_dim); set them equal (gin: LM_EMB_DIM).')
    if lm.architecture not in _CONVERTERS:
      raise ValueError(f'SlotModel: unsupported LM architecture '
                       f'{lm.architecture!r}')
    self.feature_converter_cls = functools.partial(
        _CONVERTERS[lm.architecture], tokens_per_slot=self.tokens_per_slot,
        slot_table=slot_table_of(slot_module))

  def for_feature_lengths(self, task_feature_lengths, pack):
    """The same slot model over its LM bound to these lengths."""
    lm = self.lm.for_feature_lengths(task_feature_lengths, pack)
    if lm is self.lm:
      return self
    bound = copy.copy(self)
    bound.lm = lm
    return bound

  # -- the LM's attributes (the trainer and inference read and set these)
  module = property(lambda self: self.lm.module,
                    lambda self, v: setattr(self.lm, 'module', v))
  input_vocabulary = property(
      lambda self: self.lm.input_vocabulary,
      lambda self, v: setattr(self.lm, 'input_vocabulary', v))
  output_vocabulary = property(
      lambda self: self.lm.output_vocabulary,
      lambda self, v: setattr(self.lm, 'output_vocabulary', v))

  def __getattr__(self, name):  # architecture, bos_id, with_start_token, ...
    if name == 'lm':
      raise AttributeError(name)
    return getattr(self.lm, name)

  @property
  def frozen_param_patterns(self) -> tuple:
    """The slot module's parameters it never trains (e.g. a frozen CF table
    inside an item encoder: `config.freeze_cf_table`)."""
    return frozen_cf_table_patterns(self.slot_module, self.params_key)

  # -- parameters
  def split_params(self, params: PyTree) -> Tuple[PyTree, PyTree]:
    """(the LM's tree, the slot module's subtree)."""
    params = dict(params)
    return params, params.pop(self.params_key)

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    shapes = {k: v for k, v in input_shapes.items() if k != slots.SLOT_FEATURE}
    variables = self.lm.get_initial_variables(rng, shapes, input_types)
    slot_rng = jax.random.fold_in(rng, 7)
    items = jnp.zeros((1, 1), jnp.int32)
    # A module whose method leaves parameters unused (RSLLM's user head)
    # initialises through its __call__.
    method = (None if getattr(self.slot_module, 'init_with_call', False)
              else self.slot_method)
    slot_vars = self.slot_module.init(slot_rng, items, method=method)
    params = dict(variables['params'])
    params[self.params_key] = slot_vars['params']
    return {**variables, 'params': params}

  # -- the fill
  def slot_vectors(self, params: PyTree, slot_items: Array) -> Array:
    """[B, S, K, emb] for slot_items [B, S] (index + 1; 0 = padding).

    The module gets 0-based indices, or the values as they are when it says
    `raw_slot_items` (it tells padding and user slots apart itself)."""
    items = slot_items.astype(jnp.int32)
    if not getattr(self.slot_module, 'raw_slot_items', False):
      items = jnp.maximum(items - 1, 0)
    return self.slot_module.apply({'params': params[self.params_key]}, items,
                                  method=self.slot_method)

  def input_embeddings(self, params: PyTree, tokens: Array,
                       slot_items: Optional[Array]
                      ) -> Tuple[Array, Optional[Array], Optional[Array]]:
    """(LM tokens, input_embeddings, embedding_mask) for prompt tokens."""
    if slot_items is None:
      return tokens, None, None
    return fill_slots(tokens, self.slot_vectors(params, slot_items),
                      slot_items, self.tokens_per_slot, self.placeholder_id)

  def _filled_batch(self, params, batch):
    batch = dict(batch)
    slot_items = batch.pop(slots.SLOT_FEATURE, None)
    key = ('decoder_input_tokens' if self.lm.architecture == 'decoder_only'
           else 'encoder_input_tokens')
    tokens, embeddings, mask = self.input_embeddings(params, batch[key],
                                                     slot_items)
    batch[key] = tokens
    if self.lm.architecture == 'decoder_only':  # inputs are targets too
      t = batch['decoder_target_tokens']
      batch['decoder_target_tokens'] = jnp.where(
          t == slots.SLOT_TOKEN_ID, self.placeholder_id, t)
    return batch, embeddings, mask

  # -- the loss
  def loss_normalizer(self, batch):
    return self.lm.loss_normalizer(batch)

  def loss_fn(self, params, batch, dropout_rng, normalizer=None):
    batch, embeddings, mask = self._filled_batch(params, batch)
    return self.lm.loss_fn(params, batch, dropout_rng, normalizer,
                           input_embeddings=embeddings, embedding_mask=mask)
