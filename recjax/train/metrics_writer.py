"""Training metrics to TensorBoard event files and a JSONL log (process 0 only)."""
from __future__ import annotations

import json
import math
import os
from typing import Mapping, Optional

import jax


class MetricsWriter:
  """Writes scalars to `<model_dir>/<subdir>` (TensorBoard) and a JSONL file.

  JSONL lines are `{"step": int, "split": "train"|"validation", <metric>: float}`.
  """

  def __init__(self, model_dir: str, jsonl_name: str = 'metrics.jsonl',
               tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.model_dir = model_dir
    self.jsonl_path = os.path.join(model_dir, jsonl_name)
    self._writers = {}
    self._tensorboard = tensorboard
    if self.enabled:
      os.makedirs(model_dir, exist_ok=True)
      self._jsonl = open(self.jsonl_path, 'a', encoding='utf-8')

  def _tb(self, split: str):
    if split not in self._writers:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      self._writers[split] = tf.summary.create_file_writer(
          os.path.join(self.model_dir, split))
    return self._writers[split]

  def write_scalars(self, step: int, scalars: Mapping[str, float],
                    split: str = 'train') -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    record = {'step': int(step), 'split': split}
    record.update({k: (v if math.isfinite(v) else str(v))
                   for k, v in clean.items()})
    self._jsonl.write(json.dumps(record, sort_keys=False) + '\n')
    self._jsonl.flush()
    if self._tensorboard:
      with self._tb(split).as_default():
        for k, v in clean.items():
          _write_scalar(k, v, int(step))
      self._tb(split).flush()

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    for w in self._writers.values():
      w.close()


def _write_scalar(tag: str, value: float, step: int) -> None:
  """A TensorBoard scalar via TF's core `tf.summary.write`.

  `tf.summary.scalar` lives in the `tensorboard` package, which is not a
  dependency; the core op with the 'scalars' plugin metadata writes the same
  event records TensorBoard reads.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
  metadata = summary_pb2.SummaryMetadata(
      plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars'))
  tf.summary.write(tag=tag, tensor=tf.constant(value, tf.float32), step=step,
                   metadata=metadata)


def read_jsonl(path: str, split: Optional[str] = None):
  with open(path, encoding='utf-8') as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if split is None or r.get('split') == split]
