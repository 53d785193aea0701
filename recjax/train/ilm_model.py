"""ILM phase 1: align the item encoder with language (BLIP-2's stage 1).

`ILMAlignmentModel` trains `recjax.models.item_encoder.ItemEncoder` alone, on
the `<dataset>_item_text` task (one record per item: its text as `inputs`,
and `slot_items` = [item + 1, co-occurring item + 1 or 0]), with four losses,
each weighted by gin and logged on its own:

* item-text contrastive (ITC): in-batch InfoNCE between the item's query
  outputs (max over the K queries) and the text's [CLS];
* item-text matching (ITM): binary, on the true pair and on hard negatives
  sampled from the contrastive similarities (an item with another's text, a
  text with another item);
* item-grounded text generation (ITG): the text branch decodes the item's
  text with the queries as prefix (BLIP-2's mask);
* item-item contrastive (IIC): items that follow each other in users'
  sequences are positives (in-batch InfoNCE over the mean query embedding).

Its parameters are `{'item_encoder': ...}`, the subtree ILM's phase 2
(`SlotModel(params_key='item_encoder')`) restores from this run's directory.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import seqio
import tensorflow as tf

from recjax import slots
from recjax.train import contrastive_losses
from recjax.train import model_api
from recjax.train import slot_model

_Spec = seqio.FeatureConverter.FeatureSpec
PARAMS_KEY = 'item_encoder'
LOSS_NAMES = ('itc', 'itm', 'itg', 'iic')


class ItemTextFeatureConverter(seqio.FeatureConverter):
  """`inputs` (item text) and `slot_items` -> 'text_tokens', 'slot_items'.

  Items are whole examples (no packing): every row is one item.
  """

  TASK_FEATURES = {'inputs': _Spec(dtype=tf.int32),
                   'targets': _Spec(dtype=tf.int32),  # read, not used
                   slots.SLOT_FEATURE: _Spec(dtype=tf.int32)}
  MODEL_FEATURES = {'text_tokens': _Spec(dtype=tf.int32),
                    slots.SLOT_FEATURE: _Spec(dtype=tf.int32)}
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack: bool = False, **kwargs):
    del pack  # one item per row
    super().__init__(pack=False, **kwargs)

  def _convert_features(self, ds, task_feature_lengths):
    lengths = {'inputs': task_feature_lengths['inputs'],
               slots.SLOT_FEATURE: 2}
    ds = self._pack_or_pad(ds, lengths)
    return ds.map(lambda ex: {'text_tokens': ex['inputs'],
                              slots.SLOT_FEATURE: ex[slots.SLOT_FEATURE]},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    return {'text_tokens': task_feature_lengths['inputs'],
            slots.SLOT_FEATURE: 2}


@gin.configurable(module='models')
class ILMAlignmentModel(model_api.BaseModel):
  """The item encoder and its phase-1 losses (see the module docstring).

  Args:
    module: an `ItemEncoder`.
    temperature: of the contrastive losses (BLIP-2 learns it from 0.07).
    itc_weight, itm_weight, itg_weight, iic_weight: loss weights (0 skips).
    label_smoothing: of ITC and ITG (BLIP-2: 0.1).
    bert_dir: a Hugging Face BERT folder whose weights initialise the text
      branch of a fresh encoder (`pretrained_params`; the encoder's config
      must come from the same folder: `item_encoder(bert_dir=...)`).
  """

  feature_converter_cls = ItemTextFeatureConverter
  architecture = 'item_encoder'

  def __init__(self, module: nn.Module = gin.REQUIRED, *,
               bert_dir: Optional[str] = None,
               temperature: float = 0.07, itc_weight: float = 1.0,
               itm_weight: float = 1.0, itg_weight: float = 1.0,
               iic_weight: float = 1.0, label_smoothing: float = 0.0,
               input_vocabulary: Optional[seqio.Vocabulary] = None,
               output_vocabulary: Optional[seqio.Vocabulary] = None):
    super().__init__(module, input_vocabulary, output_vocabulary)
    if temperature <= 0:
      raise ValueError(f'temperature must be > 0, got {temperature}')
    self.temperature = float(temperature)
    self.weights = dict(itc=itc_weight, itm=itm_weight, itg=itg_weight,
                        iic=iic_weight)
    self.label_smoothing = float(label_smoothing)
    self.bert_dir = bert_dir or None

  @property
  def frozen_param_patterns(self) -> tuple:
    """A recommender's CF table is an input: never trained (no opt state)."""
    return slot_model.frozen_cf_table_patterns(self.module, PARAMS_KEY)

  def pretrained_params(self, params):
    """A fresh init's params with the BERT text branch loaded (host-side);
    the trainer calls it when it starts from scratch."""
    if not self.bert_dir:
      return params
    from recjax.checkpoints import hf_bert  # pylint: disable=g-import-not-at-top
    params = dict(params)
    params[PARAMS_KEY] = hf_bert.load_bert_into(params[PARAMS_KEY],
                                                self.bert_dir)
    return params

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    del input_types
    t = input_shapes.get('text_tokens', (1, 4))[-1]
    variables = self.module.init(rng, jnp.zeros((1,), jnp.int32),
                                 jnp.ones((1, t), jnp.int32))
    return {'params': {PARAMS_KEY: variables['params']}}

  def loss_normalizer(self, batch):
    return None

  def _apply(self, params, *args, method, rngs=None):
    return self.module.apply({'params': params[PARAMS_KEY]}, *args,
                             method=method, rngs=rngs)

  def losses(self, params, batch, rng: jax.Array) -> dict:
    """Each phase-1 loss (unweighted) and the example count."""
    text = batch['text_tokens']
    slot_items = batch[slots.SLOT_FEATURE]
    items = jnp.maximum(slot_items[:, 0] - 1, 0)
    valid = slot_items[:, 0] > 0
    b = text.shape[0]
    item_emb, text_emb = self._apply(params, items, text,
                                     method='itc_embeddings')
    itc, sim_i2t, sim_t2i = contrastive_losses.itc_loss(
        item_emb, text_emb, self.temperature, item_ids=items, valid=valid,
        label_smoothing=self.label_smoothing)
    out = {'itc': itc}
    if self.weights['itm']:
      neg_text, neg_item = contrastive_losses.hard_negatives(
          sim_i2t, sim_t2i, rng, item_ids=items, valid=valid)
      rows = jnp.arange(b)
      pos_logits = self._apply(params, items, text, method='itm_logits')
      neg_logits = jnp.concatenate([
          self._apply(params, items, text[neg_text], method='itm_logits'),
          self._apply(params, items[neg_item], text, method='itm_logits')])
      neg_valid = jnp.concatenate([valid & (neg_text != rows),
                                   valid & (neg_item != rows)])
      out['itm'] = contrastive_losses.itm_loss(
          pos_logits, neg_logits, valid=valid, neg_valid=neg_valid)
    if self.weights['itg']:
      logits = self._apply(params, items, text, method='itg_logits')
      weights = (text > 0) & valid[:, None]
      out['itg'] = contrastive_losses.token_lm_loss(
          logits, text, weights.astype(jnp.float32),
          label_smoothing=self.label_smoothing)
    if self.weights['iic']:
      positives = slot_items[:, 1] - 1
      pos_valid = valid & (positives >= 0)
      pos_emb, _ = self._apply(params, jnp.maximum(positives, 0), text,
                               method='itc_embeddings')
      out['iic'] = contrastive_losses.info_nce(
          jnp.mean(item_emb, axis=1), jnp.mean(pos_emb, axis=1),
          self.temperature, anchor_ids=items,
          positive_ids=jnp.maximum(positives, 0), valid=pos_valid,
          symmetric=True)
    return out

  def loss_fn(self, params, batch, dropout_rng, normalizer=None):
    del normalizer  # every loss is a mean over the batch's items
    rng = dropout_rng if dropout_rng is not None else jax.random.PRNGKey(0)
    parts = self.losses(params, batch, rng)
    loss = sum(self.weights[k] * v for k, v in parts.items()
               if self.weights[k])
    n = jnp.sum(batch[slots.SLOT_FEATURE][:, 0] > 0).astype(jnp.float32)
    metrics = {'loss': loss, 'num_examples': n}
    metrics.update({f'{k}_loss': v for k, v in parts.items()})
    return loss, metrics

  def soft_tokens(self, params, items: jax.Array) -> jax.Array:
    """[..., K, lm_emb_dim] soft tokens of 0-based items (phase 2's input)."""
    return self._apply(params, items, method='soft_tokens')


def prepared_dir_of_task(mixture_or_task_name: str):
  """The prepared directory behind a registered task or mixture."""
  from seqio_tasks import registry  # pylint: disable=g-import-not-at-top
  return registry.prepared_dir_of_task(mixture_or_task_name)


def _constant_init(table):
  def init(key, shape, dtype=jnp.float32):
    del key
    if tuple(shape) != table.shape:
      raise ValueError(f'CF table shape {table.shape} != param shape {shape}')
    return jnp.asarray(table, dtype)
  return init


@gin.configurable(module='models')
def item_text_task(mixture_or_task_name: str = gin.REQUIRED,
                   bert_dir: Optional[str] = None) -> str:
  """The phase-1 task to train on: `mixture_or_task_name` itself, or, with
  `bert_dir`, the same items in that BERT's WordPiece vocabulary (registered
  now as `<name>_bert`), so a BERT-initialised text branch reads its own
  tokens."""
  if not bert_dir:
    return mixture_or_task_name
  from recjax import vocabularies  # pylint: disable=g-import-not-at-top
  from seqio_tasks import registry  # pylint: disable=g-import-not-at-top
  return registry.register_item_text(
      prepared_dir_of_task(mixture_or_task_name),
      f'{mixture_or_task_name}_bert', vocabularies.load_vocabulary(bert_dir))


def _refuse_user_slots(prepared_dir, mixture_or_task_name: str) -> None:
  """ILM's encoder has a row per catalogue item and nothing for RSLLM's user
  slot (`slots.USER_SLOT_ITEM`): a directory prepared with one is refused
  instead of looking past the table. Phase 1's item-text task has no user
  slots and passes."""
  from seqio_tasks import registry  # pylint: disable=g-import-not-at-top
  if mixture_or_task_name.endswith('_' + registry.ITEM_TEXT_TASK):
    return
  manifest = registry.read_manifest(prepared_dir) or {}
  if manifest.get('config', {}).get('user_slot'):
    raise ValueError(
        f'{mixture_or_task_name}: {prepared_dir} was prepared with '
        '--prompt=user_slot=true (RSLLM\'s user slot), which ILM\'s item '
        'encoder cannot fill; prepare a directory for ILM without it '
        '(recjax prepare --prompt=item_slots=append).')


@gin.configurable(module='models')
def item_encoder(config=gin.REQUIRED, *, mixture_or_task_name: str =
                 gin.REQUIRED, cf_embeddings_dir: Optional[str] = None,
                 bert_dir: Optional[str] = None):
  """The ILM item encoder for the catalogue behind `mixture_or_task_name`.

  Args:
    config: an `ItemEncoderConfig`; num_items, text_vocab_size (and cf_dim,
      with `cf_embeddings_dir`) are filled in from the data.
    mixture_or_task_name: a registered task or mixture of the prepared
      directory (phase 1: `<dataset>_item_text`; phase 2: its slot tasks).
    cf_embeddings_dir: a `recjax baseline` output directory (BPR-MF or
      SASRec) whose item embeddings become the collaborative features
      (frozen by the run gins); None = a learned ID table of `cf_dim`.
      Embeddings of another catalogue are refused (item-id checksum).
    bert_dir: a Hugging Face BERT folder (e.g. `hf_bert.minilm_dir()`): the
      text branch's sizes and vocabulary come from it (its weights are loaded
      by `ILMAlignmentModel(bert_dir=...)` in phase 1).
  """
  import dataclasses  # pylint: disable=g-import-not-at-top
  from recjax.data.prepared import PreparedData  # pylint: disable=g-import-not-at-top
  from recjax.models import item_encoder as item_encoder_lib  # pylint: disable=g-import-not-at-top
  prepared_dir = prepared_dir_of_task(mixture_or_task_name)
  _refuse_user_slots(prepared_dir, mixture_or_task_name)
  data = PreparedData.load(prepared_dir)
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  vocab = provider.output_features['inputs'].vocabulary
  text_vocab = int(-(-vocab.vocab_size // 128) * 128)
  changes = dict(num_items=data.num_items, text_vocab_size=text_vocab)
  cf_init = None
  if cf_embeddings_dir:
    from recjax.baselines import cli as baselines_cli  # pylint: disable=g-import-not-at-top
    table = baselines_cli.load_embeddings(cf_embeddings_dir,
                                          data)['item_embeddings']
    changes['cf_dim'] = int(table.shape[1])
    changes['freeze_cf_table'] = True
    cf_init = _constant_init(table)
  if bert_dir:
    from recjax.checkpoints import hf_bert  # pylint: disable=g-import-not-at-top
    keep = ('num_query_tokens', 'cf_dim', 'lm_emb_dim', 'contrastive_dim',
            'cross_attention_freq', 'normalize_cf_features', 'dtype')
    changes.pop('text_vocab_size')
    config = hf_bert.item_encoder_config_from_bert(
        bert_dir, **{**{k: getattr(config, k) for k in keep}, **changes})
  else:
    config = dataclasses.replace(config, **changes)
  return item_encoder_lib.ItemEncoder(config=config, cf_table_init=cf_init,
                                     catalogue=str(prepared_dir))
