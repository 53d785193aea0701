"""Crash safety: SIGKILL at any moment loses nothing and leaves nothing half.

Training, `recjax prepare` and `recjax infer` run in real processes forked
by tests/crash_worker.py (a zygote that imports JAX/TF once); the test kills
them with SIGKILL (or they kill themselves at an exact point through a hook)
and checks what a restart sees: the final parameters equal an uninterrupted
run bit for bit, half-written checkpoints are never the latest, an
unreadable latest checkpoint falls back to the previous one, a full disk
keeps the previous checkpoint, a killed `prepare` leaves no half dataset and
a killed `infer` resumes without duplicate or missing rows.
"""
from __future__ import annotations

import errno
import gc
import glob
import hashlib
import json
import os
import pathlib
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recjax.data.prepared import PreparedData
from recjax.infer import jobs
from recjax.prompts import export
from recjax.train import checkpointing
from recjax.train import optimizers
from recjax.train import partitioning
from recjax.train import test_utils
from recjax.train import trainer

# A failed orbax read or write leaves coroutines of the other arrays
# unawaited; Python reports them when they are collected (see _collect).
pytestmark = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')

WORKER = pathlib.Path(__file__).with_name('crash_worker.py')
LENGTHS = {'inputs': 24, 'targets': 12}  # as in crash_worker.py
STEPS = 12  # checkpoints every 2 steps
TIMEOUT = 240


class Zygote:
  """Drives crash_worker.py: start a job, watch its log, kill it, wait."""

  def __init__(self, directory: pathlib.Path):
    self.directory = directory
    self.cache_dir = str(directory / 'jax_cache')
    self.lines: queue.Queue = queue.Queue()
    self.exits: dict[str, int] = {}
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    self.stderr = open(directory / 'zygote.stderr', 'w')  # pylint: disable=consider-using-with
    self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, str(WORKER)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env,
        cwd=str(WORKER.parent))
    threading.Thread(target=self._read, daemon=True).start()
    self._expect('READY')
    self.count = 0

  def _read(self):
    for line in self.proc.stdout:
      self.lines.put(line.strip())
    self.lines.put(None)

  def _expect(self, prefix: str) -> str:
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
      try:
        line = self.lines.get(timeout=1)
      except queue.Empty:
        continue
      if line is None:
        raise RuntimeError('crash_worker.py died: ' + (
            self.directory / 'zygote.stderr').read_text()[-3000:])
      if line.startswith('EXIT '):
        _, job_id, code = line.split()
        self.exits[job_id] = int(code)
      if line.startswith(prefix):
        return line
    raise TimeoutError(f'no {prefix!r} from crash_worker.py')

  def start(self, kind: str, **args) -> 'Job':
    self.count += 1
    job_id = f'{kind}{self.count}'
    log = self.directory / f'{job_id}.log'
    self.proc.stdin.write(json.dumps(
        {'id': job_id, 'kind': kind, 'log': str(log), 'args': args,
         'cache_dir': self.cache_dir}) + '\n')
    self.proc.stdin.flush()
    pid = int(self._expect(f'PID {job_id} ').split()[2])
    return Job(self, job_id, pid, log)

  def run(self, kind: str, **args) -> tuple[int, str]:
    """Runs a job to its end: (exit code, log)."""
    job = self.start(kind, **args)
    return job.wait(), job.text()

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(timeout=60)
    self.stderr.close()


class Job:
  """One forked child of the zygote."""

  def __init__(self, zygote, job_id, pid, log):
    self.zygote, self.id, self.pid, self.log = zygote, job_id, pid, log

  def text(self) -> str:
    return self.log.read_text() if self.log.exists() else ''

  def wait(self) -> int:
    """Its exit code (negative: the signal that killed it)."""
    if self.id not in self.zygote.exits:
      self.zygote._expect(f'EXIT {self.id} ')  # pylint: disable=protected-access
    return self.zygote.exits[self.id]

  def wait_for(self, pattern: str) -> re.Match:
    """Polls the log until `pattern` appears (fails if the job ends first)."""
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
      m = re.search(pattern, self.text())
      if m:
        return m
      try:
        os.kill(self.pid, 0)
      except ProcessLookupError:
        break
      time.sleep(0.01)
    raise AssertionError(f'{self.id}: no {pattern!r} in its log:\n'
                         f'{self.text()[-3000:]}')

  def kill(self) -> int:
    os.kill(self.pid, signal.SIGKILL)
    return self.wait()


@pytest.fixture(scope='module')
def zygote(tmp_path_factory):
  z = Zygote(tmp_path_factory.mktemp('zygote'))
  yield z
  z.close()


# ------------------------------------------------------------------ helpers
def _setup():
  lengths = trainer.seqio.EncDecFeatureConverter(
      pack=True).get_model_feature_lengths(LENGTHS)
  return trainer.setup_state(
      test_utils.tiny_model(), partitioning.Partitioner(mesh_shape=(4, 2)),
      lambda p: optimizers.build_optimizer(optimizers.adafactor()),
      {k: (1, v) for k, v in lengths.items()}, jax.random.PRNGKey(0))


def _params(path) -> list[np.ndarray]:
  """The params of the latest step of a model dir (or of a step dir)."""
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(
      trainer.load_initial_params(str(path), _setup())))]


def _assert_same_params(model_dir, want):
  got = _params(model_dir)
  assert len(got) == len(want)
  for x, y in zip(got, want):
    np.testing.assert_array_equal(x, y)  # bit for bit


def _steps(model_dir) -> list[int]:
  """Committed steps, as every reader sees them (digit-named dirs)."""
  d = pathlib.Path(model_dir) / 'checkpoints'
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if (
      d.is_dir()) else []


def _copy_steps(reference, model_dir, steps):
  for s in steps:
    shutil.copytree(reference / 'checkpoints' / str(s),
                    model_dir / 'checkpoints' / str(s))


def _truncate_array_files(step_dir) -> None:
  """Cuts every array data file of a step's state to half its size.

  Every one: which file holds which array varies between writes, and a
  restore need not read the half of one file that was cut.
  """
  files = glob.glob(os.path.join(step_dir, 'state', 'ocdbt.process_*', 'd',
                                 '*'))
  assert files, step_dir
  for f in files:
    os.truncate(f, os.path.getsize(f) // 2)


def _resumed_from(log: str) -> int | None:
  m = re.search(r'resumed from \S+/checkpoints/(\d+) ', log)
  return int(m.group(1)) if m else None


def _tree_digest(directory) -> dict[str, str]:
  directory = pathlib.Path(directory)
  return {str(p.relative_to(directory)): hashlib.sha256(
      p.read_bytes()).hexdigest() for p in sorted(directory.rglob('*'))
          if p.is_file()}


def _collect():
  """Collects the coroutines a failed orbax restore left unawaited while
  this module's warning filter is active (not at interpreter exit)."""
  gc.collect()


@pytest.fixture(scope='module')
def reference(zygote, tmp_path_factory):
  """An uninterrupted STEPS-step run: its dir and final params."""
  model_dir = tmp_path_factory.mktemp('reference')
  code, log = zygote.run('train', model_dir=str(model_dir), train_steps=STEPS)
  assert code == 0, log
  assert _steps(model_dir) == list(range(2, STEPS + 1, 2))
  return model_dir, _params(model_dir)


# ------------------------------------------------------------------ training
@pytest.mark.parametrize('checkpoint_dataset', [False, True])
def test_sigkill_during_training_then_resume(zygote, reference, tmp_path,
                                             checkpoint_dataset):
  """Three kills at seeded random steps (one inside a save), each restart
  resuming from the last committed step: the final params are the
  uninterrupted run's, bit for bit."""
  rng = random.Random(1400 + checkpoint_dataset)
  args = dict(model_dir=str(tmp_path), train_steps=STEPS,
              checkpoint_dataset=checkpoint_dataset)
  for trial in range(3):
    committed = _steps(tmp_path)
    done = committed[-1] if committed else 0
    if trial == 1:  # killed while writing the arrays of the next save
      k = done + 2
      job = zygote.start('train', die_in_save=k, **args)
      assert job.wait() == -signal.SIGKILL, job.text()
      assert f'DYING in the save of step {k}' in job.text()
      # Half written, and no reader takes it: not orbax, not recjax's own.
      assert (tmp_path / 'checkpoints' / f'{k}.orbax-checkpoint-tmp').is_dir()
      assert _steps(tmp_path)[-1:] == committed[-1:]
      assert jobs.checkpoint_step(str(tmp_path)) == (done or None)
    else:  # killed from outside, a random moment after it logs step k
      k = rng.randint(done + 1, min(done + 4, STEPS - 5))
      job = zygote.start('train', slow=0.1, **args)
      job.wait_for(rf'\[recjax\] step {k}/')
      time.sleep(rng.uniform(0.0, 0.15))
      assert job.kill() == -signal.SIGKILL, job.text()
    assert _resumed_from(job.text()) == (done or None)
  committed = _steps(tmp_path)
  assert committed[-1] < STEPS
  code, log = zygote.run('train', **args)
  assert code == 0, log
  assert _resumed_from(log) == committed[-1]
  if checkpoint_dataset:
    assert f'restored the data position of step {committed[-1]}' in log
  else:
    assert f'skipping {committed[-1]} consumed batches' in log
  assert not glob.glob(str(tmp_path / 'checkpoints' / '*tmp*'))
  _assert_same_params(tmp_path, reference[1])


def test_uncommitted_step_is_never_the_latest(reference, tmp_path):
  """A step dir cut off mid-write (orbax writes `<step>.orbax-checkpoint-tmp`
  and renames it when complete) is ignored by every reader and removed when
  a Checkpointer (a restart) opens the directory."""
  ref_dir, _ = reference
  _copy_steps(ref_dir, tmp_path, [2, 4])
  half = tmp_path / 'checkpoints' / '6.orbax-checkpoint-tmp'
  shutil.copytree(ref_dir / 'checkpoints' / '6', half)
  (half / 'commit_success.txt').unlink()
  _truncate_array_files(half)
  assert jobs.checkpoint_step(str(tmp_path)) == 4
  for x, y in zip(_params(tmp_path), _params(ref_dir / 'checkpoints' / '4')):
    np.testing.assert_array_equal(x, y)
  setup = _setup()
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() == 4
  step, state, data = ckpt.restore_latest(checkpointing.abstract_with_shardings(
      setup.abstract_state, setup.state_shardings))
  assert step == 4 and int(state.step) == 4 and data['batches_consumed'] == 4
  ckpt.close()
  assert not half.exists()


def test_corrupt_latest_checkpoint_falls_back_to_previous(zygote, reference,
                                                         tmp_path):
  ref_dir, want = reference
  _copy_steps(ref_dir, tmp_path, [2, 4, 6])
  _truncate_array_files(tmp_path / 'checkpoints' / '6')
  setup = _setup()
  target = checkpointing.abstract_with_shardings(setup.abstract_state,
                                                 setup.state_shardings)
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  with pytest.raises(checkpointing.CorruptCheckpointError,
                     match=r'checkpoint step 6 \(\S+/checkpoints/6\) cannot be '
                     r'read: ValueError: OUT_OF_RANGE: Error reading'):
    ckpt.restore(target, 6)
  ckpt.close()
  with pytest.raises(checkpointing.CorruptCheckpointError,
                     match=r'checkpoint \S+/checkpoints/6 cannot be read: '
                     r'ValueError: OUT_OF_RANGE'):
    _params(tmp_path)  # what eval, infer and initial checkpoints read
  _collect()
  code, log = zygote.run('train', model_dir=str(tmp_path), train_steps=STEPS)
  assert code == 0, log
  assert re.search(r'checkpoint step 6 \(\S+\) cannot be read: ValueError: '
                   r'OUT_OF_RANGE.*; trying the previous checkpoint', log)
  assert ('Restored checkpoint step 4 instead of the unreadable step(s) [6]'
          in log)
  assert _resumed_from(log) == 4
  assert len(glob.glob(str(tmp_path / 'checkpoints' / '6.corrupt-*'))) == 1
  assert _steps(tmp_path) == list(range(2, STEPS + 1, 2))
  _assert_same_params(tmp_path, want)


def test_disk_full_while_saving_keeps_previous_checkpoint(zygote, reference,
                                                          tmp_path):
  ref_dir, _ = reference
  _copy_steps(ref_dir, tmp_path, [2, 4])
  before = _tree_digest(tmp_path / 'checkpoints' / '4')
  code, log = zygote.run('train', model_dir=str(tmp_path), train_steps=STEPS,
                         enospc_in_save=6)
  assert code == 1, log
  assert ('CheckpointSaveError: saving step 6 failed: No space left on device; '
          f'checkpoint step 4 is intact in {tmp_path}/checkpoints') in log
  assert 'raised an exception' not in log  # orbax's thread tracebacks
  # The half step is dropped (or, if a writer thread outlived the error,
  # left as a temporary dir that no reader takes and the next run removes).
  assert _steps(tmp_path) == [2, 4]
  assert all(n in ('2', '4') or n.startswith('6.orbax-checkpoint-tmp')
             for n in os.listdir(tmp_path / 'checkpoints'))
  assert _tree_digest(tmp_path / 'checkpoints' / '4') == before
  _assert_same_params(tmp_path, _params(ref_dir / 'checkpoints' / '4'))


# ------------------------------------------------ checkpointer, in process
def _committed(directory) -> list[str]:
  """The entries of a checkpoints dir, failing on anything but committed
  steps and orbax's temporary dirs (which no reader takes)."""
  names = sorted(os.listdir(directory))
  assert all(n.isdigit() or '.orbax-checkpoint-tmp' in n for n in names), names
  return [n for n in names if n.isdigit()]


def _small_state(x):
  return {'params': {'w': jnp.full((64,), x, jnp.float32)},
          'step': jnp.asarray(x, jnp.int32)}


def _small_target():
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
      _small_state(0))


def test_restore_latest_returns_the_newest_readable_step(tmp_path):
  """Every step readable: the newest (by number, not by save order) comes
  back with its own state and data, and nothing is set aside."""
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  for s in (1, 3, 2):
    ckpt.save(s, _small_state(s), {'batches_consumed': s})
  step, state, data = ckpt.restore_latest(_small_target())
  assert step == 3 and data == {'batches_consumed': 3}
  np.testing.assert_array_equal(state['params']['w'], np.full(64, 3.0))
  assert int(state['step']) == 3
  assert sorted(ckpt.all_steps()) == [1, 2, 3]
  assert not [p for p in os.listdir(tmp_path / 'checkpoints')
              if 'corrupt' in p]
  ckpt.close()
  _collect()


class _FailingRestore:
  """Makes the manager's restore of `step` raise `error` `times` times."""

  def __init__(self, ckpt, step, error, times):
    self.real, self.step, self.error, self.left = (ckpt.manager.restore, step,
                                                   error, times)
    self.calls = 0
    ckpt.manager.restore = self

  def __call__(self, step, *args, **kwargs):
    if step == self.step:
      self.calls += 1
      if self.left:
        self.left -= 1
        raise self.error
    return self.real(step, *args, **kwargs)


@pytest.mark.parametrize('error', [
    OSError(errno.EIO, 'Input/output error'), MemoryError(),
    TimeoutError('read timed out'), RuntimeError('something else')],
                         ids=['eio', 'memory', 'timeout', 'unknown'])
def test_a_failure_that_is_not_damage_moves_nothing(tmp_path, monkeypatch,
                                                    error):
  """Errors that do not show the newest step is damaged are retried; if
  they pass, the newest step is restored; if not, they are raised with
  every step left where it is (never a silent rollback to an older step)."""
  monkeypatch.setattr(checkpointing.time, 'sleep', lambda s: None)
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  for s in (1, 2):
    ckpt.save(s, _small_state(s), {'batches_consumed': s})
  assert not checkpointing.is_unreadable(error)
  flaky = _FailingRestore(ckpt, 2, error, times=2)
  step, state, _ = ckpt.restore_latest(_small_target())
  assert step == 2 and flaky.calls == 3
  np.testing.assert_array_equal(state['params']['w'], np.full(64, 2.0))
  broken = _FailingRestore(ckpt, 2, error, times=99)
  with pytest.raises(checkpointing.CheckpointReadError,
                     match=r'step 2 .* after 3 tries: .*left in place'):
    ckpt.restore_latest(_small_target())
  assert broken.calls == 3
  assert sorted(ckpt.all_steps()) == [1, 2]
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2']
  ckpt.close()
  _collect()


def test_damage_is_told_from_failures():
  import json
  damaged = [json.JSONDecodeError('Expecting value', 'x', 0),
             FileNotFoundError(2, 'No such file', 'metadata'),
             ValueError('Requested shape: (16, 4) is not compatible with the '
                        'stored shape: (16, 8).'),
             ValueError('NOT_FOUND: Error opening "zarr" driver')]
  assert all(checkpointing.is_unreadable(e) for e in damaged)
  wrapped = RuntimeError('restore failed')
  wrapped.__cause__ = OSError(errno.ETIMEDOUT, 'Connection timed out')
  assert not checkpointing.is_unreadable(wrapped)
  assert not checkpointing.is_unreadable(
      ValueError('UNAVAILABLE: DATA_LOSS? retry later'))


def test_every_step_unreadable_raises_naming_the_newest(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  for s in (1, 2):
    ckpt.save(s, _small_state(s), {'batches_consumed': s})
  (tmp_path / 'checkpoints' / '2' / 'state' / '_METADATA').write_text('{bad')
  step, state, data = ckpt.restore_latest(_small_target())
  assert step == 1 and data == {'batches_consumed': 1}
  np.testing.assert_array_equal(state['params']['w'], np.ones(64))
  assert ckpt.all_steps() == [1]
  ckpt.save(2, _small_state(2), {'batches_consumed': 2})  # saved again
  for s in (1, 2):
    (tmp_path / 'checkpoints' / str(s) / 'data' / 'metadata').write_text('x')
  with pytest.raises(checkpointing.CorruptCheckpointError,
                     match=r'checkpoint step 2 \(.*/checkpoints/2\) cannot be '
                     r'read: JSONDecodeError: Expecting value'):
    ckpt.restore_latest(_small_target())
  assert ckpt.all_steps() == [1, 2]  # nothing moved when nothing is readable
  ckpt.close()
  _collect()


class _DiskFullIn:
  """Makes orbax's array writes of step `step` fail with ENOSPC, as
  TensorStore's do on a full disk."""

  def __init__(self, step):
    from orbax.checkpoint._src.serialization import serialization  # pylint: disable=g-import-not-at-top
    self.module, self.marker = serialization, f'/{step}.orbax-checkpoint-tmp'
    self.real = serialization.async_serialize_from_host

  async def __call__(self, *args, **kwargs):
    if self.marker in repr(args) + repr(kwargs):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return await self.real(*args, **kwargs)


def test_failed_save_names_the_intact_step(tmp_path, monkeypatch):
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  full = _DiskFullIn(5)
  monkeypatch.setattr(full.module, 'async_serialize_from_host', full)
  ckpt.save(3, _small_state(3), {'batches_consumed': 3})
  with pytest.raises(checkpointing.CheckpointSaveError) as e:
    ckpt.save(5, _small_state(5), {'batches_consumed': 5})
  assert str(e.value) == (
      'saving step 5 failed: No space left on device; checkpoint step 3 is '
      f'intact in {tmp_path}/checkpoints')
  assert _committed(tmp_path / 'checkpoints') == ['3']
  assert ckpt.latest_step() == 3
  assert ckpt.restore(_small_target())[1] == {'batches_consumed': 3}
  ckpt.save(4, _small_state(4), {'batches_consumed': 4})  # still saves
  assert ckpt.all_steps() == [3, 4]
  ckpt.close()
  first = checkpointing.Checkpointer(str(tmp_path / 'other'))
  monkeypatch.setattr(full.module, 'async_serialize_from_host', _DiskFullIn(1))
  with pytest.raises(checkpointing.CheckpointSaveError,
                     match='saving step 1 failed: No space left on device; '
                     'no earlier checkpoint exists'):
    first.save(1, _small_state(1), {'batches_consumed': 1})
  first.close()


def test_real_full_disk_on_a_small_tmpfs(tmp_path):
  """The same with a real ENOSPC from TensorStore, where a tmpfs can be
  mounted (root without a sandbox; skipped elsewhere)."""
  mnt = tmp_path / 'mnt'
  mnt.mkdir()
  res = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=200k', 'tmpfs',
                        str(mnt)], capture_output=True, text=True, check=False)
  if res.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {res.stderr.strip()}')
  try:
    ckpt = checkpointing.Checkpointer(str(mnt / 'run'))
    ckpt.save(1, _small_state(1), {'batches_consumed': 1})
    big = {'params': {'w': jnp.asarray(np.random.RandomState(0).randn(
        100_000).astype(np.float32))}, 'step': jnp.asarray(2, jnp.int32)}
    with pytest.raises(checkpointing.CheckpointSaveError,
                       match='saving step 2 failed: No space left on device; '
                       'checkpoint step 1 is intact'):
      ckpt.save(2, big, {'batches_consumed': 2})
    assert _committed(mnt / 'run' / 'checkpoints') == ['1']
    assert ckpt.restore(_small_target())[1] == {'batches_consumed': 1}
    ckpt.close()
  finally:
    subprocess.run(['umount', str(mnt)], check=False)


# ------------------------------------------------------------------ prepare
def test_prepare_killed_midway_leaves_no_half_dataset(zygote, tmp_path):
  out = tmp_path / 'prepared'
  argv = ['--source=synthetic', f'--output={out}', '--option=num_users=60',
          '--option=num_items=40', '--vocab_size=300', '--tasks=retrieval,ie']
  code, log = zygote.run('prepare', argv=argv, die_after_units=1)
  assert code == -signal.SIGKILL, log
  assert 'UNIT' in log and not out.exists()
  leftovers = glob.glob(str(tmp_path / '.prepared.tmp-*'))
  assert len(leftovers) == 1 and os.listdir(leftovers[0])  # half, hidden
  code, log = zygote.run('prepare', argv=argv)
  assert code == 0, log
  complete = _tree_digest(out)
  manifest = export.read_manifest(out)
  assert sorted(manifest['tasks']) == ['ie', 'retrieval']
  assert PreparedData.load(out).num_users > 0
  # Killed while replacing it: the previous complete dataset stays.
  code, log = zygote.run('prepare', argv=argv + ['--overwrite', '--seed=1'],
                         die_after_units=2)
  assert code == -signal.SIGKILL, log
  assert _tree_digest(out) == complete
  assert len(glob.glob(str(tmp_path / '.prepared.tmp-*'))) == 2  # ignored


# ------------------------------------------------------------------ infer
def test_infer_killed_midway_resumes_without_duplicates(zygote, reference,
                                                        tmp_path):
  ref_dir, _ = reference
  whole, part = tmp_path / 'whole', tmp_path / 'part'
  code, log = zygote.run('infer', checkpoint_path=str(ref_dir),
                         output_dir=str(whole))
  assert code == 0, log
  final = jobs.shard_file_name(0, 1)
  want = [json.loads(l) for l in (whole / final).read_text().splitlines()]
  assert [r['index'] for r in want] == list(range(24))  # 6 chunks of 4
  job = zygote.start('infer', checkpoint_path=str(ref_dir),
                     output_dir=str(part), slow=0.5)
  job.wait_for(r'CHUNK 1\n')
  assert job.kill() == -signal.SIGKILL
  chunk_dir = part / (final + '.chunks')
  done = sorted(int(p.name[6:12]) for p in chunk_dir.glob('chunk-*.jsonl'))
  assert done[:2] == [0, 1] and len(done) < 6 and not (part / final).exists()
  code, log = zygote.run('infer', checkpoint_path=str(ref_dir),
                         output_dir=str(part))
  assert code == 0, log
  computed = [int(c) for c in re.findall(r'CHUNK (\d+)', log)]
  assert computed == [c for c in range(6) if c not in done]
  got = [json.loads(l) for l in (part / final).read_text().splitlines()]
  assert [r['index'] for r in got] == list(range(24))  # none twice or lost
  assert got == want
  assert not chunk_dir.exists()


# ---------------------------------------------------------------- methods
# ILM phase 2 and RSLLM stage 2 through their run gins, as a user starts
# them, on one tiny catalogue (FLAN-T5 backbone, one device).
METHOD_STEPS = 8  # checkpoints every 2 steps
SLOT_K = 2
TINY_T5 = ['T5Config.emb_dim = 16', 'T5Config.num_heads = 2',
           'T5Config.head_dim = 8', 'T5Config.mlp_dim = 32',
           'T5Config.num_encoder_layers = 1',
           'T5Config.num_decoder_layers = 1']
METHOD_COMMON = TINY_T5 + [
    'VOCAB_SIZE = 512', "ACTIVATION_DTYPE = 'float32'", 'DROPOUT_RATE = 0.1',
    'BATCH_SIZE = 8', 'EVAL_PERIOD = 0', 'train.log_every = 1',
    'LEARNING_RATE = 0.01', 'SAVING_PERIOD = 2', 'RANDOM_SEED = 3',
    'train.tensorboard = False']
ILM_ENCODER = [
    f'NUM_QUERY_TOKENS = {SLOT_K}', 'ITEM_ENCODER_HIDDEN = 32',
    'ITEM_ENCODER_LAYERS = 1', 'ITEM_ENCODER_HEADS = 2',
    'ITEM_ENCODER_MLP = 64', 'CF_DIM = 16', 'LM_EMB_DIM = 16',
    'ItemEncoderConfig.max_text_length = 24',
    'ItemEncoderConfig.contrastive_dim = 16']


@pytest.fixture(scope='module')
def method_world(tmp_path_factory):
  """The catalogue prepared for ILM's item slots and for RSLLM's ID slots
  and user slot, and a SASRec over it: {command name: (gin files, bindings
  without MODEL_DIR, prepared dirs)}."""
  from recjax.baselines import cli as baselines_cli  # pylint: disable=g-import-not-at-top
  from recjax.prompts import PromptConfig  # pylint: disable=g-import-not-at-top
  from tiny_data import tiny_data  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('methods')
  data = tiny_data(n_users=24, n_items=40, min_len=4, max_len=8)
  dirs = {}
  for name, config in (
      ('crsllm', dict(item_format='title', item_slots='append',
                      user_slot=True)),
      ('cilm', dict(item_slots='replace'))):
    d = root / name
    data.save(d)
    vocab = ({'vocab_size': 400} if not dirs else
             {'vocab_model': dirs['crsllm'] / 'vocab' / 'spiece.model'})
    export.write_task_files(
        data, d, config=PromptConfig(num_negatives=4, max_history=4,
                                     **config),
        tasks=('retrieval', 'ranking'), num_shards=1, **vocab)
    dirs[name] = d
  sasrec_dir = root / 'sasrec'
  baselines_cli.write_result(baselines_cli.train_baseline(
      'sasrec', data, epochs=1, log=None, hidden=8, inner=16, max_len=8),
                             data, sasrec_dir)
  prepared = {k: str(v) for k, v in dirs.items()}
  # The LM is a fresh init (INITIAL_CHECKPOINT_PATH = None) and stays
  # frozen: a restart that re-read any initial parameter instead of the
  # run's checkpoint would show in the trained parts.
  common = METHOD_COMMON + [f'TRAIN_STEPS = {METHOD_STEPS}']
  return {
      'ilm_phase2': (['models/flan_t5_tiny.gin', 'runs/ilm_phase2.gin'],
                     common + ILM_ENCODER + [
                         "MIXTURE_OR_TASK_NAME = 'cilm_rec'",
                         'ITEM_ENCODER_CHECKPOINT = None',
                         "TASK_FEATURE_LENGTHS = {'inputs': 96, "
                         "'targets': 12, 'slot_items': 12}"], prepared),
      'rsllm_stage2': (['models/flan_t5_tiny.gin', 'runs/rsllm_stage2.gin'],
                       common + [
                           "MIXTURE_OR_TASK_NAME = 'crsllm_rec'",
                           f"SASREC_DIR = '{sasrec_dir}'",
                           f'TOKENS_PER_SLOT = {SLOT_K}', 'LM_EMB_DIM = 16',
                           'LORA_RANK = 2',
                           "TASK_FEATURE_LENGTHS = {'inputs': 160, "
                           "'targets': 12, 'slot_items': 16}"], prepared),
  }


def _full_state(model_dir) -> dict[str, np.ndarray]:
  """Every array of the latest checkpoint's state (params and optimizer
  state), flat by path, restored on one device."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  state_dir = checkpointing.latest_state_dir(str(model_dir))
  meta = checkpointing.state_metadata(state_dir)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(state_dir, abstract)
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in
          jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]}


def _trains(method: str, path: str) -> bool:
  """Whether a params path is one the method's run gin trains."""
  if method == 'ilm_phase2':
    return path.startswith("['item_encoder']")
  return ("lora_" in path or (path.startswith("['rsllm']") and
                              "['recommender']" not in path))


@pytest.mark.parametrize('method', ['ilm_phase2', 'rsllm_stage2'])
def test_sigkill_during_a_method_run_then_the_same_command(
    zygote, method_world, tmp_path, method):
  """ILM phase 2 (frozen LM, the encoder trains) and RSLLM stage 2 (LoRA +
  projector over a frozen SASRec and base), killed at a seeded random
  moment and started again with the same command: the final parameters and
  optimizer state equal an uninterrupted run's bit for bit, and the frozen
  parts have no optimizer state."""
  gin_files, bindings, prepared = method_world[method]

  def command(model_dir, **hooks):  # one device: what is tested is the
    # state a restart restores (the sharded save is the tiny run's, above)
    return dict(gin_files=gin_files, prepared_dirs=prepared, one_device=True,
                bindings=bindings + [f"MODEL_DIR = '{model_dir}'"], **hooks)

  ref_dir, run_dir = tmp_path / 'reference', tmp_path / 'run'
  code, log = zygote.run('gin_train', **command(ref_dir))
  assert code == 0 and f'DONE step {METHOD_STEPS}' in log, log
  rng = random.Random(f'{method}-kill')
  k = rng.randint(3, METHOD_STEPS - 3)
  job = zygote.start('gin_train', **command(run_dir, slow=0.1))
  job.wait_for(rf'\[recjax\] step {k}/')
  time.sleep(rng.uniform(0.0, 0.15))
  assert job.kill() == -signal.SIGKILL, job.text()
  committed = _steps(run_dir)
  assert committed and committed[-1] < METHOD_STEPS, committed
  code, log = zygote.run('gin_train', **command(run_dir))
  assert code == 0 and f'DONE step {METHOD_STEPS}' in log, log
  assert _resumed_from(log) == committed[-1]
  want, got = _full_state(ref_dir), _full_state(run_dir)
  assert sorted(got) == sorted(want)
  for path, x in want.items():
    np.testing.assert_array_equal(got[path], x, err_msg=path)  # bit for bit
  # Optimizer moments exist for the trained subtrees only (and for all of
  # them); the frozen LM (and SASRec) were never written into them.
  params = {p[len("['params']"):] for p in want if p.startswith("['params']")}
  trained = {p for p in params if _trains(method, p)}
  assert trained and trained != params
  for moment in ("['mu']", "['nu']"):
    has = {p.split(moment, 1)[1] for p in want
           if p.startswith("['opt_state']") and moment in p}
    assert has == trained, (method, moment, sorted(has ^ trained)[:5])
  if method == 'rsllm_stage2':  # the zero-initialised adapters trained
    assert any(np.abs(want["['params']" + p]).max() > 0 for p in trained
               if 'lora_b' in p)
