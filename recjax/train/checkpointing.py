"""Orbax checkpoints of the train state plus the input position.

Each checkpoint step holds two items: `state` (params, optimizer state, step,
saved sharded with `StandardSave`) and `data` (JSON: batches consumed, seed),
so a restart resumes the exact batch stream, by skipping the batches already
consumed. With `dataset_iterator` given to `save` (the trainer's
`checkpoint_dataset`, T5X's `save_dataset`), a third item, `dataset`, holds
each process's tf.data iterator state, and a restart restores it instead of
skipping (skipping re-runs the input pipeline over every consumed batch).
Orbax writes each step to `<step>.orbax-checkpoint-tmp` and renames it when
complete, so a crash never leaves a half checkpoint that is taken as the
latest (leftover temporary dirs are removed when the next run starts). A
latest checkpoint that cannot be read (truncated or garbled files) is set
aside as `<step>.corrupt-<time>` and the newest readable one is restored
(`restore_latest`); a save that fails (a full disk) raises
`CheckpointSaveError` naming the step still intact.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import logging as std_logging
import os
import pathlib
import shutil
import time
from typing import Any, Mapping, Optional, Tuple

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

STATE = 'state'
DATA = 'data'
DATASET = 'dataset'


class CorruptCheckpointError(ValueError):
  """A checkpoint step that exists but cannot be read (the CLI prints it as
  one line, as other bad input)."""


class CheckpointSaveError(RuntimeError):
  """Saving a step failed (e.g. no space left); earlier steps are intact."""


class CheckpointReadError(RuntimeError):
  """Reading a step failed for a reason that says nothing about the step
  (an I/O timeout, no memory left): retried, then raised; never set aside."""


# What a step that cannot be a checkpoint reads as: a missing or garbled
# file (JSON, msgpack, TensorStore's chunks), arrays of another shape.
_UNREADABLE_TYPES = (json.JSONDecodeError, UnicodeDecodeError,
                     FileNotFoundError, IsADirectoryError, NotADirectoryError,
                     KeyError, EOFError)
_UNREADABLE_TEXT = ('NOT_FOUND', 'DATA_LOSS', 'INVALID_ARGUMENT',
                    'FAILED_PRECONDITION', 'OUT_OF_RANGE', 'not compatible with '
                    'the stored shape', 'Expecting value', 'Unexpected end',
                    'Error decoding', 'Error parsing', 'No such file',
                    'does not exist', 'corrupt', 'truncated', 'Invalid')
# What a healthy step can fail with for a while: the storage or the host.
_TRANSIENT_TYPES = (MemoryError, TimeoutError, ConnectionError,
                    InterruptedError, BlockingIOError)
_TRANSIENT_ERRNOS = (errno.EIO, errno.ETIMEDOUT, errno.EAGAIN, errno.ENOMEM,
                     errno.ECONNRESET, errno.EINTR, errno.ENOSPC)
_TRANSIENT_TEXT = ('UNAVAILABLE', 'DEADLINE_EXCEEDED', 'RESOURCE_EXHAUSTED',
                   'ABORTED', 'Out of memory', 'out of memory', 'timed out',
                   'Timeout')


def _causes(e: BaseException):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def is_unreadable(e: BaseException) -> bool:
  """Whether `e` shows the step itself is not a checkpoint (set it aside)
  rather than a failure of the storage or the host (retry; move nothing).
  An error matching neither is not taken as proof: it is raised."""
  chain = list(_causes(e))
  for c in chain:
    if isinstance(c, _TRANSIENT_TYPES) or (
        isinstance(c, OSError) and c.errno in _TRANSIENT_ERRNOS) or any(
            t in str(c) for t in _TRANSIENT_TEXT):
      return False
  return any(isinstance(c, _UNREADABLE_TYPES) or
             any(t in str(c) for t in _UNREADABLE_TEXT) for c in chain)


def _reason(e: BaseException) -> str:
  """One line on why `e` happened: its innermost cause (TensorStore puts the
  file and the OS error there), 'No space left on device' for a full disk."""
  while e.__cause__ is not None and not (
      isinstance(e, OSError) and e.errno == errno.ENOSPC):
    e = e.__cause__
  text = str(e)
  if ((isinstance(e, OSError) and e.errno == errno.ENOSPC) or
      'No space left on device' in text):
    return os.strerror(errno.ENOSPC)
  if isinstance(e, OSError) and e.strerror:
    return f'{e.strerror}: {e.filename}' if e.filename else e.strerror
  line = text.strip().splitlines()[0] if text.strip() else ''
  return f'{type(e).__name__}: {line[:300]}'


class _QuietSaveThreads(std_logging.Filter):
  """Drops orbax's traceback of a failed save's writer threads while `save`
  runs: `save` reports the failure once, as CheckpointSaveError."""

  def filter(self, record):
    return not ('orbax' in record.pathname and
                'raised an exception' in str(record.msg))


_QUIET_SAVE_THREADS = _QuietSaveThreads()


def _iterator_prefix(item_dir: os.PathLike | str) -> pathlib.Path:
  """This process's iterator checkpoint prefix inside the `dataset` item."""
  return (pathlib.Path(os.fspath(item_dir)) / f'process_'
          f'{jax.process_index()}-of-{jax.process_count()}' / 'iterator')


class TFIteratorHandler(ocp.CheckpointHandler):
  """A tf.data iterator's state, one `tf.train.Checkpoint` per process.

  Restoring needs the same number of processes as saving (each reads its own
  shard's position)."""

  def save(self, directory: os.PathLike, args: 'TFIteratorArgs') -> None:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    prefix = _iterator_prefix(directory)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(iterator=args.iterator).write(os.fspath(prefix))

  def restore(self, directory: os.PathLike, args: 'TFIteratorArgs') -> Any:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    prefix = _iterator_prefix(directory)
    if not prefix.parent.exists():
      raise FileNotFoundError(
          f'{prefix.parent}: no dataset position for this process; the '
          'checkpoint was written by a different number of processes.')
    tf.train.Checkpoint(iterator=args.iterator).read(
        os.fspath(prefix)).assert_consumed()
    return args.iterator


@ocp.args.register_with_handler(TFIteratorHandler, for_save=True,
                                for_restore=True)
@dataclasses.dataclass
class TFIteratorArgs(ocp.args.CheckpointArgs):
  """Save: the iterator to record; restore: the iterator to move (in place)."""
  iterator: Any


class Checkpointer:
  """Periodic, keep-N, resumable checkpoints in `<model_dir>/checkpoints`."""

  def __init__(self, model_dir: str, keep: Optional[int] = None,
               async_save: bool = False):
    self.directory = os.path.join(os.path.abspath(model_dir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save),
        item_names=(STATE, DATA, DATASET))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data: Mapping[str, Any],
           force: bool = True, dataset_iterator: Any = None) -> bool:
    items = {STATE: ocp.args.StandardSave(state),
             DATA: ocp.args.JsonSave(dict(data))}
    if dataset_iterator is not None:
      items[DATASET] = TFIteratorArgs(dataset_iterator)
    logger = std_logging.getLogger('absl')
    logger.addFilter(_QUIET_SAVE_THREADS)
    try:
      saved = self.manager.save(int(step), args=ocp.args.Composite(**items),
                                force=force)
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(int(step), e) from e
    finally:
      logger.removeFilter(_QUIET_SAVE_THREADS)
    if saved:
      logging.info('Saved checkpoint for step %d to %s', step, self.directory)
    return saved

  def restore(self, abstract_state: Any, step: Optional[int] = None,
              retries: int = 2, retry_wait_s: float = 1.0
             ) -> Tuple[Any, Mapping[str, Any]]:
    """Restores (state, data) at `step` (default latest) onto the shardings
    carried by `abstract_state` (a tree of jax.ShapeDtypeStruct).

    Raises CorruptCheckpointError when the step itself cannot be a
    checkpoint (`is_unreadable`: missing or garbled files, arrays of another
    shape). Any other failure (an I/O timeout, no memory left) is retried
    `retries` times, `retry_wait_s` apart (doubling), then raised as
    CheckpointReadError.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.directory}')
    for attempt in range(retries + 1):
      try:
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(**{
                STATE: ocp.args.StandardRestore(abstract_state),
                DATA: ocp.args.JsonRestore(),
            }))
        break
      except Exception as e:  # pylint: disable=broad-except
        where = f'checkpoint step {step} ({self.step_dir(step)})'
        if is_unreadable(e):
          raise CorruptCheckpointError(
              f'{where} cannot be read: {_reason(e)}') from e
        if attempt == retries:
          raise CheckpointReadError(
              f'{where} could not be read after {retries + 1} tries: '
              f'{_reason(e)}; it was left in place (the error does not show '
              'the step is damaged): retry when the storage or memory '
              'allows.') from e
        logging.warning('%s: %s; retrying in %.0fs', where, _reason(e),
                        retry_wait_s * 2**attempt)
        time.sleep(retry_wait_s * 2**attempt)
    missing = _missing_leaves(out[STATE], abstract_state)
    if missing:
      raise CorruptCheckpointError(
          f'checkpoint step {step} ({self.step_dir(step)}) does not fit this '
          f'run: it has no value for {len(missing)} leaves of the train state '
          f'(e.g. {missing[0]}); it was written with other trainable '
          'parameters (train.frozen_patterns), optimizer or model. Resume '
          'with the same settings, or train into a new MODEL_DIR.')
    return out[STATE], out[DATA]

  def restore_latest(self, abstract_state: Any, max_tries: int = 3
                    ) -> Tuple[int, Any, Mapping[str, Any]]:
    """(step, state, data) of the newest step that can be read.

    Unreadable newer steps (CorruptCheckpointError: the step itself is
    damaged) are logged and, once an older one has been restored, set aside
    as `<step>.corrupt-<time>` (so training can save those steps again). If
    none of the newest `max_tries` can be read (or the state does not fit
    `abstract_state`, which fails every step alike) nothing is moved and the
    newest step's error is raised. A failure that does not show the step is
    damaged (CheckpointReadError, after `restore`'s retries) is raised at
    once: nothing is moved and no older step is taken instead.
    """
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'No checkpoint in {self.directory}')
    bad = []
    for step in steps[:max_tries]:
      try:
        state, data = self.restore(abstract_state, step)
      except CorruptCheckpointError as e:
        logging.warning('%s; trying the previous checkpoint', e)
        bad.append((step, e))
        continue
      for b, _ in bad:
        self._set_aside(b)
      if bad:
        logging.warning('Restored checkpoint step %d instead of the '
                        'unreadable step(s) %s', step, [b for b, _ in bad])
      return step, state, data
    raise bad[0][1]

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      # etils' epath, as orbax writes: local disks and the object stores
      # orbax supports alike.
      src = epath.Path(self.step_dir(step))
      dst = src.parent / f'{src.name}.corrupt-{int(time.time())}'
      src.rename(dst)
      logging.warning('Moved unreadable checkpoint %s to %s', src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'recjax_set_aside_{step}')
    self.manager.reload()

  def _save_failed(self, step: int, e: BaseException) -> CheckpointSaveError:
    """The error for a failed save, after dropping its temporary dir."""
    try:  # other writer threads of this save may still be running
      self.manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      pass
    for name in os.listdir(self.directory):
      if name.startswith(f'{step}.orbax-checkpoint-tmp'):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    self.manager.reload()
    intact = [s for s in self.all_steps() if s != step]
    kept = (f'checkpoint step {max(intact)} is intact' if intact else
            'no earlier checkpoint exists')
    return CheckpointSaveError(f'saving step {step} failed: {_reason(e)}; '
                               f'{kept} in {self.directory}')

  def has_dataset(self, step: int) -> bool:
    """Whether step `step` holds this process's dataset iterator position
    (not if it was saved by a different number of processes)."""
    item = os.path.join(self.directory, str(int(step)), DATASET)
    return _iterator_prefix(item).parent.is_dir()

  def restore_dataset(self, iterator: Any, step: int) -> None:
    """Moves the tf.data `iterator` (made from the same pipeline) in place to
    where it was when step `step` was saved."""
    self.manager.restore(int(step), args=ocp.args.Composite(
        **{DATASET: TFIteratorArgs(iterator)}))

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _missing_leaves(restored: Any, target: Any) -> list[str]:
  """Paths where `target` has an array but `restored` holds None.

  Orbax restores an entry saved as an optax MaskedNode (a parameter frozen
  when the step was saved) as None without complaint when the target now
  wants an array there (the parameter trains now); the first train step
  would then fail deep inside the optimizer.
  """
  def flat(tree):
    return {jax.tree_util.keystr(p): v for p, v in
            jax.tree_util.tree_flatten_with_path(
                tree, is_leaf=lambda x: x is None)[0]}
  want = flat(target)
  return [k for k, v in flat(restored).items()
          if v is None and want.get(k) is not None]


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
      shardings)


def latest_state_dir(path: str) -> str:
  """The `state` item of a recjax model dir's (or checkpoints dir's) latest
  step, or of a `checkpoints/<step>` dir."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    path = os.path.join(path, 'checkpoints')
  if not os.path.isdir(os.path.join(path, STATE)):
    steps = sorted(int(d) for d in os.listdir(path) if d.isdigit())
    if not steps:
      raise FileNotFoundError(f'No recjax checkpoint under {path}')
    path = os.path.join(path, str(steps[-1]))
  return os.path.join(path, STATE)


def state_metadata(state_dir: str) -> Any:
  """The saved state's tree of array metadata (shapes, dtypes), no arrays."""
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(state_dir)
  tree = getattr(meta, 'item_metadata', meta)
  return getattr(tree, 'tree', tree)


def restore_params_from_recjax_dir(path: str, abstract_params: Any, *,
                                   subtree: Optional[str] = None) -> Any:
  """Params from a recjax orbax model dir (or its `checkpoints/<step>` dir).

  `abstract_params` carries the target shapes/shardings; the optimizer state
  in the checkpoint is not read. With `subtree`, only `params[subtree]` is
  restored (into `abstract_params`), e.g. ILM's item encoder from phase 1.
  """
  state_dir = latest_state_dir(path)
  # Restore only the params subtree: build a full abstract target from the
  # metadata, replacing params with the requested target.
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype,
                                     sharding=_replicated_like(abstract_params)),
      state_metadata(state_dir))
  if subtree is None:
    target['params'] = abstract_params
  else:
    if subtree not in target.get('params', {}):
      raise ValueError(f'{path}: the checkpoint has no params/{subtree} '
                       f'(it has {sorted(target.get("params", {}))}).')
    # The checkpoint's subtree may hold more than the model needs (phase 1
    # trains the text branch and heads that phase 2 never builds): restore
    # it whole, with the model's leaves in their target shardings.
    have = _flat(target['params'][subtree])
    want = _flat(abstract_params)
    bad = [f'{k}: checkpoint {_sig(have.get(k))} vs model {_sig(v)}'
           for k, v in sorted(want.items()) if _sig(have.get(k)) != _sig(v)]
    if bad:
      raise ValueError(f'{path}: params/{subtree} does not match the model: '
                       + '; '.join(bad[:5]) + (' ...' if len(bad) > 5 else ''))
    target['params'][subtree] = _unflat({**have, **want})
  try:
    with ocp.StandardCheckpointer() as ckptr:
      restored = ckptr.restore(state_dir, target)
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptCheckpointError(
        f'checkpoint {os.path.dirname(state_dir)} cannot be read: '
        f'{_reason(e)}') from e
  if subtree is not None:
    got = _flat(restored['params'][subtree])
    return _unflat({k: got[k] for k in _flat(abstract_params)})
  return restored['params']


def _flat(tree: Any) -> dict:
  """{'a/b/c': leaf} of a nested dict of arrays / ShapeDtypeStructs."""
  return {'/'.join(str(getattr(k, 'key', k)) for k in p): v
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflat(flat: dict) -> dict:
  out: dict = {}
  for key, v in flat.items():
    node = out
    *parents, last = key.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = v
  return out


def _sig(x: Any):
  return None if x is None else (tuple(x.shape), str(x.dtype))


def _replicated_like(tree):
  leaf = jax.tree_util.tree_leaves(tree)[0]
  sharding = leaf.sharding
  return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
