"""Model-facing inference: decode, score batches, score candidate lists.

These functions connect a model to the model-independent decoders in
`recjax.infer.decoding`, for both architectures:

* `EncoderDecoderModel` (module with T5X's `encode` / `decode` methods and a
  KV cache, `recjax.models.t5.Transformer`): the prompt is encoded once and
  the decoder generates from the start token.
* `DecoderOnlyModel` (`recjax.models.decoder_only.DecoderOnlyTransformer`):
  the prompt `[start] + inputs` is left-aligned (rows end in the same
  column, left padding masked, rotary positions counted from each row's
  first real token), prefilled into the KV cache in one call, and decoding
  continues from there; the first generated token comes from the prefill's
  last position. Scoring runs the prompt and the target as one sequence, so
  its numbers are the ones the training loss sees.

Both take the same batch: the prompt tokens (inputs + EOS, right-padded)
under 'encoder_input_tokens', as `recjax.infer.evaluation.encode_batch`
builds them. Everything is jittable: e.g.

  fn = jax.jit(functools.partial(predict_batch, model, decode_method='beam',
                                 num_decodes=20, max_decode_length=8))
  tokens, scores = fn(params, batch, rng=rng, constraint=trie.constraint())

with params / batch / rng / constraint traced and the rest static.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from recjax.infer import decoding

Array = jax.Array
PyTree = Any
DECODE_METHODS = ('beam', 'greedy', 'sample')


def prompt_embeddings(model: Any, params: PyTree, tokens: Array,
                      slot_items: Optional[Array]) -> Tuple[Array, dict]:
  """(tokens for the LM, its soft-token kwargs) for prompt tokens.

  A model with item slots (`recjax.train.slot_model.SlotModel`) fills the
  slot positions of `tokens` from `slot_items` (the batch's 'slot_items');
  any other model, or a batch without slots, passes the tokens through.
  """
  fill = getattr(model, 'input_embeddings', None)
  if fill is None or slot_items is None:
    return tokens, {}
  tokens, embeddings, mask = fill(params, tokens, jnp.asarray(slot_items))
  return tokens, {'input_embeddings': embeddings, 'embedding_mask': mask}


def _encode(model, params, encoder_input_tokens, slot_items=None):
  tokens, soft = prompt_embeddings(model, params, encoder_input_tokens,
                                   slot_items)
  return model.module.apply({'params': params}, tokens, enable_dropout=False,
                            method='encode', **soft), tokens


def predict_batch(model: Any, params: PyTree, batch: Mapping[str, Array], *,
                  rng: Optional[Array] = None, decode_method: str = 'beam',
                  num_decodes: int = 1, alpha: float = 0.6,
                  temperature: float = 1.0, topk: int = 0,
                  max_decode_length: int = 32, constraint: Any = None
                 ) -> Tuple[Array, Array]:
  """Decodes `num_decodes` outputs per example, best first.

  Args:
    model: an EncoderDecoderModel or a DecoderOnlyModel.
    params: model parameters.
    batch: needs the prompts, 'encoder_input_tokens' [B, L] (right-padded),
      and with item slots their 'slot_items' [B, S]; other keys are ignored.
    rng: PRNG key, needed for 'sample': one for the batch, or one per
      example (see `decoding.temperature_sample`).
    decode_method: 'beam' (num_decodes beams, scores length-penalised with
      `alpha`), 'greedy' (num_decodes must be 1) or 'sample' (num_decodes
      independent samples at `temperature`, optionally `topk`).
    num_decodes: outputs per example.
    alpha: beam-search length-penalty exponent.
    temperature: sampling temperature (0 = greedy).
    topk: sample among the k most likely tokens (0 = all).
    max_decode_length: generated positions.
    constraint: optional decoding constraint (e.g. `CatalogueTrie.constraint()`).

  Returns:
    (tokens int32 [B, num_decodes, max_decode_length]: EOS included, zeros
     after it; scores float32 [B, num_decodes]: beam scores, or summed
     log-probabilities for greedy / sample), sorted best first.
  """
  if decode_method not in DECODE_METHODS:
    raise ValueError(f'decode_method={decode_method!r}: expected one of '
                     f'{DECODE_METHODS}.')
  if decode_method == 'greedy' and num_decodes != 1:
    raise ValueError(f'Greedy decoding gives one output; got num_decodes='
                     f'{num_decodes}.')
  prompts = jnp.asarray(batch['encoder_input_tokens'])
  slot_items = batch.get('slot_items')
  initial_logits = None
  if is_decoder_only(model):
    cache, tokens_to_logits, initial_logits = _decoder_only_prefill(
        model, params, prompts, max_decode_length, slot_items)
  else:
    cache, tokens_to_logits = _encoder_decoder_start(
        model, params, prompts, num_decodes, max_decode_length, slot_items)
  b = prompts.shape[0]
  eos_id = _eos_id(model)
  if decode_method == 'beam':
    return decoding.beam_search(
        cache, tokens_to_logits, batch_size=b, num_beams=num_decodes,
        max_decode_len=max_decode_length, eos_id=eos_id, alpha=alpha,
        constraint=constraint, initial_logits=initial_logits)
  if decode_method == 'greedy':
    temperature = 0.0
  seqs, log_probs = decoding.temperature_sample(
      cache, tokens_to_logits, batch_size=b, max_decode_len=max_decode_length,
      eos_id=eos_id, rng=rng, temperature=temperature, topk=topk,
      num_decodes=num_decodes, constraint=constraint,
      initial_logits=initial_logits)
  if num_decodes > 1:
    order = jnp.argsort(-log_probs, axis=1)
    seqs = jnp.take_along_axis(seqs, order[:, :, None], axis=1)
    log_probs = jnp.take_along_axis(log_probs, order, axis=1)
  return seqs, log_probs


def is_decoder_only(model: Any) -> bool:
  return getattr(model, 'architecture', '') == 'decoder_only'


def _encoder_decoder_start(model, params, enc_tokens, num_decodes,
                           max_decode_length, slot_items=None):
  """(zero cache, step fn) of an encoder-decoder model for these prompts."""
  module = model.module
  b = enc_tokens.shape[0]
  encoded, enc_tokens = _encode(model, params, enc_tokens, slot_items)
  # The encoding is not part of the decoding cache: every decode of an example
  # shares it, so it is repeated once here and never reordered by beams.
  encoded_rep = jnp.repeat(encoded, num_decodes, axis=0)
  enc_rep = jnp.repeat(enc_tokens, num_decodes, axis=0)
  decode_fn = lambda variables, *args, **kw: module.apply(
      variables, *args, enable_dropout=False, decode=True, mutable=['cache'],
      method='decode', **kw)
  dummy = jnp.zeros((b, max_decode_length), jnp.int32)
  shapes = jax.eval_shape(decode_fn, {'params': params}, encoded, enc_tokens,
                          dummy, dummy)[1]['cache']
  cache = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

  def tokens_to_logits(tok, cache):
    logits, state = decode_fn({'params': params, 'cache': cache}, encoded_rep,
                              enc_rep, tok, tok,
                              max_decode_length=max_decode_length)
    return logits[:, -1, :].astype(jnp.float32), state['cache']

  return cache, tokens_to_logits


def left_align(inputs: Array, start_id: int = 0
              ) -> Tuple[Array, Array, Array]:
  """Right-padded prompts [B, L] -> `[start] + inputs` ending in column L.

  Returns (tokens [B, L+1], valid [B, L+1] int32: 1 on real positions,
  positions [B, L+1]: 0 at the start token, counting up; 0 on padding).
  Padding is token 0 (prompt tokens are never 0: SeqIO reserves it).
  """
  l = inputs.shape[1]
  n = jnp.sum(inputs > 0, axis=1, keepdims=True)
  k = jnp.arange(l + 1)[None, :] - (l - n) - 1   # index into inputs
  gathered = jnp.take_along_axis(inputs, jnp.clip(k, 0, l - 1), axis=1)
  tokens = jnp.where(k >= 0, gathered, jnp.where(k == -1, start_id, 0))
  valid = (k >= -1).astype(jnp.int32)
  positions = jnp.where(k >= -1, k + 1, 0).astype(jnp.int32)
  return tokens.astype(jnp.int32), valid, positions


def _decoder_only_prefill(model, params, inputs, max_decode_length,
                          slot_items=None):
  """(cache, step fn, first logits) of a decoder-only model after
  prefilling the prompts.

  The cache holds the model's KV cache (prompt columns + max_decode_length
  slots) and each row's next rotary position. The prefill's last logits are
  the decoders' `initial_logits`: their first step uses them instead of
  running the model (its fed start token is already in the prompt).
  """
  module = model.module
  tokens, valid, positions = left_align(inputs, model.bos_id)
  tokens, soft = prompt_embeddings(model, params, tokens, slot_items)
  b, p = tokens.shape
  total = p + max_decode_length
  causal = valid if model.inputs_bidirectional_attention else None

  def apply(variables, toks, **kw):
    return module.apply(variables, toks, enable_dropout=False, decode=True,
                        mutable=['cache'], **kw)

  full = jnp.zeros((b, total), jnp.int32)
  shapes = jax.eval_shape(
      lambda: apply({'params': params}, full, decoder_segment_ids=full,
                    decoder_positions=full, max_decode_length=total))[1]
  lm_cache = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype),
                                    shapes['cache'])
  logits, state = apply({'params': params, 'cache': lm_cache}, tokens,
                        decoder_segment_ids=valid, decoder_positions=positions,
                        decoder_causal_attention=causal, prefill=True,
                        max_decode_length=total, logits_from=p - 1, **soft)
  cache = {'lm': state['cache'], 'next_position': positions[:, -1] + 1}

  def tokens_to_logits(tok, cache):
    out, st = apply({'params': params, 'cache': cache['lm']}, tok,
                    decoder_positions=cache['next_position'][:, None],
                    max_decode_length=total)
    return out[:, -1, :].astype(jnp.float32), {
        'lm': st['cache'], 'next_position': cache['next_position'] + 1}

  return cache, tokens_to_logits, logits[:, -1, :]


def _eos_id(model: Any) -> int:
  vocab = getattr(model, 'output_vocabulary', None)
  eos = getattr(vocab, 'eos_id', None) if vocab is not None else None
  return 1 if eos is None else int(eos)


def _token_log_likelihood(logits: Array, targets: Array, weights: Array
                         ) -> Array:
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  tok = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32),
                            axis=-1)[..., 0]
  return jnp.sum(tok * weights, axis=-1)


def score_batch(model: Any, params: PyTree, batch: Mapping[str, Array]
               ) -> Array:
  """Summed target log-likelihood per row [B] (teacher forcing, no dropout).

  Weights are `decoder_loss_weights` if present, else target > 0. A
  decoder-only model reads the prompt from 'encoder_input_tokens' and the
  targets from 'decoder_target_tokens' (the evaluation batch's layout).
  """
  targets = batch['decoder_target_tokens']
  if is_decoder_only(model):
    logits = _decoder_only_target_logits(
        model, params, batch['encoder_input_tokens'], targets,
        batch.get('slot_items'))
  else:
    logits = _encoder_decoder_logits(model, params, batch)
  if 'decoder_loss_weights' in batch:
    weights = batch['decoder_loss_weights'].astype(jnp.float32)
  else:
    weights = (targets > 0).astype(jnp.float32)
  return _token_log_likelihood(logits, targets, weights)


def _decoder_only_target_logits(model, params, inputs, targets,
                                slot_items=None):
  """Logits [B, T, V] predicting `targets` [B, T] after the prompts [B, L]."""
  tokens, valid, positions = left_align(jnp.asarray(inputs), model.bos_id)
  targets = jnp.asarray(targets, jnp.int32)
  p, t = tokens.shape[1], targets.shape[1]
  seq = jnp.concatenate([tokens, targets[:, :-1]], axis=1)
  seq, soft = prompt_embeddings(model, params, seq, slot_items)
  segments = jnp.concatenate(
      [valid, (targets[:, :-1] > 0).astype(jnp.int32)], axis=1)
  target_positions = positions[:, -1:] + 1 + jnp.arange(t - 1)[None, :]
  seq_positions = jnp.concatenate([positions, target_positions], axis=1)
  causal = None
  if model.inputs_bidirectional_attention:
    causal = jnp.concatenate([valid, jnp.zeros_like(targets[:, :-1])], axis=1)
  return model.module.apply(
      {'params': params}, seq, decoder_segment_ids=segments,
      decoder_positions=seq_positions, decoder_causal_attention=causal,
      enable_dropout=False, logits_from=p - 1, **soft)


def _encoder_decoder_logits(model, params, batch):
  targets = batch['decoder_target_tokens']
  tokens, soft = prompt_embeddings(model, params, batch['encoder_input_tokens'],
                                   batch.get('slot_items'))
  return model.module.apply(
      {'params': params}, tokens,
      batch['decoder_input_tokens'], targets,
      encoder_segment_ids=batch.get('encoder_segment_ids'),
      decoder_segment_ids=batch.get('decoder_segment_ids'),
      encoder_positions=batch.get('encoder_positions'),
      decoder_positions=batch.get('decoder_positions'),
      enable_dropout=False, **soft)


def score_candidates(model: Any, params: PyTree, encoder_input_tokens: Array,
                     candidate_targets: Array,
                     slot_items: Optional[Array] = None, *,
                     share_prompt: bool = True) -> Array:
  """Log-likelihood [B, C] of C candidate targets per example.

  Reads each prompt once and scores all its candidates from it (ranking
  candidate lists, or the rating strings "1".."5"): FLAN-T5 encodes it once
  and runs the candidates through the decoder; a decoder-only model prefills
  its KV cache once and continues every candidate from that cache, token by
  token, one candidate column of the batch at a time (memory: one prompt's
  cache, whatever the number of candidates).

  Args:
    model: an EncoderDecoderModel or DecoderOnlyModel.
    params: model parameters.
    encoder_input_tokens: [B, L].
    candidate_targets: [B, C, T], EOS included, zero padded.
    slot_items: [B, S], the prompts' slotted items (models with item slots).
    share_prompt: False runs a decoder-only model's whole prompt again with
      every candidate (the reference the tests and
      benchmarks/candidate_scoring.py compare with).
  """
  module = model.module
  b, c, t = candidate_targets.shape
  targets = candidate_targets.reshape(b * c, t).astype(jnp.int32)
  if is_decoder_only(model):
    columns = jnp.swapaxes(candidate_targets.astype(jnp.int32), 0, 1)
    if share_prompt:
      cache, step, first = _decoder_only_prefill(
          model, params, encoder_input_tokens, t, slot_items)

      def one_column(column):  # [B, T]: its tokens after the prompt's cache
        def feed(cache, tok):
          logits, cache = step(tok[:, None], cache)
          return cache, logits
        _, rest = jax.lax.scan(feed, cache, jnp.swapaxes(column[:, :-1], 0, 1))
        logits = jnp.concatenate([first[:, None], jnp.swapaxes(rest, 0, 1)],
                                 axis=1)
        return _token_log_likelihood(logits, column,
                                     (column > 0).astype(jnp.float32))
    else:
      def one_column(column):  # [B, T]: the prompt again, then the column
        logits = _decoder_only_target_logits(model, params,
                                             encoder_input_tokens, column,
                                             slot_items)
        return _token_log_likelihood(logits, column,
                                     (column > 0).astype(jnp.float32))
    return jnp.swapaxes(jax.lax.map(one_column, columns), 0, 1)
  encoded, encoder_input_tokens = _encode(model, params, encoder_input_tokens,
                                         slot_items)
  inputs = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))  # shift right, start 0
  logits = module.apply(
      {'params': params}, jnp.repeat(encoded, c, axis=0),
      jnp.repeat(encoder_input_tokens, c, axis=0), inputs, targets,
      enable_dropout=False, method='decode')
  weights = (targets > 0).astype(jnp.float32)
  return _token_log_likelihood(logits, targets, weights).reshape(b, c)


def decode_tokens(vocabulary: Any, tokens: Any) -> list:
  """Decoded strings of token rows [..., T], cut at the first EOS.

  Padding (0) is dropped. [B, T] gives list[str] (a single row [T] a
  one-element list); more leading dims give nested lists of that shape.
  """
  tokens = np.asarray(tokens)
  eos = vocabulary.eos_id if vocabulary.eos_id is not None else 1

  def one(row):
    row = [int(x) for x in row]
    if eos in row:
      row = row[:row.index(eos)]
    return vocabulary.decode([x for x in row if x != 0])

  if tokens.ndim == 1:
    return [one(tokens)]
  if tokens.ndim == 2:
    return [one(r) for r in tokens]
  return [decode_tokens(vocabulary, r) for r in tokens]
