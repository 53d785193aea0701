"""Model-facing inference: decode, score batches, score candidate lists.

These functions connect an `EncoderDecoderModel` (whose module has T5X's
`encode` / `decode` methods with a KV cache, `recjax.models.t5.Transformer`)
to the model-independent decoders in `recjax.infer.decoding`. Everything is
jittable: e.g.

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


def _encode(module, params, encoder_input_tokens):
  return module.apply({'params': params}, encoder_input_tokens,
                      enable_dropout=False, method='encode')


def predict_batch(model: Any, params: PyTree, batch: Mapping[str, Array], *,
                  rng: Optional[Array] = None, decode_method: str = 'beam',
                  num_decodes: int = 1, alpha: float = 0.6,
                  temperature: float = 1.0, topk: int = 0,
                  max_decode_length: int = 32, constraint: Any = None
                 ) -> Tuple[Array, Array]:
  """Decodes `num_decodes` outputs per example, best first.

  Args:
    model: an EncoderDecoderModel (`model.module` has encode/decode).
    params: model parameters.
    batch: needs 'encoder_input_tokens' [B, L]; other keys are ignored.
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
  module = model.module
  enc_tokens = jnp.asarray(batch['encoder_input_tokens'])
  b = enc_tokens.shape[0]
  encoded = _encode(module, params, enc_tokens)
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

  eos_id = _eos_id(model)
  if decode_method == 'beam':
    return decoding.beam_search(
        cache, tokens_to_logits, batch_size=b, num_beams=num_decodes,
        max_decode_len=max_decode_length, eos_id=eos_id, alpha=alpha,
        constraint=constraint)
  if decode_method == 'greedy':
    temperature = 0.0
  seqs, log_probs = decoding.temperature_sample(
      cache, tokens_to_logits, batch_size=b, max_decode_len=max_decode_length,
      eos_id=eos_id, rng=rng, temperature=temperature, topk=topk,
      num_decodes=num_decodes, constraint=constraint)
  if num_decodes > 1:
    order = jnp.argsort(-log_probs, axis=1)
    seqs = jnp.take_along_axis(seqs, order[:, :, None], axis=1)
    log_probs = jnp.take_along_axis(log_probs, order, axis=1)
  return seqs, log_probs


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

  Weights are `decoder_loss_weights` if present, else target > 0.
  """
  targets = batch['decoder_target_tokens']
  logits = model.module.apply(
      {'params': params}, batch['encoder_input_tokens'],
      batch['decoder_input_tokens'], targets,
      encoder_segment_ids=batch.get('encoder_segment_ids'),
      decoder_segment_ids=batch.get('decoder_segment_ids'),
      encoder_positions=batch.get('encoder_positions'),
      decoder_positions=batch.get('decoder_positions'),
      enable_dropout=False)
  if 'decoder_loss_weights' in batch:
    weights = batch['decoder_loss_weights'].astype(jnp.float32)
  else:
    weights = (targets > 0).astype(jnp.float32)
  return _token_log_likelihood(logits, targets, weights)


def score_candidates(model: Any, params: PyTree, encoder_input_tokens: Array,
                     candidate_targets: Array) -> Array:
  """Log-likelihood [B, C] of C candidate targets per example.

  Encodes each example once and reuses the encoding for all its candidates
  (ranking candidate lists, or the rating strings "1".."5").

  Args:
    model: an EncoderDecoderModel.
    params: model parameters.
    encoder_input_tokens: [B, L].
    candidate_targets: [B, C, T], EOS included, zero padded.
  """
  module = model.module
  b, c, t = candidate_targets.shape
  encoded = _encode(module, params, encoder_input_tokens)
  targets = candidate_targets.reshape(b * c, t).astype(jnp.int32)
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
