"""SeqIO side of the slot mechanism (`recjax.slots`): tokenization and checks.

A task whose prompts carry slot markers tokenizes its inputs with
`tokenize_with_slots` (each marker -> one `SLOT_TOKEN_ID`), is cached like any
task, then `expand_slots` repeats each slot token once per soft token of the
item (`tokens_per_slot`, bound by the run gin, e.g. ILM's number of query
tokens), so one prepared directory (and one cache) serves any K.
"""
from __future__ import annotations

import gin
import seqio
import tensorflow as tf

from recjax import slots


@gin.configurable(module="slots")
def tokens_per_slot(value: int = 1) -> int:
  """Soft tokens per slotted item (gin: `slots.tokens_per_slot.value = K`)."""
  value = int(value)
  if value < 1:
    raise ValueError(f"slots.tokens_per_slot.value must be >= 1, got {value}")
  return value


def encode_with_slots(vocabulary: seqio.Vocabulary, text: tf.Tensor
                     ) -> tf.Tensor:
  """A scalar string -> int32 ids, each `SLOT_MARKER` as one SLOT_TOKEN_ID.

  The text between markers is encoded piece by piece, so a marker never merges
  with its neighbours into one token.
  """
  parts = tf.strings.split(tf.reshape(text, [1]), slots.SLOT_MARKER).values
  pieces = tf.cast(vocabulary.encode_tf(parts), tf.int32)
  if not isinstance(pieces, tf.RaggedTensor):
    pieces = tf.RaggedTensor.from_tensor(pieces)
  marker = tf.fill([tf.shape(parts)[0], 1], tf.constant(slots.SLOT_TOKEN_ID,
                                                        tf.int32))
  joined = tf.concat([pieces, tf.RaggedTensor.from_tensor(marker)], axis=1)
  return joined.flat_values[:-1]  # no marker after the last piece


def tokenize_with_slots(dataset: tf.data.Dataset,
                        output_features: dict[str, seqio.Feature]
                       ) -> tf.data.Dataset:
  """`seqio.preprocessors.tokenize` whose inputs keep slot markers as slots."""
  in_vocab = output_features["inputs"].vocabulary
  out_vocab = output_features["targets"].vocabulary

  def fn(ex):
    ex = dict(ex)
    ex["inputs_pretokenized"] = ex["inputs"]
    ex["targets_pretokenized"] = ex["targets"]
    ex["inputs"] = encode_with_slots(in_vocab, ex["inputs"])
    ex["targets"] = tf.cast(out_vocab.encode_tf(ex["targets"]), tf.int32)
    ex[slots.SLOT_FEATURE] = tf.cast(ex[slots.SLOT_FEATURE], tf.int32)
    return ex

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def expand_slots(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Each slot token -> `tokens_per_slot()` copies (after the cache)."""
  k = tokens_per_slot()
  if k == 1:
    return dataset

  def fn(ex):
    ex = dict(ex)
    tokens = ex["inputs"]
    repeats = tf.where(tokens == slots.SLOT_TOKEN_ID, k, 1)
    ex["inputs"] = tf.repeat(tokens, repeats)
    return ex

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def check_slots(inputs: tf.Tensor, slot_items: tf.Tensor, k: int,
                where: str) -> tf.Tensor:
  """Asserts inputs hold exactly k slot tokens per non-zero slot item.

  Trimming can cut an example's slots out of its inputs (inputs longer than
  their feature length) or its items out of `slot_items` (more items than
  that feature's length); either would pair soft tokens with the wrong item.
  """
  n_tokens = tf.reduce_sum(tf.cast(inputs == slots.SLOT_TOKEN_ID, tf.int32))
  n_items = tf.reduce_sum(tf.cast(slot_items > 0, tf.int32))
  return tf.debugging.assert_equal(
      n_tokens, k * n_items, message=(
          f"{where}: an example's slot tokens and slot_items disagree after "
          f"trimming ({k} soft tokens per item): its inputs are longer than "
          "TASK_FEATURE_LENGTHS['inputs'] or it names more items than "
          "TASK_FEATURE_LENGTHS['slot_items']. Raise the lengths or shorten "
          "the prompts (e.g. `recjax prepare --prompt max_history=N`)."))


def check_slot_range(slot_items: tf.Tensor, num_items: int,
                     user_slot: bool, message: str) -> tf.Tensor:
  """Asserts every slot value is padding (0), a row of the slot module's
  table (1..num_items: catalogue index + 1) or, where the module fills one,
  the user slot; a value past the table would read NaN or a clamped row."""
  ok = (slot_items == 0) | ((slot_items >= 1) & (slot_items <= num_items))
  if user_slot:
    ok |= slot_items == slots.USER_SLOT_ITEM
  bad = tf.boolean_mask(slot_items, tf.logical_not(ok))
  return tf.debugging.Assert(tf.reduce_all(ok), [message, "values:", bad])
