"""A real multi-process run on one machine: 2 processes x 4 fake CPU devices.

Each child is started as a pod worker is, through recjax's own environment
(RECJAX_COORDINATOR_ADDRESS / RECJAX_NUM_PROCESSES / RECJAX_PROCESS_ID ->
`jax.distributed.initialize`, gloo collectives on CPU, loopback only) and runs
the gin entry points in turn: `train` for 2 steps (checkpoint written by both
processes), `train` to step 4 (restored by both), `eval` and `infer` of that
checkpoint. The mesh is (data=2, model=4): 'data' spans the two processes,
each process feeds its own SeqIO shard (`ShardInfo(index=i, num_shards=2)`).
The validation shards are deliberately uneven (process 0 holds more batches),
so train-eval only finishes if the hosts agree on its step count.

The test process (8 devices, conftest) is the single-process reference on the
same (2, 4) mesh: it trains on the same global batches (the two shards'
host batches side by side, which is what the processes feed) and evaluates
the multi-process checkpoint. Losses, parameters, eval metrics and infer rows
must agree; eval/infer outputs must be written by process 0 only, once.
Process 1 is shown a finished infer chunk that process 0 does not see (as with
host-local disks): the hosts must still agree on which chunks to compute.

The file is also the child's program: `python tests/test_multiprocess.py SPEC`.
"""
from __future__ import annotations

import builtins
import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

NUM_PROCESSES = 2
LOCAL_DEVICES = 4
LENGTHS = {'inputs': 96, 'targets': 8}
TINY_T5 = dict(vocab_size=512, emb_dim=16, num_heads=4, head_dim=4,
               mlp_dim=32, num_encoder_layers=1, num_decoder_layers=1,
               dtype='float32')
NAME = 'mptiny'
CHILD_TIMEOUT_S = 600


def _common_bindings():
  return [f'T5Config.{k} = {v!r}' for k, v in TINY_T5.items()] + [
      'VOCAB_SIZE = 512', f'TASK_FEATURE_LENGTHS = {LENGTHS!r}',
      'BATCH_SIZE = 8', 'partitioning.Partitioner.num_partitions = 4']


def train_bindings(model_dir, steps):
  return _common_bindings() + [
      f"MODEL_DIR = '{model_dir}'", f"MIXTURE_OR_TASK_NAME = '{NAME}_rec'",
      f'TRAIN_STEPS = {steps}', 'DROPOUT_RATE = 0.1', 'LEARNING_RATE = 0.01',
      'SAVING_PERIOD = 2', 'EVAL_PERIOD = 2', 'EVAL_STEPS = None',
      'RANDOM_SEED = 5', 'train.log_every = 1', 'train.tensorboard = False',
      'train.checkpoint_dataset = True']


def eval_bindings(checkpoint, out):
  return _common_bindings() + [
      f"CHECKPOINT_PATH = '{checkpoint}'", f"EVAL_OUTPUT_DIR = '{out}'",
      f"MIXTURE_OR_TASK_NAME = '{NAME}_rec'", 'NUM_BEAMS = 4',
      'NUM_EXAMPLES = 8', 'evaluate.tensorboard = False']


def infer_bindings(checkpoint, out):
  return _common_bindings() + [
      f"CHECKPOINT_PATH = '{checkpoint}'", f"INFER_OUTPUT_DIR = '{out}'",
      f"MIXTURE_OR_TASK_NAME = '{NAME}_retrieval'", 'BATCH_SIZE = 4',
      'CHUNK_SIZE = 4']


# ------------------------------------------------------------------ child
def _worker(spec_path: str) -> None:
  """One process of the 2-process run (see module doc)."""
  spec = json.loads(pathlib.Path(spec_path).read_text())
  import gin  # pylint: disable=g-import-not-at-top
  from recjax.infer import jobs_main  # pylint: disable=g-import-not-at-top
  from recjax.train import train_main  # pylint: disable=g-import-not-at-top

  # Record every file this process writes or renames into the job outputs.
  writes = []
  watched = (spec['eval_dir'], spec['infer_dir'])

  def note(path):
    path = os.path.abspath(os.fspath(path))
    if path.startswith(watched):
      writes.append(path)

  real_replace, real_open = os.replace, builtins.open

  def replace(src, dst, **kwargs):
    note(dst)
    return real_replace(src, dst, **kwargs)

  def open_(file, mode='r', *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and set(mode) & set('wax'):
      note(file)
    return real_open(file, mode, *args, **kwargs)
  os.replace, builtins.open = replace, open_

  import jax  # pylint: disable=g-import-not-at-top
  from recjax.train import distributed  # pylint: disable=g-import-not-at-top
  distributed.maybe_initialize()  # as train_main does; here to know our index
  if jax.process_index() == 1:
    # This host's disk shows a chunk of infer's output that process 0's does
    # not (host-local disks): the hosts must still agree on what to compute.
    real_exists = os.path.exists
    os.path.exists = lambda p: (os.fspath(p).endswith('chunk-000001.jsonl')
                                or real_exists(p))

  def run(fn, gin_files, bindings):
    start = time.time()
    gin.clear_config()
    try:
      return fn(gin_files, bindings)
    finally:
      gin.clear_config()
      print(f'[worker] {fn.__name__} took {time.time() - start:.1f}s',
            file=sys.stderr, flush=True)

  t5_gins = ['models/flan_t5_tiny.gin']
  out = {}
  for steps in (2, 4):  # the second run restores step 2 and goes on
    out[f'train_{steps}'] = run(
        train_main.run_train, t5_gins + ['runs/finetune.gin'],
        train_bindings(spec['model_dir'], steps))[0]
  out['process_index'] = jax.process_index()
  out['process_count'] = jax.process_count()
  out['eval'] = run(jobs_main.run_eval, t5_gins + ['runs/eval.gin'],
                    eval_bindings(spec['model_dir'], spec['eval_dir']))
  out['infer_path'] = run(jobs_main.run_infer, t5_gins + ['runs/infer.gin'],
                          infer_bindings(spec['model_dir'],
                                         spec['infer_dir']))
  out['writes'] = writes
  pathlib.Path(spec['result']).write_text(json.dumps(out))
  print(f'[worker {jax.process_index()}] done', file=sys.stderr, flush=True)


if __name__ == '__main__':
  _worker(sys.argv[1])
  sys.exit(0)


# ------------------------------------------------------------------ test
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from recjax.infer import jobs_main  # noqa: E402
from recjax.prompts import PromptConfig  # noqa: E402
from recjax.prompts.export import write_task_files  # noqa: E402
from recjax.train import metrics_writer  # noqa: E402
from recjax.train import optimizers  # noqa: E402
from recjax.train import partitioning  # noqa: E402
from recjax.train import train_main  # noqa: E402
from recjax.train import trainer  # noqa: E402
from seqio_tasks import registry  # noqa: E402
from tiny_data import tiny_data  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
T5_GINS = ['models/flan_t5_tiny.gin']


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _child_env(port: int, process_id: int, prepared_dir, cache_dir) -> dict:
  env = dict(os.environ)
  env.update({
      'RECJAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}',
      'RECJAX_NUM_PROCESSES': str(NUM_PROCESSES),
      'RECJAX_PROCESS_ID': str(process_id),
      'RECJAX_PREPARED_DIRS': str(prepared_dir),
      'XLA_FLAGS': f'--xla_force_host_platform_device_count={LOCAL_DEVICES}',
      'JAX_PLATFORMS': 'cpu',
      # Cross-process collectives on CPU (gloo is jax 0.10's default; said
      # here so a changed default cannot turn the run into a hang).
      'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo',
      'CUDA_VISIBLE_DEVICES': '',
      # The second `train` re-jits the first one's step: compile it once.
      'JAX_COMPILATION_CACHE_DIR': str(cache_dir / f'process_{process_id}'),
      'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
      'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
      'TF_CPP_MIN_LOG_LEVEL': '3',
      'PYTHONPATH': os.pathsep.join(
          [str(ROOT), str(ROOT / 'tests')] +
          [p for p in [os.environ.get('PYTHONPATH')] if p]),
  })
  return env


def _run_children(tmp: pathlib.Path, prepared_dir) -> list:
  """Starts the processes, waits (with a timeout), kills all on any failure."""
  port = _free_port()
  procs, logs, results = [], [], []
  for i in range(NUM_PROCESSES):
    spec = {'model_dir': str(tmp / 'model'), 'eval_dir': str(tmp / 'eval'),
            'infer_dir': str(tmp / 'infer'),
            'result': str(tmp / f'result_{i}.json')}
    spec_path = tmp / f'spec_{i}.json'
    spec_path.write_text(json.dumps(spec))
    log = open(tmp / f'process_{i}.log', 'wb')  # pylint: disable=consider-using-with
    logs.append(log)
    results.append(pathlib.Path(spec['result']))
    procs.append(subprocess.Popen(
        [sys.executable, __file__, str(spec_path)], cwd=str(ROOT),
        env=_child_env(port, i, prepared_dir, tmp / 'jax_cache'), stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True))
  deadline = time.time() + CHILD_TIMEOUT_S
  failed = None
  try:
    while any(p.poll() is None for p in procs):
      bad = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
      if bad:
        failed = f'process {bad[0]} exited with {procs[bad[0]].returncode}'
        break
      if time.time() > deadline:
        failed = f'timed out after {CHILD_TIMEOUT_S}s'
        break
      time.sleep(0.2)
    if failed is None:
      bad = [i for i, p in enumerate(procs) if p.returncode != 0]
      if bad:
        failed = f'process {bad[0]} exited with {procs[bad[0]].returncode}'
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    for log in logs:
      log.close()
  if failed:
    tails = '\n'.join(
        f'----- process {i} (last 4000 chars) -----\n' +
        (tmp / f'process_{i}.log').read_text(errors='replace')[-4000:]
        for i in range(NUM_PROCESSES))
    pytest.fail(f'multi-process run failed: {failed}\n{tails}')
  return [json.loads(r.read_text()) for r in results]


def _two_shard_get_dataset(monkeypatch, eval_batches_per_shard: list):
  """The single-process run reads what the 2 processes read: each batch
  (training and train-eval) is shard 0's host batch followed by shard 1's, the
  global batch the processes assemble with make_array_from_process_local_data
  (train-eval pads short batches with zero rows, wherever they sit). The
  validation shards are uneven (`_make_validation_shards_uneven`): in
  train-eval the host that runs out feeds all-zero batches until the other
  is done (`trainer.agreed_eval_batches`), and so does this reference; the
  host batch counts it saw go into `eval_batches_per_shard`."""
  original = trainer.get_dataset

  def get_dataset(name, lengths, converter, split, host_batch_size, *,
                  shuffle, seed, num_epochs, use_cached, shard_info,
                  pad_last=False):
    assert shard_info.num_shards == 1, shard_info
    shards = [original(name, lengths, converter, split,
                       host_batch_size // NUM_PROCESSES, shuffle=shuffle,
                       seed=seed, num_epochs=num_epochs, use_cached=use_cached,
                       shard_info=seqio.ShardInfo(i, NUM_PROCESSES),
                       pad_last=pad_last) for i in range(NUM_PROCESSES)]
    if num_epochs is None:  # training: both shards repeat
      return tf.data.Dataset.zip(tuple(shards)).map(
          lambda *bs: {k: tf.concat([b[k] for b in bs], 0) for k in bs[0]})
    per_host = host_batch_size // NUM_PROCESSES
    batches = [list(trainer.numpy_batches(iter(ds), per_host, pad_last))
               for ds in shards]
    eval_batches_per_shard.append([len(b) for b in batches])
    steps = max(len(b) for b in batches)
    zero = {k: np.zeros_like(v) for k, v in batches[0][0].items()}
    glued = [{k: np.concatenate([(b[n] if n < len(b) else zero)[k]
                                 for b in batches]) for k in zero}
             for n in range(steps)]
    return tf.data.Dataset.from_tensor_slices(
        {k: np.stack([g[k] for g in glued]) for k in zero})
  monkeypatch.setattr(trainer, 'get_dataset', get_dataset)


def _make_validation_shards_uneven(prepared_dir: pathlib.Path) -> None:
  """Moves all but one record of each task's validation shard 1 into shard 0
  (counts per task unchanged), so process 0 has more train-eval batches than
  process 1: an extra collective on one host would hang the run."""
  for task_dir in sorted((prepared_dir / 'tasks').iterdir()):
    files = sorted(task_dir.glob(f'validation.tfrecord-*-of-0000{NUM_PROCESSES}'))
    if len(files) != NUM_PROCESSES:
      continue
    records = [list(tf.data.TFRecordDataset(str(f)).as_numpy_iterator())
               for f in files]
    moved = [records[0] + records[1][1:], records[1][:1]]
    for f, recs in zip(files, moved):
      with tf.io.TFRecordWriter(str(f)) as w:
        for r in recs:
          w.write(r)


def _run_gin(fn, gin_files, bindings):
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    return fn(gin_files, bindings, import_task_modules=False)
  finally:
    gin.clear_config()


def _params(model_dir):
  """Latest params of a recjax model dir, on this process's (2, 4) mesh."""
  from recjax.models import t5  # pylint: disable=g-import-not-at-top
  from recjax.train import model_api  # pylint: disable=g-import-not-at-top
  model = model_api.EncoderDecoderModel(t5.Transformer(t5.T5Config(**TINY_T5)))
  part = partitioning.Partitioner(num_partitions=4)
  lengths = seqio.EncDecFeatureConverter(pack=True).get_model_feature_lengths(
      LENGTHS)
  setup = trainer.setup_state(
      model, part, lambda p: optimizers.build_optimizer(optimizers.adafactor()),
      {k: (1, v) for k, v in lengths.items()}, jax.random.PRNGKey(0))
  return jax.device_get(trainer.load_initial_params(str(model_dir), setup))


def _rows(path):
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _jsonl(model_dir, split):
  return metrics_writer.read_jsonl(os.path.join(model_dir, 'metrics.jsonl'),
                                   split)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  prepared_dir = tmp_path_factory.mktemp('mp_prepared')
  data = dataclasses.replace(tiny_data(n_users=12, n_items=16, min_len=4,
                                       max_len=8), name=NAME)
  data.write_into(prepared_dir)
  # Two files per split: each process reads its own file (file-level shards).
  write_task_files(data, prepared_dir, config=PromptConfig(num_negatives=7,
                                                           max_history=5),
                   tasks=['retrieval', 'ranking', 'rating', 'ie'],
                   vocab_size=400, num_shards=NUM_PROCESSES)
  _make_validation_shards_uneven(prepared_dir)
  assert f'{NAME}_rec' in registry.register_prepared(prepared_dir)
  tmp = tmp_path_factory.mktemp('mp_run')
  start = time.time()
  children = _run_children(tmp, prepared_dir)
  child_seconds = time.time() - start
  ref = tmp_path_factory.mktemp('mp_reference')
  eval_batches_per_shard = []
  with pytest.MonkeyPatch.context() as mp:
    _two_shard_get_dataset(mp, eval_batches_per_shard)
    _run_gin(train_main.run_train, T5_GINS + ['runs/finetune.gin'],
             train_bindings(ref / 'model', 4))
  _run_gin(jobs_main.run_eval, T5_GINS + ['runs/eval.gin'],
           eval_bindings(tmp / 'model', ref / 'eval'))
  _run_gin(jobs_main.run_infer, T5_GINS + ['runs/infer.gin'],
           infer_bindings(tmp / 'model', ref / 'infer'))
  print(f'[test_multiprocess] children {child_seconds:.1f}s, total '
        f'{time.time() - start:.1f}s', file=sys.stderr)
  return tmp, ref, children, eval_batches_per_shard


def test_children_ran_as_two_processes(runs):
  children = runs[2]
  assert [c['process_index'] for c in children] == [0, 1]
  assert all(c['process_count'] == NUM_PROCESSES for c in children)
  assert all(c['train_2'] == 2 and c['train_4'] == 4 for c in children)


def test_losses_and_params_equal_single_process(runs):
  tmp, ref, _, eval_batches_per_shard = runs
  got, want = _jsonl(tmp / 'model', 'train'), _jsonl(ref / 'model', 'train')
  # Steps 1-2 from the first run, 3-4 after restoring its checkpoint.
  assert [r['step'] for r in got] == [r['step'] for r in want] == [1, 2, 3, 4]
  np.testing.assert_allclose([r['loss'] for r in got],
                             [r['loss'] for r in want], rtol=1e-5)
  np.testing.assert_allclose([r['grad_norm'] for r in got],
                             [r['grad_norm'] for r in want], rtol=1e-5)
  assert len({r['loss'] for r in got}) == 4  # it trains: losses move
  got_val = _jsonl(tmp / 'model', 'validation')
  want_val = _jsonl(ref / 'model', 'validation')
  assert [r['step'] for r in got_val] == [r['step'] for r in want_val] == [2, 4]
  # The hosts held different numbers of validation batches at each eval
  # (process 0 more): both still ran every eval, and the whole split counts.
  assert len(eval_batches_per_shard) == 2, eval_batches_per_shard
  assert all(a > b >= 1 for a, b in eval_batches_per_shard), (
      eval_batches_per_shard)
  np.testing.assert_allclose([r['num_tokens'] for r in got_val],
                             [r['num_tokens'] for r in want_val])
  np.testing.assert_allclose([r['loss'] for r in got_val],
                             [r['loss'] for r in want_val], rtol=1e-4)
  # Both processes saved their data position into each checkpoint.
  for step in (2, 4):
    ds_dir = tmp / 'model' / 'checkpoints' / str(step) / 'dataset'
    assert sorted(d for d in os.listdir(ds_dir) if d.startswith('process')) == [
        'process_0-of-2', 'process_1-of-2']
  got_p, want_p = _params(tmp / 'model'), _params(ref / 'model')
  flat_got = jax.tree_util.tree_flatten_with_path(got_p)[0]
  flat_want = jax.tree_util.tree_flatten_with_path(want_p)[0]
  assert [k for k, _ in flat_got] == [k for k, _ in flat_want]
  for (path, x), (_, y) in zip(flat_got, flat_want):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


def test_eval_metrics_equal_single_process_and_written_once(runs):
  tmp, ref, children, _ = runs
  want = json.loads((ref / 'eval' / 'metrics.json').read_text())
  got = json.loads((tmp / 'eval' / 'metrics.json').read_text())
  assert got['step'] == want['step'] == 4
  assert sorted(got['metrics']) == [f'{NAME}_ranking', f'{NAME}_rating',
                                    f'{NAME}_retrieval']
  for task, metrics in want['metrics'].items():
    assert sorted(got['metrics'][task]) == sorted(metrics)
    for k, v in metrics.items():
      assert got['metrics'][task][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (
          task, k)
  # Every host computed the same metrics; process 0 alone wrote them.
  assert children[0]['eval'] == children[1]['eval']
  assert children[1]['writes'] == []
  eval_writes = [w for w in children[0]['writes']
                 if w.startswith(str(tmp / 'eval'))]
  assert len(eval_writes) == len(set(eval_writes))
  for task in got['metrics']:
    got_rows = _rows(tmp / 'eval' / 'predictions' / f'{task}.jsonl')
    want_rows = _rows(ref / 'eval' / 'predictions' / f'{task}.jsonl')
    assert len(got_rows) == got['metrics'][task]['count'] == len(want_rows)
    assert [r['inputs'] for r in got_rows] == [r['inputs'] for r in want_rows]
    assert [r['prediction'] for r in got_rows] == [
        r['prediction'] for r in want_rows]


def test_infer_rows_equal_single_process_and_written_once(runs):
  tmp, ref, children, _ = runs
  name = 'predictions-00000-of-00001.jsonl'
  assert children[0]['infer_path'] == children[1]['infer_path'] == str(
      tmp / 'infer' / name)
  assert sorted(os.listdir(tmp / 'infer')) == [name]  # no chunks, no tmp files
  got, want = _rows(tmp / 'infer' / name), _rows(ref / 'infer' / name)
  assert [r['index'] for r in got] == list(range(len(want)))  # none missing
  assert len(got) > 4  # several chunks, several global batches
  assert [r['prediction'] for r in got] == [r['prediction'] for r in want]
  np.testing.assert_allclose([r['scores'][0] for r in got],
                             [r['scores'][0] for r in want], rtol=1e-5)
  infer_writes = [w for w in children[0]['writes']
                  if w.startswith(str(tmp / 'infer'))]
  assert infer_writes.count(str(tmp / 'infer' / name)) == 1
  assert children[1]['writes'] == []
