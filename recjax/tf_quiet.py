"""Imports TensorFlow without its start-up noise.

TensorFlow's C++ runtime logs CUDA/oneDNN notices to file descriptor 2 before
its logging is initialised, so TF_CPP_MIN_LOG_LEVEL cannot silence them. We
point fd 2 at /dev/null for the duration of the import only; Python errors
raised by the import are re-raised after stderr is restored.
"""
from __future__ import annotations

import os
import sys


def import_tensorflow():
  """Returns the `tensorflow` module, imported quietly on first use."""
  if "tensorflow" in sys.modules or os.environ.get("RECJAX_TF_VERBOSE"):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)
  tf.get_logger().setLevel("ERROR")
  return tf
