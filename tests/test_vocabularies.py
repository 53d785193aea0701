"""Vocabularies for decoder-only LMs: HF tokenizer.json and SentencePiece."""
from __future__ import annotations

import io
import json
import pathlib
import pickle
import shutil

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tokenizers

from recjax import vocabularies
from recjax.vocabularies import HfTokenizerVocabulary, load_vocabulary

TESTDATA = pathlib.Path(__file__).parent / "testdata"
LLAMA2_LIKE = TESTDATA / "tiny_hf_tokenizer"  # ids 0,1,2 = <pad>,<s>,</s>
# id 0 is "!"; <s>, </s>, <pad> are 300, 301, 302.
ID0_REAL = TESTDATA / "tiny_hf_tokenizer_id0"
TEXTS = [
    'A user bought: "Great Lash Mascara" (item_1042); item_88!',
    "Café crème — déjà vu? 日本語 🎬🍿 {x: [1, 2]} tab\there",
    "!!! leading bangs, trailing bang!",
    "",
]


def _hf(directory):
  return tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))


def _copy(directory, dest, drop=(), config=None):
  """A copy of a tokenizer dir without `drop` files, config.json replaced."""
  dest.mkdir()
  for f in directory.iterdir():
    if f.name not in drop:
      shutil.copy(f, dest / f.name)
  if config is not None:
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
  return dest


@pytest.mark.parametrize("directory", [LLAMA2_LIKE, ID0_REAL])
def test_round_trip_and_ids_equal_tokenizers(directory):
  vocab = load_vocabulary(directory)
  hf = _hf(directory)
  swap = vocab.pad_swap_id
  for text in TEXTS:
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text
    expected = hf.encode(text, add_special_tokens=False).ids
    if swap:
      expected = [swap if i == 0 else i for i in expected]
    assert ids == expected
    assert 0 not in ids
  if directory == LLAMA2_LIKE:
    # The checkpoint's post-processor adds <s>; encode() must not.
    assert hf.encode("hi").ids == [1] + vocab.encode("hi")
  else:
    assert vocab.encode("!") == [302] and hf.encode("!").ids == [0]


def test_special_tokens_from_tokenizer_config():
  vocab = load_vocabulary(LLAMA2_LIKE)
  assert (vocab.bos_id, vocab.eos_id, vocab.pad_id, vocab.unk_id) == (
      1, 2, 0, None)
  assert vocab.add_bos and vocab.pad_swap_id is None
  assert vocab.vocab_size == 300 and vocab.extra_ids == 0
  # id0 variant: BOS only in special_tokens_map.json, pad -> the swap.
  vocab = load_vocabulary(ID0_REAL)
  assert (vocab.bos_id, vocab.eos_id, vocab.pad_id) == (300, 301, 0)
  assert vocab.pad_swap_id == 302 and not vocab.add_bos
  assert vocab.vocab_size == 303


def test_special_tokens_fallbacks(tmp_path):
  # Only generation_config.json names BOS/EOS (eos as a list: first wins).
  d = _copy(ID0_REAL, tmp_path / "gen", drop=("special_tokens_map.json",),
            config={"pad_token": "<pad>"})
  (d / "generation_config.json").write_text(json.dumps(
      {"bos_token_id": 300, "eos_token_id": [301, 302]}))
  vocab = load_vocabulary(d)
  assert (vocab.bos_id, vocab.eos_id, vocab.pad_swap_id) == (300, 301, 302)


def test_special_tokens_bad_config(tmp_path):
  d = _copy(LLAMA2_LIKE, tmp_path / "bad", config={"eos_token": "<eos>"})
  with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token "
                     r"'<eos>' is not a token"):
    load_vocabulary(d)
  d = _copy(LLAMA2_LIKE, tmp_path / "noeos", drop=(
      "special_tokens_map.json",), config={"bos_token": "<s>"})
  vocab = load_vocabulary(d)
  assert vocab.bos_id == 1 and vocab.add_bos  # from the post-processor
  with pytest.raises(ValueError, match="names no eos_token"):
    _ = vocab.eos_id


def test_swap_explicit_and_errors(tmp_path):
  # An id past the tokenizer: "!" becomes 303 and the vocabulary grows.
  vocab = load_vocabulary(ID0_REAL, pad_swap_id=303)
  assert vocab.vocab_size == 304 and vocab.encode("a!")[-1] == 303
  assert vocab.decode([303, 303, 0, 0]) == "!!"
  assert vocabularies.swap_token_ids([0, 5, 303], 303) == [303, 5, 0]
  with pytest.raises(ValueError, match=r"pad_swap_id=5 is the ordinary "
                     r"token '&'"):
    load_vocabulary(ID0_REAL, pad_swap_id=5)
  with pytest.raises(ValueError, match=r"pad_swap_id=301 is the tokenizer's "
                     r"eos token"):
    load_vocabulary(ID0_REAL, pad_swap_id=301)
  with pytest.raises(ValueError, match=r"pad_swap_id=None, but token id 0 is "
                     r"the ordinary token '!'"):
    load_vocabulary(ID0_REAL, pad_swap_id=None)
  # No pad token, id 0 real: an explicit error naming candidates.
  d = _copy(ID0_REAL, tmp_path / "nopad", drop=("special_tokens_map.json",),
            config={"bos_token": "<s>", "eos_token": "</s>"})
  with pytest.raises(ValueError) as e:
    load_vocabulary(d)
  msg = str(e.value)
  assert "token id 0 is the ordinary token '!'" in msg
  assert "pad_swap_id" in msg and "[302, 303]" in msg
  assert "DecoderOnlyConfig.pad_swap_id" in msg
  assert load_vocabulary(d, pad_swap_id=302).encode("!") == [302]
  # Pad token == EOS (Qwen2.5 base): also refused.
  d = _copy(ID0_REAL, tmp_path / "padeos", drop=("special_tokens_map.json",),
            config={"eos_token": "</s>", "pad_token": "</s>"})
  with pytest.raises(ValueError, match=r"its pad token is its eos token, "
                     r"id 301"):
    load_vocabulary(d)


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    load_vocabulary(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=r"no tokenizer.json, "
                     r"tokenizer.model or spiece.model"):
    load_vocabulary(tmp_path)
  lazy = HfTokenizerVocabulary(tmp_path / "x" / "tokenizer.json")
  with pytest.raises(FileNotFoundError, match=r"x/tokenizer.json: no such"):
    _ = lazy.vocab_size
  (tmp_path / "junk.json").write_text("{}")
  with pytest.raises(ValueError, match="not a Hugging Face tokenizer.json"):
    load_vocabulary(tmp_path / "junk.json")


def test_pickle_and_equality():
  vocab = load_vocabulary(ID0_REAL)
  again = pickle.loads(pickle.dumps(vocab))
  assert again == vocab and hash(again) == hash(vocab)
  assert again._loaded is None  # the tokenizer is not pickled
  assert again.encode("x!") == vocab.encode("x!")
  assert vocab != HfTokenizerVocabulary(ID0_REAL, pad_swap_id=303)
  assert vocab != load_vocabulary(LLAMA2_LIKE)
  assert "md5=" in str(vocab) and "pad_swap_id=302" in str(vocab)


@pytest.mark.parametrize("directory", [LLAMA2_LIKE, ID0_REAL])
def test_tf_encode_decode(directory):
  vocab = load_vocabulary(directory)
  ids = vocab.encode_tf(tf.constant(TEXTS[0]))
  assert ids.dtype == tf.int32 and ids.shape.rank == 1
  assert ids.numpy().tolist() == vocab.encode(TEXTS[0])
  batch = vocab.encode_tf(tf.constant(TEXTS))
  assert isinstance(batch, tf.RaggedTensor)
  assert batch.to_list() == [vocab.encode(t) for t in TEXTS]
  assert vocab.encode_tf(tf.constant([TEXTS[:2]])).to_list() == [
      [vocab.encode(t) for t in TEXTS[:2]]]
  # Padded batches, junk after EOS: the tf path strips both.
  rows = [vocab.encode(t) for t in TEXTS]
  width = max(map(len, rows)) + 3
  padded = np.zeros((len(rows), width), np.int32)
  for r, row in enumerate(rows):
    padded[r, :len(row)] = row
  padded[0, len(rows[0]):len(rows[0]) + 2] = [vocab.eos_id, 17]
  out = vocab.decode_tf(tf.constant(padded)).numpy()
  assert [t.decode() for t in out] == TEXTS
  assert vocab.decode_tf(tf.constant(padded[1])).numpy().decode() == TEXTS[1]
  assert [vocab.decode(r) for r in padded.tolist()] == TEXTS
  nested = vocab.decode_tf(tf.constant(padded[None, :2])).numpy()
  assert nested.shape == (1, 2) and nested[0, 1].decode() == TEXTS[1]


def test_inside_seqio_task():
  vocab = load_vocabulary(ID0_REAL)
  name = "recjax_test_hf_vocab_task"
  examples = {"inputs": TEXTS[:3], "targets": ["item_88!", "ok", "!"]}

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(examples)

  features = {k: seqio.Feature(vocab, add_eos=True)
              for k in ("inputs", "targets")}
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=("train",)),
      preprocessors=[seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos],
      output_features=features)
  try:
    ds = seqio.get_mixture_or_task(name).get_dataset(
        None, split="train", shuffle=False, use_cached=False)
    got = list(ds.as_numpy_iterator())
  finally:
    seqio.TaskRegistry.remove(name)
  assert len(got) == 3
  for ex, inp, tgt in zip(got, examples["inputs"], examples["targets"]):
    assert ex["inputs"].tolist() == vocab.encode(inp) + [301]
    assert ex["targets"].tolist() == vocab.encode(tgt) + [301]
    assert ex["inputs_pretokenized"].decode() == inp
    assert 0 not in ex["targets"].tolist()
  assert got[2]["targets"].tolist() == [302, 301]  # "!" swapped, then EOS


def _train_spm(path, **ids):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from make_tiny_tokenizer import TEXT  # pylint: disable=g-import-not-at-top
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(TEXT), model_writer=model, model_type="bpe",
      vocab_size=400, byte_fallback=True, hard_vocab_limit=False,
      minloglevel=2, num_threads=1, **ids)
  path.write_bytes(model.getvalue())
  return path


@pytest.fixture(scope="module")
def spm_models(tmp_path_factory):
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(TESTDATA))
  try:
    d = tmp_path_factory.mktemp("spm")
    t5 = _train_spm(d / "spiece.model", pad_id=0, eos_id=1, unk_id=2,
                    bos_id=-1)
    (d / "llama").mkdir()
    llama = _train_spm(d / "llama" / "tokenizer.model", unk_id=0, bos_id=1,
                       eos_id=2, pad_id=-1)
  finally:
    sys.path.remove(str(TESTDATA))
  return t5, llama


def test_sentencepiece_dispatch(spm_models):
  t5, llama = spm_models
  vocab = load_vocabulary(t5)
  assert type(vocab) is seqio.SentencePieceVocabulary
  assert vocab.extra_ids == 100 and vocab.eos_id == 1
  assert load_vocabulary(t5, extra_ids=0).extra_ids == 0
  vocab = load_vocabulary(llama.parent)  # a directory with tokenizer.model
  assert isinstance(vocab, vocabularies.LlamaSentencePieceVocabulary)
  assert (vocab.extra_ids, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (
      0, 1, 2, 0)
  ids = vocab.encode("Hello world!")
  assert 0 not in ids
  # Padding decodes to nothing (seqio's class gives " ⁇ " for Llama's <unk>).
  plain = seqio.SentencePieceVocabulary(str(llama))
  row = tf.constant([ids + [2, 0, 0], ids + [0, 0, 0]], tf.int32)
  assert "⁇" in plain.decode_tf(row).numpy()[1].decode()
  assert [t.decode() for t in vocab.decode_tf(row).numpy()] == [
      "Hello world!"] * 2
  assert vocab.decode(ids + [0, 0]) == "Hello world!"
  assert vocab != plain and pickle.loads(pickle.dumps(vocab)) == vocab
  with pytest.raises(ValueError, match="pad_swap_id applies to tokenizer"):
    load_vocabulary(llama, pad_swap_id=5)


def test_check_vocab_fits():
  vocab = load_vocabulary(ID0_REAL)
  vocabularies.check_vocab_fits(vocab, 303)
  vocabularies.check_vocab_fits(vocab, 384)
  with pytest.raises(ValueError, match=r"tokenizer .*tiny_hf_tokenizer_id0/"
                     r"tokenizer.json has 303 tokens, model vocab_size 300"):
    vocabularies.check_vocab_fits(vocab, 300)


def test_trainer_refuses_larger_tokenizer():
  from recjax.train import test_utils  # pylint: disable=g-import-not-at-top
  from recjax.train import trainer  # pylint: disable=g-import-not-at-top
  vocab = load_vocabulary(ID0_REAL)
  name = "recjax_test_hf_vocab_size"
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(
          lambda split, shuffle_files: tf.data.Dataset.from_tensor_slices(
              {"inputs": ["a"], "targets": ["b"]}), splits=("train",)),
      preprocessors=[seqio.preprocessors.tokenize],
      output_features={k: seqio.Feature(vocab) for k in ("inputs",
                                                          "targets")})
  try:
    model = test_utils.tiny_model(test_utils.TinyConfig(vocab_size=256))
    model.input_vocabulary = model.output_vocabulary = None
    with pytest.raises(ValueError, match=r"vocab_size \(256\) is smaller than "
                       r"tokenizer .*tiny_hf_tokenizer_id0/tokenizer.json "
                       r".*\(303 ids\).*VOCAB_SIZE=384"):
      trainer.check_vocab_size(model, name)
  finally:
    seqio.TaskRegistry.remove(name)


def test_prepared_dir_with_hf_tokenizer(tmp_path):
  # pylint: disable=g-import-not-at-top
  from recjax.prompts import PromptConfig
  from recjax.prompts.export import write_task_files
  from seqio_tasks import registry
  from tiny_data import tiny_data
  directory = tmp_path / "prepared"
  directory.mkdir()
  manifest = write_task_files(
      tiny_data(n_users=8, n_items=30, max_len=10), directory,
      config=PromptConfig(num_negatives=3), tasks=("retrieval", "ie"),
      vocab_model=ID0_REAL / "tokenizer.json", num_shards=1)
  assert manifest["vocabulary"] == "vocab/tokenizer.json"
  assert manifest["vocabulary_options"] == {"pad_swap_id": 302}
  assert manifest["vocab_size"] == 303
  for name in ("tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "generation_config.json"):
    assert (directory / "vocab" / name).read_bytes() == (
        ID0_REAL / name).read_bytes()
  assert not (directory / "vocab" / "spiece.model").exists()
  vocab = registry.default_vocabulary(directory)
  assert vocab == HfTokenizerVocabulary(directory / "vocab/tokenizer.json",
                                        pad_swap_id=302)
  names = registry.register_prepared(directory, dataset_name="hfvocab_t")
  try:
    task = seqio.get_mixture_or_task("hfvocab_t_ie")
    assert task.output_features["targets"].vocabulary == vocab
    ds = task.get_dataset({"inputs": 128, "targets": 32}, split="train",
                          shuffle=False, use_cached=False)
    n = 0
    for ex in ds.take(4).as_numpy_iterator():
      n += 1
      for k in ("inputs", "targets"):
        text = ex[f"{k}_pretokenized"].decode()
        assert ex[k].tolist() == (vocab.encode(text) + [301])[:len(ex[k])]
        assert vocab.decode(ex[k].tolist()) == text[:len(vocab.decode(
            ex[k].tolist()))]
    assert n == 4
  finally:
    for full in names:
      for reg in (seqio.MixtureRegistry, seqio.TaskRegistry):
        if full in reg.names():
          reg.remove(full)
  # A missing --vocab is named.
  with pytest.raises(FileNotFoundError, match=r"--vocab .*nope"):
    write_task_files(tiny_data(n_users=8, n_items=30, max_len=10), directory,
                     config=PromptConfig(num_negatives=3), tasks=("ie",),
                     vocab_model=tmp_path / "nope", num_shards=1)
