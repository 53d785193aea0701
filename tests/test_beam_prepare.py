"""The Beam prepare pipeline writes the single-process files byte for byte;
`recjax cache_tasks` caches a registered task that use_cached=True reads back
and trains from."""
from __future__ import annotations

import filecmp
import os

import numpy as np
import pytest

beam = pytest.importorskip("apache_beam")

from recjax.data import beam_prepare  # pylint: disable=g-import-not-at-top,g-bad-import-order
from recjax.data.prepare import build_prepared  # pylint: disable=g-import-not-at-top
from recjax.prompts import TASKS, PromptConfig, export  # pylint: disable=g-import-not-at-top

NAME = "beamtiny"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  """The same tiny world written by both paths (3 shards, seed 3)."""
  data = build_prepared("synthetic", None, name=NAME, kcore=3,
                        options={"num_users": 60, "num_items": 40, "seed": 1})
  assert data.has_ratings and data.num_users > 3
  config = PromptConfig(num_negatives=9)
  single, beamed = (tmp_path_factory.mktemp(n) for n in ("single", "beam"))
  for d in (single, beamed):
    data.write_into(d)
  kwargs = dict(config=config, seed=3, num_shards=3, vocab_size=300)
  m_single = export.write_task_files(data, single, num_workers=1, **kwargs)
  m_beam = beam_prepare.write_task_files(data, beamed, num_workers=2, **kwargs)
  return single, beamed, m_single, m_beam


def _files(root):
  return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file())


def test_every_shard_and_the_manifest_equal_the_single_process_path(written):
  single, beamed, m_single, m_beam = written
  files = _files(single)
  assert _files(beamed) == files
  shards = [f for f in files if ".tfrecord-" in f]
  # 6 user tasks x their splits + 2 item tasks x 2 splits, 3 shards each.
  assert len(shards) == (3 + 3 + 3 + 2 + 2 + 2 + 2 + 3) * 3
  assert "vocab/spiece.model" in files
  differ = [f for f in files if f != "tasks/manifest.json" and
            not filecmp.cmp(single / f, beamed / f, shallow=False)]
  assert not differ
  assert m_beam["seconds"] > 0
  m_single.pop("seconds")
  m_beam.pop("seconds")
  assert m_beam == m_single
  assert sum(m_beam["counts"]["retrieval"].values()) > 100
  assert not (beamed / ".beam_counts").exists()


def test_npz_ranges_read_what_np_load_reads(tmp_path):
  path = tmp_path / "a.npz"
  arrays = {"ptr": np.array([0, 2, 5], np.int64),
            "items": np.arange(5, dtype=np.int32) * 7,
            "ratings": np.array([1.5, np.nan, 3, 4, 5], np.float32),
            "pairs": np.arange(12, dtype=np.int16).reshape(6, 2),
            "empty": np.zeros(0, np.float64)}
  np.savez(path, **arrays)
  ranges = beam_prepare.NpzRanges(path, list(arrays))
  for name, want in arrays.items():
    assert ranges.shape(name) == want.shape
    for lo, hi in [(0, len(want)), (1, 3), (2, 99), (4, 2)]:
      got = ranges.read(name, lo, hi)
      assert got.dtype == want.dtype
      np.testing.assert_array_equal(got, want[lo:hi])
  np.savez_compressed(tmp_path / "c.npz", x=np.arange(3))
  with pytest.raises(ValueError, match="compressed"):
    beam_prepare.NpzRanges(tmp_path / "c.npz", ["x"])


@pytest.mark.parametrize("users_per_read", [1, 4, 50_000])
def test_shard_users_are_the_users_of_the_shard(written, users_per_read):
  single = written[0]
  from recjax.data.prepared import PreparedData  # pylint: disable=g-import-not-at-top
  data = PreparedData.load(single)
  seen = set()
  for shard in range(3):
    got = beam_prepare.read_shard_users(single, shard, 3,
                                        users_per_read=users_per_read)
    assert sorted(got) == list(range(shard, data.num_users, 3))
    for u, (seq, rts) in got.items():
      np.testing.assert_array_equal(seq, data.sequence(u))
      np.testing.assert_array_equal(rts, data.ratings(u))
    seen |= set(got)
  assert seen == set(range(data.num_users))
  lazy = beam_prepare.UsersOnDemand(single)
  for u in (0, 7, data.num_users - 1):
    np.testing.assert_array_equal(lazy.get(u)[0], data.sequence(u))
    np.testing.assert_array_equal(lazy.get(u)[1], data.ratings(u))
  assert lazy.get(data.num_users, "absent") == "absent"


def test_missing_prepared_files_name_the_file(tmp_path):
  data = build_prepared("synthetic", None, kcore=3,
                        options={"num_users": 20, "num_items": 20})
  with pytest.raises(FileNotFoundError, match="sequences.npz"):
    beam_prepare.write_task_files(data, tmp_path, config=PromptConfig())


def test_cache_tasks_round_trip_and_train_from_the_cache(written, tmp_path,
                                                        monkeypatch):
  import seqio  # pylint: disable=g-import-not-at-top
  from seqio_tasks import cache  # pylint: disable=g-import-not-at-top
  beamed = written[1]
  monkeypatch.setenv(cache.PREPARED_DIRS_ENV, "")
  task = f"{NAME}_retrieval"
  out = tmp_path / "cache"
  dirs = cache.cache_tasks([task], out, prepared_dirs=[beamed],
                           num_workers=1)
  assert dirs == [str(out / task)]
  assert (out / task / "COMPLETED").is_file()
  seqio.add_global_cache_dirs([str(out)])
  t = seqio.get_mixture_or_task(task)
  lengths = {"inputs": 512, "targets": 32}

  def examples(use_cached):
    ds = t.get_dataset(lengths, split="train", use_cached=use_cached,
                       shuffle=False)
    return sorted((tuple(ex["inputs"].tolist()), tuple(ex["targets"].tolist()))
                  for ex in ds.as_numpy_iterator())

  cached = examples(True)
  assert len(cached) == written[3]["counts"]["retrieval"]["train"]
  assert cached == examples(False)
  with pytest.raises(ValueError, match="unknown task or mixture 'nosuch'"):
    cache.resolve_tasks(["nosuch"])

  # train() of one step reads the cache (USE_CACHED_TASKS = True).
  from recjax.train import model_api, optimizers, partitioning, test_utils, trainer  # pylint: disable=g-import-not-at-top
  calls = []
  real = type(t).get_dataset

  def spy(self, *args, **kwargs):
    calls.append(kwargs.get("use_cached"))
    return real(self, *args, **kwargs)

  monkeypatch.setattr(type(t), "get_dataset", spy)
  model = model_api.EncoderDecoderModel(
      test_utils.TinyEncoderDecoder(test_utils.TinyConfig(vocab_size=512)),
      None, None)
  step, _ = trainer.train(
      model=model, model_dir=str(tmp_path / "model"),
      mixture_or_task_name=task,
      task_feature_lengths={"inputs": 64, "targets": 8}, train_steps=1,
      batch_size=8, partitioner=partitioning.Partitioner(mesh_shape=(8, 1)),
      learning_rate_fn=optimizers.constant(1e-2), checkpoint_period=1,
      log_every=1, random_seed=0, use_cached_tasks=True)
  assert step == 1
  assert calls and all(calls)


def test_shard_view_keeps_global_user_indices_and_rating_scale():
  from recjax.prompts import common  # pylint: disable=g-import-not-at-top
  items = [{"id": f"i{k}", "title": f"T{k}"} for k in range(4)]
  seq, rts = np.array([2, 0, 3], np.int32), np.full(3, 4.0, np.float32)
  view = beam_prepare.ShardView(items, 10, {7: (seq, rts)}, True, (1.0, 5.0))
  assert view.num_users == 10 and view.num_items == 4
  np.testing.assert_array_equal(view.sequence(7), seq)
  assert len(view.sequence(6)) == 0 and len(view.ratings(6)) == 0
  # The scale is the whole log's (1..5), not this shard's (4..4).
  assert common.Context.build(view, PromptConfig()).rating_scale == (1, 5)
  got = list(TASKS["retrieval"](view, "test", PromptConfig(), 0,
                                shard=(7, 10)))
  assert [ex["target_item"] for ex in got] == ["i3"]


def test_a_worker_reads_and_formats_the_catalogue_once(tmp_path, monkeypatch):
  """The shards one worker writes share one read of the items and one
  prompt context (every item's texts); a rewritten items file is read
  again."""
  from recjax.prompts import common  # pylint: disable=g-import-not-at-top
  data = build_prepared("synthetic", None, name=NAME, kcore=3,
                        options={"num_users": 30, "num_items": 20, "seed": 1})
  data.write_into(tmp_path)
  (tmp_path / beam_prepare._COUNTS_DIR).mkdir()  # pylint: disable=protected-access
  for task in ("retrieval", "ranking"):
    (tmp_path / "tasks" / task).mkdir(parents=True)
  calls = {"read": 0, "build": 0}
  read, build = beam_prepare.read_items, common.Context.build

  def counted_read(d):
    calls["read"] += 1
    return read(d)

  def counted_build(d, c):
    calls["build"] += 1
    return build(d, c)
  monkeypatch.setattr(beam_prepare, "read_items", counted_read)
  monkeypatch.setattr(common.Context, "build", staticmethod(counted_build))
  plan = beam_prepare._Plan(  # pylint: disable=protected-access
      directory=str(tmp_path), num_users=data.num_users, num_shards=3,
      pairs=[("retrieval", "train"), ("ranking", "test")],
      config=PromptConfig(num_negatives=4), seed=0, has_ratings=False,
      rating_range=(0.0, 0.0))
  for shard in range(3):
    beam_prepare._write_shard(plan, shard)  # pylint: disable=protected-access
  assert calls == {"read": 1, "build": 1}
  items = tmp_path / "items.jsonl"
  os.utime(items, ns=(1, 1))  # a new version of the file
  beam_prepare._write_shard(plan, 0)  # pylint: disable=protected-access
  assert calls == {"read": 2, "build": 2}
