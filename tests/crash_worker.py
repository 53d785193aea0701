"""A zygote for tests/test_crash_safety.py: real processes to SIGKILL, cheaply.

Importing JAX, TensorFlow, SeqIO and recjax takes ~5 s of CPU (20 s on a
busy machine), so starting a fresh interpreter for every run that a test
kills would make the test minutes long. This script imports them once and
forks one child per job: each job is its own process (its own JAX backend,
with the same 8 fake CPU devices as tests/conftest.py), killed with SIGKILL
like any other. The zygote itself never starts a JAX backend (forking after
XLA has started its threads is unsafe).

Protocol: one JSON job per stdin line, `{"id", "kind", "log", "args"}`; the
zygote answers `PID <id> <pid>` when the child starts and `EXIT <id> <code>`
when it ends (a negative code: killed by that signal). The child writes its
stdout and stderr to the job's `log` file. Kinds: `train`, `infer`,
`prepare` (the `recjax prepare` command line), `gin_train` (`recjax train`
with gin files and bindings, over prepared directories it registers first:
the methods' run gins as a user runs them).

Hooks (args) that make kills land where a test wants them:
  slow: seconds of sleep per training batch / after each infer chunk.
  die_in_save: SIGKILL itself while writing the arrays of that step.
  enospc_in_save: the arrays of that step fail to write with ENOSPC.
  die_after_units: `prepare` SIGKILLs itself after writing that many shards.
"""
import errno
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
import importlib.util  # noqa: E402,F401  (gin-config needs it imported first)
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
from orbax.checkpoint._src.serialization import serialization  # noqa: E402

from recjax import main as recjax_main  # noqa: E402
from recjax.infer import jobs  # noqa: E402
from recjax.prompts import export  # noqa: E402
from recjax.train import optimizers  # noqa: E402
from recjax.train import partitioning  # noqa: E402
from recjax.train import test_utils  # noqa: E402
from recjax.train import trainer  # noqa: E402

LENGTHS = {'inputs': 24, 'targets': 12}
TASK = test_utils.register_tiny_task()


def _warm_up():
  """Builds the input pipeline once, so TF's autograph conversions of the
  SeqIO functions (~15 s of CPU) are cached before the children fork."""
  converter = trainer.seqio.EncDecFeatureConverter(pack=True)
  trainer.get_dataset(TASK, LENGTHS, converter, 'train', 8, shuffle=True,
                      seed=3, num_epochs=None, use_cached=False,
                      shard_info=None)


def _die():
  sys.stdout.flush()
  sys.stderr.flush()
  os.kill(os.getpid(), signal.SIGKILL)


def _in_save_of(step, action):
  """Runs `action()` instead of writing the arrays of step `step`."""
  serialize = serialization.async_serialize_from_host
  marker = f'/{step}.orbax-checkpoint-tmp'

  async def patched(*a, **k):
    if marker in repr(a) + repr(k):
      action()
    return await serialize(*a, **k)
  serialization.async_serialize_from_host = patched


def _disk_full():
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _slow_batches(slow):
  numpy_batches = trainer.numpy_batches

  def slow_batches(*a, **k):
    for b in numpy_batches(*a, **k):
      time.sleep(slow)
      yield b
  trainer.numpy_batches = slow_batches


def train(model_dir, train_steps, checkpoint_dataset=False, slow=0.0,
          die_in_save=None, enospc_in_save=None):
  """test_trainer.py's tiny run: mesh (4, 2), checkpoint every 2 steps."""
  if slow:
    _slow_batches(slow)
  if die_in_save is not None:
    def die():
      print(f'DYING in the save of step {die_in_save}', flush=True)
      _die()
    _in_save_of(die_in_save, die)
  if enospc_in_save is not None:
    _in_save_of(enospc_in_save, _disk_full)
  step, _ = trainer.train(
      model=test_utils.tiny_model(), model_dir=model_dir,
      mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
      train_steps=train_steps, batch_size=8,
      partitioner=partitioning.Partitioner(mesh_shape=(4, 2)),
      learning_rate_fn=optimizers.constant(1e-2), checkpoint_period=2,
      log_every=1, random_seed=3, tensorboard=False,
      checkpoint_dataset=checkpoint_dataset)
  print(f'DONE step {step}', flush=True)


def infer(checkpoint_path, output_dir, slow=0.0):
  def after_chunk(c):
    print(f'CHUNK {c}', flush=True)
    time.sleep(slow)
  path = jobs.infer(
      model=test_utils.tiny_model(), checkpoint_path=checkpoint_path,
      mixture_or_task_name=TASK, output_dir=output_dir,
      task_feature_lengths=LENGTHS, batch_size=4, split='validation',
      mode='score', partitioner=partitioning.Partitioner(mesh_shape=(4, 2)),
      chunk_size=4, after_chunk=after_chunk)
  print(f'DONE {path}', flush=True)


def prepare(argv, die_after_units=None):
  if die_after_units is not None:
    write_unit = export._write_unit  # pylint: disable=protected-access
    written = []

    def write_then_die(unit):
      out = write_unit(unit)
      written.append(unit)
      print(f'UNIT {unit}', flush=True)
      if len(written) >= die_after_units:
        _die()
      return out
    export._write_unit = write_then_die  # pylint: disable=protected-access
  recjax_main.run(['recjax', 'prepare'] + list(argv))


def gin_train(gin_files, bindings, prepared_dirs, slow=0.0,
              one_device=False):
  """`recjax train --gin_file=... --gin.X=...` after registering
  `prepared_dirs` ({dataset name: directory}); `one_device`: the mesh takes
  the first device only (its step compiles several times faster)."""
  from recjax.train import train_main  # pylint: disable=g-import-not-at-top
  from seqio_tasks import registry  # pylint: disable=g-import-not-at-top
  for name, directory in prepared_dirs.items():
    registry.register_prepared(directory, dataset_name=name)
  if slow:
    _slow_batches(slow)
  if one_device:
    get_mesh = partitioning.get_mesh

    def first_device_mesh(num_partitions=None, model_parallel_submesh=None,
                          mesh_shape=None, devices=None):
      return get_mesh(num_partitions, model_parallel_submesh, mesh_shape,
                      devices or jax.devices()[:1])
    partitioning.get_mesh = first_device_mesh
  step, _ = train_main.run_train(gin_files, bindings,
                                 import_task_modules=False)
  print(f'DONE step {step}', flush=True)


KINDS = {'train': train, 'infer': infer, 'prepare': prepare,
         'gin_train': gin_train}


def _child(job):
  fd = os.open(job['log'], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  sys.stdout = os.fdopen(1, 'w', buffering=1)
  sys.stderr = os.fdopen(2, 'w', buffering=1)
  code = 0
  try:
    jax.config.update('jax_compilation_cache_dir', job['cache_dir'])
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    KINDS[job['kind']](**job['args'])
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def main():
  _warm_up()
  print('READY', flush=True)
  running = {}
  for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
      _child(job)
    running[pid] = job['id']
    print(f'PID {job["id"]} {pid}', flush=True)
    _, status = os.waitpid(pid, 0)  # one job at a time
    print(f'EXIT {running.pop(pid)} {os.waitstatus_to_exitcode(status)}',
          flush=True)


if __name__ == '__main__':
  main()
