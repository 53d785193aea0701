"""SeqIO vocabularies for decoder-only checkpoints (Llama, Qwen2) beside T5's.

`HfTokenizerVocabulary` wraps a Hugging Face `tokenizer.json` (byte-level BPE
and the rest, through the `tokenizers` package) as a `seqio.Vocabulary` that
works in plain Python and inside tf.data. `load_vocabulary(path)` picks the
right class for a checkpoint directory, a `tokenizer.json` or a SentencePiece
`.model` file, and `check_vocab_fits` refuses a tokenizer the model's
embedding table cannot hold.

Conventions shared with the decoder-only model and its importer:

* encode() never adds BOS or EOS. SeqIO appends EOS where a feature has
  `add_eos=True`; the model prepends BOS (`vocab.bos_id`, None when the
  tokenizer has none, e.g. Qwen2) at each sequence start when `vocab.add_bos`
  says the checkpoint was trained that way.
* SeqIO pads with 0 and treats ids > 0 as tokens, but Llama-3 and Qwen2 use
  id 0 for the ordinary token "!". With `pad_swap_id=N` the vocabulary
  exchanges ids 0 and N in both directions, so text never encodes to 0. The
  model must be built with the same `DecoderOnlyConfig.pad_swap_id`, whose
  checkpoint importer exchanges embedding rows 0 and N to match.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
GENERATION_CONFIG = "generation_config.json"
SENTENCEPIECE_NAMES = ("tokenizer.model", "spiece.model")
# recjax's T5 vocabularies (FLAN-T5's spiece.model, the trained default) carry
# T5's 100 sentinel ids, as seqio_tasks.registry has always registered them.
T5_EXTRA_IDS = 100
AUTO = "auto"
_SPECIAL_NAMES = ("bos", "eos", "pad", "unk")


# ---------------------------------------------------------------- helpers
def swap_token_ids(ids, pad_swap_id: Optional[int]):
  """Exchanges ids 0 and `pad_swap_id` (an involution: HF <-> SeqIO ids).

  Works on ints, lists and numpy arrays; None means no swap.
  """
  if not pad_swap_id:
    return ids
  if isinstance(ids, (int, np.integer)):
    return pad_swap_id if ids == 0 else 0 if ids == pad_swap_id else int(ids)
  arr = np.asarray(ids)
  out = np.where(arr == 0, pad_swap_id, np.where(arr == pad_swap_id, 0, arr))
  return out.astype(arr.dtype) if isinstance(ids, np.ndarray) else (
      out.tolist())


def _read_json(path: str) -> Optional[dict]:
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, "r") as f:
    text = f.read()
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None


def _token_content(value: Any) -> Optional[str]:
  """A special token as tokenizer_config.json has it: str or AddedToken dict."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, dict) and isinstance(value.get("content"), str):
    return value["content"]
  raise ValueError(f"expected a token string or an AddedToken dict with "
                   f"'content', got {value!r}")


@dataclasses.dataclass(frozen=True)
class _Loaded:
  """What one tokenizer.json (and the config files beside it) says."""
  tokenizer: Any  # tokenizers.Tokenizer
  size: int  # ids 0..size-1, added tokens included
  special: dict  # name -> HF id or None, for _SPECIAL_NAMES
  add_bos: bool
  add_eos: bool
  md5: str


@functools.lru_cache(maxsize=None)
def _load(tokenizer_file: str) -> _Loaded:
  """Reads a tokenizer.json and its config files, once per process."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(tokenizer_file):
    raise FileNotFoundError(f"{tokenizer_file}: no such tokenizer file")
  with tf.io.gfile.GFile(tokenizer_file, "rb") as f:
    raw = f.read()
  try:
    tok = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{tokenizer_file}: not a Hugging Face tokenizer.json "
                     f"({e})") from None
  vocab = tok.get_vocab(with_added_tokens=True)
  size = max(vocab.values()) + 1 if vocab else 0
  directory = os.path.dirname(tokenizer_file)
  sources = [(os.path.join(directory, n), _read_json(os.path.join(
      directory, n)) or {}) for n in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP)]
  gen_file = os.path.join(directory, GENERATION_CONFIG)
  generation = _read_json(gen_file) or {}

  def special_id(name: str) -> Optional[int]:
    for path, config in sources:  # the first file naming a token wins
      content = _token_content(config.get(f"{name}_token"))
      if content is not None:
        token_id = tok.token_to_id(content)
        if token_id is None:
          raise ValueError(f"{path}: {name}_token {content!r} is not a token "
                           f"of {tokenizer_file}")
        return token_id
    value = generation.get(f"{name}_token_id")
    if isinstance(value, (list, tuple)):  # e.g. Llama-3-Instruct's eos list
      value = value[0] if value else None
    if value is not None and not 0 <= int(value) < size:
      raise ValueError(f"{gen_file}: {name}_token_id {value} is outside the "
                       f"tokenizer's {size} ids")
    if value is None and name == "unk":
      unk = getattr(tok.model, "unk_token", None)
      value = tok.token_to_id(unk) if unk else None
    return None if value is None else int(value)

  special = {name: special_id(name) for name in _SPECIAL_NAMES}
  if special.get("eos") is None:  # BERT-style: [SEP] ends a sequence
    special["eos"] = special_id("sep")
  # add_bos_token/add_eos_token from the config; else what the tokenizer's
  # post-processor does (Llama-3's template adds <|begin_of_text|>).
  with_special = tok.encode("a", add_special_tokens=True).ids
  plain = tok.encode("a", add_special_tokens=False).ids
  extra = len(with_special) > len(plain)
  flags = {}
  for name, index in (("bos", 0), ("eos", -1)):
    given = sources[0][1].get(f"add_{name}_token")
    flags[name] = bool(given) if given is not None else bool(
        extra and special[name] is not None and
        with_special[index] == special[name])
  return _Loaded(tokenizer=tok, size=size, special=special,
                 add_bos=flags["bos"] and special["bos"] is not None,
                 add_eos=flags["eos"], md5=hashlib.md5(raw).hexdigest())


def _is_special(tok, token_id: int) -> bool:
  added = tok.get_added_tokens_decoder().get(token_id)
  return bool(added is not None and added.special)


def _swap_candidates(loaded: _Loaded) -> list[int]:
  """Special tokens that could serve as pad_swap_id ("pad" ones first)."""
  taken = {v for v in loaded.special.values() if v is not None}
  added = loaded.tokenizer.get_added_tokens_decoder()
  ids = [i for i, t in sorted(added.items())
         if t.special and i not in taken and i != 0]
  ids.sort(key=lambda i: ("pad" not in added[i].content.lower(), i))
  return ids[:3]


def _resolve_pad_swap_id(loaded: _Loaded, requested, tokenizer_file: str
                         ) -> Optional[int]:
  """The pad_swap_id to use; raises when id 0 would be a real token."""
  tok = loaded.tokenizer
  special = loaded.special
  token0 = tok.id_to_token(0)
  id0_taken = [n for n in ("bos", "eos") if special[n] == 0]
  id0_free = (token0 is None or _is_special(tok, 0) or
              special["unk"] == 0 or special["pad"] == 0) and not id0_taken
  hint = (f"Pass pad_swap_id=<id text never produces>, e.g. one of "
          f"{_swap_candidates(loaded) + [loaded.size]} (special tokens, or "
          f"{loaded.size}: the first row past the tokenizer when the model's "
          f"vocab_size is larger), and build the model with the same "
          f"DecoderOnlyConfig.pad_swap_id so the importer swaps embedding "
          f"rows 0 and pad_swap_id.")
  what = (f"the {' and '.join(id0_taken)} token" if id0_taken else
          f"the ordinary token {token0!r}")
  if isinstance(requested, str):
    if requested != AUTO:
      raise ValueError(f"pad_swap_id={requested!r}: expected an int, None or "
                       f"{AUTO!r}")
    if id0_free:
      return None
    pad = special["pad"]
    if pad and pad not in (special["bos"], special["eos"]):
      return pad
    same = "bos" if pad == special["bos"] else "eos"
    raise ValueError(
        f"{tokenizer_file}: token id 0 is {what}, but SeqIO pads with 0 and "
        f"treats only ids > 0 as tokens, and the tokenizer has no separate "
        f"pad token to exchange it with" + (
            f" (its pad token is its {same} token, id {pad})" if pad else "")
        + f". {hint}")
  if requested is None or requested == 0:
    if not id0_free:
      raise ValueError(f"{tokenizer_file}: pad_swap_id=None, but token id 0 "
                       f"is {what}, which SeqIO would treat as padding. "
                       f"{hint}")
    return None
  n = int(requested)
  if n < 0:
    raise ValueError(f"pad_swap_id={n}: must be a positive token id")
  if n in (special["bos"], special["eos"]):
    raise ValueError(f"pad_swap_id={n} is the tokenizer's "
                     f"{'bos' if n == special['bos'] else 'eos'} token; "
                     f"choose an unused id. {hint}")
  if n < loaded.size and not (_is_special(tok, n) or n == special["pad"] or
                              n == special["unk"]):
    raise ValueError(f"pad_swap_id={n} is the ordinary token "
                     f"{tok.id_to_token(n)!r}, which text produces and would "
                     f"then become padding. {hint}")
  return n


# ------------------------------------------------------- the vocabulary
class HfTokenizerVocabulary(seqio.Vocabulary):
  """A Hugging Face `tokenizer.json` as a `seqio.Vocabulary`.

  Special tokens come from the `tokenizer_config.json`,
  `special_tokens_map.json` and `generation_config.json` beside the file (in
  that order; strings or AddedToken dicts). encode() adds no special tokens;
  decode() skips special tokens and padding (0). The file is read lazily and
  through tf.io.gfile (local or gs:// paths); instances pickle without the
  loaded tokenizer and compare equal by file and options, as
  `seqio.SentencePieceVocabulary` does.

  Attributes exposed besides seqio's: `bos_id` (None if the tokenizer has no
  BOS; the model, not encode(), adds it), `add_bos` (whether the checkpoint
  expects BOS at sequence starts), `pad_swap_id` (resolved), `tokenizer`.
  """

  def __init__(self, tokenizer_file: Union[str, os.PathLike],
               pad_swap_id: Union[int, None, str] = AUTO):
    """Args.

    Args:
      tokenizer_file: path of `tokenizer.json` (or the directory holding it).
      pad_swap_id: exchanged with id 0 in encode and decode (see the module
        docstring); the model's `DecoderOnlyConfig.pad_swap_id` must match.
        'auto' (default): no swap when id 0 is already special or unused
        (Llama-2's <unk>, a <pad> at 0), else the tokenizer's pad token if it
        is not its BOS/EOS, else an error asking for an explicit id. None: no
        swap (refused when id 0 is a real token). An int: an unused special
        token, or an id >= the tokenizer's size (the vocabulary then grows to
        pad_swap_id + 1).
    """
    path = os.fspath(tokenizer_file)
    if not path.endswith(".json"):
      path = os.path.join(path, TOKENIZER_JSON)
    self._tokenizer_file = path
    self._pad_swap_option = pad_swap_id
    self._loaded: Optional[_Loaded] = None
    self._pad_swap_id: Optional[int] = None
    super().__init__(extra_ids=0)

  # -- pickling / equality (seqio caches and gin deep-copy vocabularies)
  def __getstate__(self):
    state = self.__dict__.copy()
    state["_loaded"] = None
    state["_pad_swap_id"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)

  def _key(self):
    return (self._tokenizer_file, self._pad_swap_option)

  def __eq__(self, other):
    return isinstance(other, HfTokenizerVocabulary) and (
        self._key() == other._key())

  def __hash__(self):
    return hash((HfTokenizerVocabulary, self._key()))

  def __str__(self) -> str:
    return (f"HfTokenizerVocabulary(file={self._tokenizer_file}, "
            f"pad_swap_id={self.pad_swap_id}, md5={self._info().md5})")

  # -- loading
  def _info(self) -> _Loaded:
    if self._loaded is None:
      loaded = _load(self._tokenizer_file)
      self._pad_swap_id = _resolve_pad_swap_id(
          loaded, self._pad_swap_option, self._tokenizer_file)
      self._loaded = loaded
    return self._loaded

  def load(self) -> "HfTokenizerVocabulary":
    """Reads the files now (errors surface here rather than inside tf.data)."""
    self._info()
    return self

  @property
  def tokenizer_file(self) -> str:
    return self._tokenizer_file

  @property
  def tokenizer(self):
    """The `tokenizers.Tokenizer` (HF ids: before the pad swap)."""
    return self._info().tokenizer

  @property
  def pad_swap_id(self) -> Optional[int]:
    self._info()
    return self._pad_swap_id

  def _special(self, name: str) -> Optional[int]:
    value = self._info().special[name]
    return None if value is None else swap_token_ids(value, self._pad_swap_id)

  @property
  def bos_id(self) -> Optional[int]:
    return self._special("bos")

  @property
  def eos_id(self) -> Optional[int]:
    eos = self._special("eos")
    if eos is None:
      raise ValueError(f"{self._tokenizer_file}: the tokenizer names no "
                       f"eos_token ({TOKENIZER_CONFIG}, {SPECIAL_TOKENS_MAP} "
                       f"or {GENERATION_CONFIG}); SeqIO needs one to end "
                       f"targets")
    return eos

  @property
  def unk_id(self) -> Optional[int]:
    return self._special("unk")

  @property
  def add_bos(self) -> bool:
    """Whether the checkpoint expects BOS first (add_bos_token / template)."""
    return self._info().add_bos

  @property
  def _base_vocab_size(self) -> int:
    info = self._info()
    return max(info.size, (self._pad_swap_id or 0) + 1)

  # -- Python
  def _encode(self, s: str) -> Sequence[int]:
    ids = self.tokenizer.encode(s, add_special_tokens=False).ids
    return swap_token_ids(ids, self._pad_swap_id)

  def _decode(self, ids: Iterable[int]) -> str:
    return self._decode_rows([ids])[0]

  def _decode_rows(self, rows) -> list[str]:
    """SeqIO ids -> text per row: padding and out-of-range ids dropped."""
    info = self._info()
    limit = self._base_vocab_size
    hf_rows = []
    for row in rows:
      row = np.asarray(row, dtype=np.int64).reshape(-1)
      row = swap_token_ids(row[(row > 0) & (row < limit)], self._pad_swap_id)
      hf_rows.append(row[row < info.size].tolist())
    return info.tokenizer.decode_batch(hf_rows, skip_special_tokens=True)

  # -- TensorFlow (tf.data): numpy_function around the Python tokenizer
  def _encode_np(self, flat: np.ndarray):
    texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t)
             for t in flat.reshape(-1)]
    encoded = self.tokenizer.encode_batch(texts, add_special_tokens=False)
    lengths = np.array([len(e.ids) for e in encoded], np.int64)
    values = np.fromiter(itertools.chain.from_iterable(e.ids for e in encoded),
                         np.int32, count=int(lengths.sum()))
    return swap_token_ids(values, self._pad_swap_id), lengths

  def _encode_tf(self, s: tf.Tensor):
    """A string tensor -> int32 ids: 1-D for a scalar, ragged otherwise."""
    self._info()  # load (and raise) outside the graph
    s = tf.convert_to_tensor(s, tf.string)
    rank = s.shape.rank
    if rank is None:
      raise ValueError("HfTokenizerVocabulary.encode_tf needs a string tensor "
                       "of known rank")
    values, lengths = tf.numpy_function(
        self._encode_np, [tf.reshape(s, [-1])], [tf.int32, tf.int64],
        stateful=False)
    values.set_shape([None])
    lengths.set_shape([None])
    if rank == 0:
      return values
    out = tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)
    shape = tf.shape(s, out_type=tf.int64)
    for d in reversed(range(1, rank)):
      out = tf.RaggedTensor.from_uniform_row_length(out, shape[d])
    return out

  def _decode_np(self, ids: np.ndarray) -> np.ndarray:
    return np.array([t.encode("utf-8") for t in self._decode_rows(ids)],
                    dtype=object)

  def _decode_tf(self, ids):
    """int ids [..., length] -> strings [...] (padding dropped)."""
    self._info()
    if isinstance(ids, tf.RaggedTensor):
      ids = ids.to_tensor()  # pads with 0, which decoding drops
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank == 0:
      raise ValueError("HfTokenizerVocabulary.decode_tf needs ids of rank >= 1")
    shape = tf.shape(ids)
    flat = tf.reshape(ids, tf.stack([-1, shape[-1]]))
    out = tf.numpy_function(self._decode_np, [flat], tf.string,
                            stateful=False)
    out.set_shape([None])
    return tf.reshape(out, shape[:-1])


class LlamaSentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """A SentencePiece model whose id 0 is not a pad piece (Llama-2's <unk>).

  seqio's class decodes SeqIO's padding (0) through the model, which renders
  Llama-2's <unk> as " ⁇ "; here padding is dropped before decoding.
  Encoding never yields 0 for such models (byte fallback), so ids are Llama's.
  """

  def _decode(self, ids):
    return super()._decode([i for i in ids if int(i) != 0])

  def _decode_tf(self, ids):
    ids = tf.convert_to_tensor(ids)
    return super()._decode_tf(tf.ragged.boolean_mask(ids, ids > 0))

  def __eq__(self, other):
    return type(other) is type(self) and super().__eq__(other)

  def __str__(self) -> str:
    return "Llama" + super().__str__()


# ---------------------------------------------------------- entry points
def _sentencepiece(path: str, extra_ids: Optional[int]) -> seqio.Vocabulary:
  """seqio's class for a T5-style model (pad 0, no BOS), else Llama's."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, "rb") as f:
    proto = f.read()
  try:
    sp = spm.SentencePieceProcessor(model_proto=proto)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: not a SentencePiece model ({e})") from None
  t5_style = sp.pad_id() == 0 and sp.bos_id() < 0
  if t5_style:
    return seqio.SentencePieceVocabulary(
        path, extra_ids=T5_EXTRA_IDS if extra_ids is None else extra_ids)
  return LlamaSentencePieceVocabulary(path, extra_ids=extra_ids or 0)


def load_vocabulary(path: Union[str, os.PathLike], *,
                    pad_swap_id: Union[int, None, str] = AUTO,
                    extra_ids: Optional[int] = None) -> seqio.Vocabulary:
  """The vocabulary of a checkpoint directory or tokenizer file, loaded now.

  Args:
    path: a directory holding `tokenizer.json` (preferred) or
      `tokenizer.model` / `spiece.model`; a `tokenizer.json`; or a
      SentencePiece `.model` file.
    pad_swap_id: for Hugging Face tokenizers, see `HfTokenizerVocabulary`.
    extra_ids: for SentencePiece models: sentinel ids appended (default: 100
      for T5-style models, whose pad is 0 and which have no BOS, as recjax's
      trained vocabulary and FLAN-T5's; 0 otherwise, e.g. Llama-2).

  Returns:
    An `HfTokenizerVocabulary`, a `seqio.SentencePieceVocabulary` or a
    `LlamaSentencePieceVocabulary`.
  """
  path = os.path.expanduser(os.fspath(path))
  if tf.io.gfile.isdir(path):
    if tf.io.gfile.exists(os.path.join(path, TOKENIZER_JSON)):
      path = os.path.join(path, TOKENIZER_JSON)
    else:
      for name in SENTENCEPIECE_NAMES:
        if tf.io.gfile.exists(os.path.join(path, name)):
          path = os.path.join(path, name)
          break
      else:
        raise FileNotFoundError(
            f"{path}: no {TOKENIZER_JSON}, "
            f"{' or '.join(SENTENCEPIECE_NAMES)} in this directory")
  elif not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"vocabulary {path}: no such file or directory")
  if path.endswith(".json"):
    if extra_ids:
      raise ValueError(f"{path}: extra_ids applies to SentencePiece models "
                       f"only")
    return HfTokenizerVocabulary(path, pad_swap_id=pad_swap_id).load()
  if path.endswith(".model"):
    if pad_swap_id not in (AUTO, None):
      raise ValueError(f"{path}: pad_swap_id applies to tokenizer.json "
                       f"vocabularies only")
    return _sentencepiece(path, extra_ids)
  raise ValueError(f"{path}: expected a {TOKENIZER_JSON}, a SentencePiece "
                   f".model file, or a directory holding one")


def describe(vocab: seqio.Vocabulary) -> str:
  """A short name for messages: the file a vocabulary reads."""
  for attr in ("tokenizer_file", "sentencepiece_model_file"):
    value = getattr(vocab, attr, None)
    if value:
      return str(value)
  return str(vocab)


def check_vocab_fits(vocab: seqio.Vocabulary, model_vocab_size: int) -> None:
  """Raises if the model's embedding table can't hold every token id."""
  n = int(vocab.vocab_size)
  if int(model_vocab_size) < n:
    raise ValueError(f"tokenizer {describe(vocab)} has {n} tokens, model "
                     f"vocab_size {int(model_vocab_size)}: ids >= "
                     f"{int(model_vocab_size)} have no embedding row. Use the "
                     f"checkpoint's own tokenizer, or a model vocab_size >= "
                     f"{n}.")


__all__ = ["HfTokenizerVocabulary", "LlamaSentencePieceVocabulary",
           "load_vocabulary", "check_vocab_fits", "swap_token_ids", "AUTO"]
