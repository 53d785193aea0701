"""Orbax checkpoints of the train state plus the input position.

Each checkpoint step holds two items: `state` (params, optimizer state, step,
saved sharded with `StandardSave`) and `data` (JSON: batches consumed, seed),
so a restart resumes the exact batch stream, by skipping the batches already
consumed. With `dataset_iterator` given to `save` (the trainer's
`checkpoint_dataset`, T5X's `save_dataset`), a third item, `dataset`, holds
each process's tf.data iterator state, and a restart restores it instead of
skipping (skipping re-runs the input pipeline over every consumed batch).
Orbax writes to a temporary directory and renames it when complete, so a
crash never leaves a readable half checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Mapping, Optional, Tuple

from absl import logging
import jax
import orbax.checkpoint as ocp

STATE = 'state'
DATA = 'data'
DATASET = 'dataset'


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
            max_to_keep=keep, create=True,
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
    saved = self.manager.save(int(step), args=ocp.args.Composite(**items),
                              force=force)
    self.manager.wait_until_finished()
    if saved:
      logging.info('Saved checkpoint for step %d to %s', step, self.directory)
    return saved

  def restore(self, abstract_state: Any, step: Optional[int] = None
             ) -> Tuple[Any, Mapping[str, Any]]:
    """Restores (state, data) at `step` (default latest) onto the shardings
    carried by `abstract_state` (a tree of jax.ShapeDtypeStruct)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.directory}')
    out = self.manager.restore(
        step,
        args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(abstract_state),
            DATA: ocp.args.JsonRestore(),
        }))
    return out[STATE], out[DATA]

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


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
      shardings)


def restore_params_from_recjax_dir(path: str, abstract_params: Any) -> Any:
  """Params from a recjax orbax model dir (or its `checkpoints/<step>` dir).

  `abstract_params` carries the target shapes/shardings; the optimizer state
  in the checkpoint is not read.
  """
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    path = os.path.join(path, 'checkpoints')
  step_dir = path
  if not os.path.isdir(os.path.join(path, STATE)):
    steps = sorted(int(d) for d in os.listdir(path) if d.isdigit())
    if not steps:
      raise FileNotFoundError(f'No recjax checkpoint under {path}')
    step_dir = os.path.join(path, str(steps[-1]))
  state_dir = os.path.join(step_dir, STATE)
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(state_dir)
  tree = getattr(meta, 'item_metadata', meta)
  tree = getattr(tree, 'tree', tree)
  # Restore only the params subtree: build a full abstract target from the
  # metadata, replacing params with the requested target.
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype,
                                     sharding=_replicated_like(abstract_params)),
      tree)
  target['params'] = abstract_params
  restored = ckptr.restore(state_dir, target)
  return restored['params']


def _replicated_like(tree):
  leaf = jax.tree_util.tree_leaves(tree)[0]
  sharding = leaf.sharding
  return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
