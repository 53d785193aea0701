"""SeqIO registration of exported task files: datasets, batches, mixtures, vocab."""
from __future__ import annotations

import functools
import io
import json
import math
import os
import pathlib
import signal

import numpy as np
import pytest
import seqio
import tensorflow as tf

from recjax.prompts import PromptConfig, TASKS
from recjax.prompts import export
from recjax.prompts.export import serialize_example, write_task_files
from seqio_tasks import registry, show
from tiny_data import tiny_data

LENGTHS = {"inputs": 256, "targets": 32}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  directory = tmp_path_factory.mktemp("prepared")
  data = tiny_data()
  manifest = write_task_files(data, directory,
                              config=PromptConfig(num_negatives=9),
                              vocab_size=400, num_shards=2)
  names = registry.register_prepared(directory, dataset_name="tinyt")
  return directory, data, manifest, names


def test_serialize_example_matches_tf():
  ex = {"inputs": "héllo \"x\"", "targets": "item_1", "task": "ranking",
        "template_id": 2, "target_item": "item_1",
        "candidates": ["item_1", "item_2"], "rating": 4.5}
  parsed = tf.train.Example.FromString(serialize_example(ex))
  f = parsed.features.feature
  assert f["inputs"].bytes_list.value == ["héllo \"x\"".encode()]
  assert list(f["candidates"].bytes_list.value) == [b"item_1", b"item_2"]
  assert f["template_id"].int64_list.value == [2]
  assert f["rating"].float_list.value == [4.5]
  big = dict(ex, inputs="x" * 70000, candidates=[])
  parsed = tf.train.Example.FromString(serialize_example(big))
  assert len(parsed.features.feature["inputs"].bytes_list.value[0]) == 70000
  assert not parsed.features.feature["candidates"].bytes_list.value


def test_manifest_and_files(prepared):
  directory, data, manifest, _ = prepared
  on_disk = json.loads((directory / "tasks/manifest.json").read_text())
  assert on_disk == json.loads(json.dumps(manifest))
  assert registry.read_manifest(directory) == on_disk
  assert set(manifest["tasks"]) == set(TASKS)
  assert manifest["splits"]["mlm"] == ["train", "validation"]
  assert (directory / "vocab/spiece.model").is_file()
  cfg = PromptConfig(num_negatives=9)
  for task, splits in manifest["counts"].items():
    for split, n in splits.items():
      assert n == sum(1 for _ in TASKS[task](data, split, cfg, 0))
      files = manifest["files"][task][split]
      assert len(files) == 2 and all((directory / p).is_file() for p in files)
      got = sum(1 for p in files for _ in tf.data.TFRecordDataset(
          str(directory / p)))
      assert got == n


def test_sentinels_are_extra_ids(prepared):
  directory, _, manifest, _ = prepared
  vocab = registry.default_vocabulary(directory)
  assert vocab.vocab_size - 100 == manifest["vocab_size"]
  assert vocab.encode("<extra_id_0>") == [vocab.vocab_size - 1]
  assert vocab.encode("<extra_id_1>") == [vocab.vocab_size - 2]
  assert vocab.tokenizer.pad_id() == 0 and vocab.tokenizer.eos_id() == 1
  assert vocab.tokenizer.unk_id() == 2
  text = "Thing 4 <extra_id_0> widget. A red <extra_id_1> number 4"
  ids = vocab.encode(text)
  assert ids.count(vocab.vocab_size - 1) == 1
  assert ids.count(vocab.vocab_size - 2) == 1
  assert vocab.decode(ids) == text


@pytest.mark.parametrize("task", ["retrieval", "ranking", "rating", "mim",
                                  "mlm", "bpr", "ie"])
def test_task_dataset_round_trips(prepared, task):
  directory, _, manifest, names = prepared
  assert f"tinyt_{task}" in names
  t = seqio.get_mixture_or_task(f"tinyt_{task}")
  ds = t.get_dataset(sequence_length=None, split="train", shuffle=False)
  vocab = t.output_features["inputs"].vocabulary
  raw = tf.data.TFRecordDataset(sorted(
      str(directory / p) for p in manifest["files"][task]["train"]))
  n = 0
  for ex in ds.take(5).as_numpy_iterator():
    assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1  # EOS
    assert vocab.decode(ex["inputs"].tolist()) == ex[
        "inputs_pretokenized"].decode()
    assert vocab.decode(ex["targets"].tolist()) == ex[
        "targets_pretokenized"].decode()
    assert ex["task"] == task.encode()
    if task == "ranking":
      assert len(ex["candidates"]) == 10
      assert ex["target_item"] in list(ex["candidates"])
    if task == "rating":
      assert 1.0 <= ex["rating"] <= 5.0
    n += 1
  assert n == 5
  del raw


def test_enc_dec_packed_batches(prepared):
  task = seqio.get_mixture_or_task("tinyt_retrieval")
  ds = task.get_dataset(sequence_length=LENGTHS, split="train", shuffle=False)
  conv = seqio.EncDecFeatureConverter(pack=True)
  batch = next(conv(ds, LENGTHS).batch(4).as_numpy_iterator())
  want = {"encoder_input_tokens", "decoder_target_tokens",
          "decoder_input_tokens", "decoder_loss_weights",
          "encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
          "decoder_positions"}
  assert want <= set(batch)
  for k in want:
    n = LENGTHS["inputs" if k.startswith("encoder") else "targets"]
    assert batch[k].shape == (4, n), k
  assert batch["encoder_segment_ids"].max() > 1  # packed
  np.testing.assert_array_equal(batch["decoder_loss_weights"] > 0,
                                batch["decoder_target_tokens"] > 0)


def test_mixtures(prepared):
  directory, _, manifest, names = prepared
  assert names[-3:] == ["tinyt_rec", "tinyt_rec_aux", "tinyt_rec_conv"]
  rec = seqio.get_mixture_or_task("tinyt_rec")
  assert {t.name for t in rec.tasks} == {"tinyt_retrieval", "tinyt_ranking",
                                         "tinyt_rating"}
  mix = seqio.get_mixture_or_task("tinyt_rec_aux")
  assert len(mix.tasks) == 7
  rates = {t.name: mix.get_rate(t) for t in mix.tasks}
  assert rates["tinyt_retrieval"] == manifest["counts"]["retrieval"]["train"]
  assert rates["tinyt_mlm"] == 0.5 * manifest["counts"]["mlm"]["train"]
  ds = mix.get_dataset(LENGTHS, split="train", shuffle=True, seed=3,
                       passthrough_features=["task"])
  seen = {ex["task"].decode() for ex in ds.take(250).as_numpy_iterator()}
  assert seen == set(TASKS) - {"conversation"}  # in `_rec_conv` only
  # Auxiliary tasks have no test split; the mixture skips them there.
  assert {t.name for t in mix.tasks if "test" in t.splits} == {
      "tinyt_retrieval", "tinyt_ranking", "tinyt_rating"}
  out = io.StringIO()
  show.mixture_summary("tinyt_rec_aux", out=out)
  assert "tinyt_mim" in out.getvalue()


def test_custom_rates_and_idempotent(prepared):
  directory = prepared[0]
  a = registry.register_prepared(directory, dataset_name="tinyt2",
                                 rec_aux_rates={"mlm": 2.0, "tinyt2_ie": 0.0})
  b = registry.register_prepared(directory, dataset_name="tinyt2",
                                 rec_aux_rates={"mlm": 2.0, "tinyt2_ie": 0.0})
  assert a == b
  mix = seqio.get_mixture_or_task("tinyt2_rec_aux")
  rates = {t.name: mix.get_rate(t) for t in mix.tasks}
  assert rates["tinyt2_mlm"] == 2.0 and rates["tinyt2_ie"] == 0.0
  assert registry.register_prepared(directory, dataset_name="tinyt2",
                                    overwrite=False) == []


def test_lazy_registration(tmp_path):
  """Registering before the files exist works (the synthetic default)."""
  directory = tmp_path / "later"
  names = registry.register_prepared(directory, dataset_name="later")
  assert "later_rating" in names
  directory.mkdir()
  write_task_files(tiny_data(ratings=False, n_users=10), directory,
                   config=PromptConfig(num_negatives=5), vocab_size=300,
                   tasks=("retrieval", "rating", "ie"))
  rec = seqio.get_mixture_or_task("later_rec")
  ds = rec.get_dataset(LENGTHS, split="train", shuffle=False, num_epochs=1,
                       passthrough_features=["task"])
  assert {ex["task"].decode() for ex in ds.as_numpy_iterator()} == {
      "retrieval"}  # no ratings in the data: the rating task has no splits


def test_show_examples(prepared):
  out = io.StringIO()
  rows = show.show_examples("tinyt_ranking", "test", n=2, out=out)
  assert len(rows) == 2 and "inputs:" in out.getvalue()
  assert rows[0]["target_item"] in rows[0]["candidates"]
  rows = show.show_examples("tinyt_rec_aux", "train", n=3, out=io.StringIO())
  assert len(rows) == 3 and all(r["inputs"] for r in rows)


def test_package_import_registers_synthetic(monkeypatch, tmp_path):
  monkeypatch.setenv("RECJAX_DATA_DIR", str(tmp_path))
  import importlib
  import seqio_tasks
  import seqio_tasks.synthetic as syn
  importlib.reload(syn)
  importlib.reload(seqio_tasks)
  assert "synthetic_rec_aux" in seqio.MixtureRegistry.names()
  assert syn.PREPARED_DIR == pathlib.Path(tmp_path) / "synthetic"
  assert math.isfinite(1.0)


def _export(tmp_path, name, num_shards, num_workers):
  """The tiny log's task files, written to tmp_path/name: (dir, manifest)."""
  directory = tmp_path / name
  directory.mkdir()
  return directory, write_task_files(
      tiny_data(n_users=25), directory, config=PromptConfig(num_negatives=7),
      seed=5, vocab_size=300, num_shards=num_shards, num_workers=num_workers)


def _assert_same_examples(a, b):
  """The same examples per (task, split), however sharded, and vocabulary."""
  (dir_a, m_a), (dir_b, m_b) = a, b
  assert m_a["counts"] == m_b["counts"]
  for task, splits in m_a["files"].items():
    for split in splits:
      ra = [r.numpy() for p in m_a["files"][task][split]
            for r in tf.data.TFRecordDataset(str(dir_a / p))]
      rb = [r.numpy() for p in m_b["files"][task][split]
            for r in tf.data.TFRecordDataset(str(dir_b / p))]
      assert sorted(ra) == sorted(rb), (task, split)
  assert ((dir_a / "vocab/spiece.model").read_bytes() ==
          (dir_b / "vocab/spiece.model").read_bytes())


def test_parallel_sharded_export_equals_serial(tmp_path):
  _assert_same_examples(_export(tmp_path, "serial", 1, 1),
                        _export(tmp_path, "parallel", 3, 2))


_WRITE_UNIT = export._run


def _run_killing_its_worker_once(marker, unit):
  """export._run, except that the first worker to write retrieval/train
  kills itself (SIGKILL, as the OOM killer would) before writing."""
  marker = pathlib.Path(marker)
  if unit[:2] == ("retrieval", "train") and not marker.exists():
    marker.write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)
  return _WRITE_UNIT(unit)


def test_parallel_export_survives_a_dead_worker(tmp_path, monkeypatch,
                                                capsys):
  """A worker killed mid-run (multiprocessing.Pool would wait forever for
  its task) costs a rewrite of the unfinished shards, not the run."""
  serial = _export(tmp_path, "serial", 2, 1)
  marker = tmp_path / "killed"
  monkeypatch.setattr(export, "_run", functools.partial(
      _run_killing_its_worker_once, str(marker)))

  def hung(signum, frame):
    raise TimeoutError("write_task_files hung after its worker died")
  previous = signal.signal(signal.SIGALRM, hung)
  signal.alarm(120)  # the workers do not inherit it
  try:
    parallel = _export(tmp_path, "parallel", 2, 2)
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
  assert marker.exists() and int(marker.read_text()) != os.getpid()
  assert "a worker process died" in capsys.readouterr().err
  _assert_same_examples(serial, parallel)


def test_read_manifest_errors(tmp_path):
  assert registry.read_manifest(tmp_path) is None  # not written yet
  path = tmp_path / "tasks" / "manifest.json"
  path.parent.mkdir()
  path.write_text('{"format": "recjax.tasks/0"}')
  with pytest.raises(ValueError, match=r"manifest.json: format 'recjax.tasks/0'"):
    registry.read_manifest(tmp_path)
  path.write_text('{\n  "format": \n}')
  with pytest.raises(ValueError, match=r"manifest.json:3: not JSON"):
    registry.read_manifest(tmp_path)


def test_item_token_format_one_token_per_item(tmp_path, prepared):
  """--item_format=title_token: the trained vocabulary holds each item as one
  piece, targets decode in one step (+ EOS), and a vocabulary without the
  pieces is refused when given with --vocab."""
  data = tiny_data(n_users=12)
  cfg = PromptConfig(num_negatives=5, item_format="title_token")
  directory = tmp_path / "tok"
  directory.mkdir()
  write_task_files(data, directory, config=cfg, vocab_size=300,
                   tasks=("retrieval", "ie"))
  registry.register_prepared(directory, dataset_name="tinytok")
  vocab = seqio.get_mixture_or_task(
      "tinytok_retrieval").output_features["targets"].vocabulary
  ids = [vocab.encode(f"<i:{it['id']}>") for it in data.items]
  assert all(len(i) == 1 for i in ids)
  assert len({i[0] for i in ids}) == data.num_items  # one token per item
  assert vocab.decode(ids[7]) == f"<i:{data.items[7]['id']}>"
  # In a prompt the mention is one token too, and text around it unchanged.
  mention = vocab.encode(f'"{data.items[3]["title"]}" <i:item_3>; next')
  assert ids[3][0] in mention
  ds = seqio.get_mixture_or_task("tinytok_retrieval").get_dataset(
      LENGTHS, split="test", shuffle=False)
  targets = [ex["targets"].tolist() for ex in ds.as_numpy_iterator()]
  assert targets and all(len(t) == 2 and t[-1] == 1 for t in targets)
  # The same vocabulary given to a second prepare is accepted; a vocabulary
  # trained without item tokens is refused, naming it and the fix.
  again = tmp_path / "again"
  again.mkdir()
  write_task_files(data, again, config=cfg, tasks=("retrieval",),
                   vocab_model=directory / "vocab/spiece.model")
  plain = prepared[0] / "vocab/spiece.model"
  refused = tmp_path / "refused"
  refused.mkdir()
  with pytest.raises(ValueError, match=r"--vocab .*spiece.model: .*title_token"
                     r".* needs each item as one token"):
    write_task_files(data, refused, config=cfg, tasks=("retrieval",),
                     vocab_model=plain)
