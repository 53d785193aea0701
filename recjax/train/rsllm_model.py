"""RSLLM stage 2: the LM reading projected SASRec embeddings, three losses.

`RSLLMModel` is a `SlotModel` whose slot module is
`recjax.models.hybrid.HybridProjector` (params key 'rsllm'): item slots after
each title take the item's projected SASRec embedding, the user slot after the
history takes SASRec's sequence state. Its loss, each term logged on its own:

* next-item prediction: the LM loss on the target (`lm_loss`);
* user-item InfoNCE (`user_item_loss`): the LM's representation of the
  prompt (T5: the encoder output averaged over the prompt; decoder-only: the
  last prompt position's final hidden state), through the projector's
  `user_head`, against the target's text representation (the mean LM input
  embedding of the target tokens), in-batch negatives, rows with the same
  target counted as positives;
* ID-text InfoNCE (`id_text_loss`): each slotted item's projected ID
  embedding (mean of its K vectors) against the mean LM input embedding of
  its title tokens (`item_title_tokens`), symmetric, in-batch negatives, an
  item never its own negative.

The contrastive terms are means over the (micro)batch's rows and items: with
gradient accumulation their negatives are the microbatch's. Batches must be
unpacked (a user slot's history is the rows's slotted items before it).
"""
from __future__ import annotations

from typing import Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

from recjax import slots
from recjax.train import contrastive_losses
from recjax.train import model_api
from recjax.train import slot_model

PARAMS_KEY = 'rsllm'
LOSS_NAMES = ('lm', 'user_item', 'id_text')
# The module whose output is the LM's prompt representation.
_HIDDEN_MODULE = {'encoder_decoder': 'encoder',
                  'decoder_only': 'decoder_norm'}


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of x [B, L, E] over L where mask [B, L] (zeros for empty rows)."""
  m = mask.astype(jnp.float32)[..., None]
  return jnp.sum(x.astype(jnp.float32) * m, 1) / jnp.maximum(jnp.sum(m, 1), 1)


def first_equal_row(rows: jax.Array) -> jax.Array:
  """[B] index of the first row equal to each row of `rows` [B, T]: an id
  under which identical targets count as one item."""
  same = jnp.all(rows[:, None, :] == rows[None, :, :], axis=-1)
  return jnp.argmax(same, axis=1).astype(jnp.int32)


@gin.configurable(module='models')
class RSLLMModel(slot_model.SlotModel):
  """The LM, the hybrid projector and RSLLM's losses (module docstring).

  Args: as `SlotModel` (`slot_module` a `HybridProjector`), plus
    item_titles: [num_items, T] int token ids of each item's title in the
      LM's vocabulary (0-padded; `item_title_tokens`); needed when
      id_text_weight > 0.
    user_item_weight, id_text_weight: weights of the two InfoNCE losses
      (0 skips one: the ablations).
    temperature: of both InfoNCE losses.
  """

  def __init__(self, lm: model_api.TokenLossModel = gin.REQUIRED,
               slot_module=gin.REQUIRED, *, tokens_per_slot: int = 1,
               params_key: str = PARAMS_KEY, placeholder_id: int = 2,
               slot_checkpoint_path: Optional[str] = None,
               item_titles: Optional[np.ndarray] = None,
               user_item_weight: float = 0.1, id_text_weight: float = 0.1,
               temperature: float = 0.07):
    super().__init__(lm, slot_module, slot_method='soft_tokens',
                     tokens_per_slot=tokens_per_slot, params_key=params_key,
                     placeholder_id=placeholder_id,
                     slot_checkpoint_path=slot_checkpoint_path)
    if temperature <= 0:
      raise ValueError(f'temperature must be > 0, got {temperature}')
    if id_text_weight and item_titles is None:
      raise ValueError('RSLLMModel: id_text_weight > 0 needs item_titles '
                       '(gin: models.item_title_tokens)')
    self.item_titles = (None if item_titles is None
                        else np.asarray(item_titles, np.int32))
    self.weights = dict(user_item=float(user_item_weight),
                        id_text=float(id_text_weight))
    self.temperature = float(temperature)
    config = getattr(slot_module, 'config', None)
    if getattr(config, 'tokens_per_slot', self.tokens_per_slot) != (
        self.tokens_per_slot):
      raise ValueError(
          f'The projector makes {config.tokens_per_slot} vectors per slot '
          f'but the prompts hold {self.tokens_per_slot} slot tokens per item '
          '(gin: TOKENS_PER_SLOT sets both).')

  @property
  def frozen_param_patterns(self) -> tuple:
    """SASRec is read, never trained (no gradient, no optimizer state)."""
    from recjax.models import hybrid  # pylint: disable=g-import-not-at-top
    return (f'^{self.params_key}/{hybrid.FROZEN_SUBTREE}/',)

  # -- pieces
  def _slot_apply(self, params, *args, method):
    return self.slot_module.apply({'params': params[self.params_key]}, *args,
                                  method=method)

  def _logits_and_hidden(self, params, batch, dropout_rng, embeddings, mask):
    name = _HIDDEN_MODULE[self.lm.architecture]
    logits, state = self.lm._compute_logits(  # pylint: disable=protected-access
        params, batch, dropout_rng, input_embeddings=embeddings,
        embedding_mask=mask,
        capture_intermediates=lambda mdl, method: (
            method == '__call__' and mdl.name == name),
        mutable=['intermediates'])
    (hidden,) = jax.tree_util.tree_leaves(state['intermediates'])
    return logits, hidden

  def _token_embeddings(self, params, tokens):
    table = params['token_embedder']['embedding']
    return jnp.take(table, tokens, axis=0).astype(jnp.float32)

  def prompt_representation(self, batch, hidden) -> jax.Array:
    """[B, emb]: the LM's state of each row's prompt (module docstring)."""
    if self.lm.architecture == 'encoder_decoder':
      return _masked_mean(hidden, batch['encoder_input_tokens'] > 0)
    answer = self.lm._weights(batch) > 0  # pylint: disable=protected-access
    # The position reading the last prompt token predicts the first answer
    # token: the first position with a loss weight.
    first = jnp.argmax(answer, axis=1)
    return jnp.take_along_axis(hidden, first[:, None, None], axis=1)[:, 0]

  def _target_tokens(self, batch):
    weights = self.lm._weights(batch) > 0  # pylint: disable=protected-access
    return jnp.where(weights, batch['decoder_target_tokens'], 0)

  def user_item_loss(self, params, batch, hidden) -> jax.Array:
    targets = self._target_tokens(batch)
    query = self._slot_apply(params, self.prompt_representation(batch, hidden),
                             method='user_query')
    target = _masked_mean(self._token_embeddings(params, targets), targets > 0)
    ids = first_equal_row(targets)
    return contrastive_losses.info_nce(
        query, target, self.temperature, positive_ids=ids,
        valid=jnp.any(targets > 0, axis=1))

  def id_text_loss(self, params, slot_items) -> jax.Array:
    titles = jnp.asarray(self.item_titles)
    items = slot_items.reshape(-1).astype(jnp.int32)
    valid = (items > 0) & (items <= titles.shape[0])
    index = jnp.where(valid, items - 1, 0)
    id_vec = jnp.mean(self._slot_apply(params, jnp.where(valid, items, 0),
                                       method='soft_tokens'), axis=-2)
    title = jnp.take(titles, index, axis=0)
    text_vec = _masked_mean(self._token_embeddings(params, title), title > 0)
    return contrastive_losses.info_nce(
        id_vec, text_vec, self.temperature, anchor_ids=items,
        positive_ids=items, valid=valid, symmetric=True)

  # -- the loss
  def loss_fn(self, params, batch, dropout_rng, normalizer=None):
    packed = [k for k in ('encoder_segment_ids', 'decoder_segment_ids')
              if k in batch]
    if packed:
      raise ValueError(
          'RSLLMModel needs unpacked batches (a user slot reads its row\'s '
          f'history; the batch has {packed}): set the feature converter\'s '
          'pack=False (gin: PACK = False).')
    slot_items = batch.get(slots.SLOT_FEATURE)
    filled, embeddings, mask = self._filled_batch(params, batch)
    if normalizer is None:
      normalizer = self.lm.loss_normalizer(filled)
    logits, hidden = self._logits_and_hidden(params, filled, dropout_rng,
                                             embeddings, mask)
    lm_loss, metrics = self.lm.token_loss(logits, filled, normalizer)
    parts = {'lm': lm_loss}
    if self.weights['user_item']:
      parts['user_item'] = self.user_item_loss(params, filled, hidden)
    if self.weights['id_text'] and slot_items is not None:
      parts['id_text'] = self.id_text_loss(params, slot_items)
    loss = lm_loss + sum(self.weights[k] * v for k, v in parts.items()
                         if k != 'lm')
    metrics = dict(metrics, loss=loss)
    metrics.update({f'{k}_loss': v for k, v in parts.items()})
    return loss, metrics


@gin.configurable(module='models')
def item_title_tokens(mixture_or_task_name: str = gin.REQUIRED,
                      max_tokens: int = 16) -> np.ndarray:
  """[num_items, max_tokens] int32: each catalogue item's title (its id when
  it has none) in the task's input vocabulary, cut and 0-padded; the text
  side of RSLLM's ID-text InfoNCE."""
  import seqio  # pylint: disable=g-import-not-at-top
  from recjax.data.prepared import read_items  # pylint: disable=g-import-not-at-top
  from recjax.prompts.common import clean_text  # pylint: disable=g-import-not-at-top
  from seqio_tasks import registry  # pylint: disable=g-import-not-at-top
  items = read_items(registry.prepared_dir_of_task(mixture_or_task_name))
  vocab = seqio.get_mixture_or_task(
      mixture_or_task_name).output_features['inputs'].vocabulary
  out = np.zeros((len(items), int(max_tokens)), np.int32)
  for n, item in enumerate(items):
    ids = list(vocab.encode(clean_text(item.get('title')) or item['id']))
    out[n, :len(ids[:max_tokens])] = ids[:max_tokens]
  return out


@gin.configurable(module='models')
def rsllm_projector(config=gin.REQUIRED, *,
                    mixture_or_task_name: str = gin.REQUIRED,
                    sasrec_dir: str = gin.REQUIRED):
  """The `HybridProjector` over the SASRec that `recjax baseline
  --model=sasrec --output=sasrec_dir` trained on the prepared directory
  behind `mixture_or_task_name`; a SASRec of another catalogue (item ids
  differ) is refused, naming both."""
  from recjax.baselines import cli as baselines_cli  # pylint: disable=g-import-not-at-top
  from recjax.data.prepared import read_items  # pylint: disable=g-import-not-at-top
  from recjax.models import hybrid  # pylint: disable=g-import-not-at-top
  from recjax.models.sasrec import SASRecConfig  # pylint: disable=g-import-not-at-top
  from seqio_tasks import registry  # pylint: disable=g-import-not-at-top
  prepared_dir = registry.prepared_dir_of_task(mixture_or_task_name)
  item_ids = [str(it['id']) for it in read_items(prepared_dir)]
  try:
    model_config, values = baselines_cli.load_model(sasrec_dir,
                                                    item_ids=item_ids)
  except ValueError as e:
    raise ValueError(f'RSLLM projector for {prepared_dir}: {e}') from None
  rc = SASRecConfig(**model_config)
  return hybrid.HybridProjector(config=config, recommender_config=rc,
                                recommender_values=lambda: values,
                                catalogue=str(prepared_dir))
