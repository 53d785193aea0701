"""`python -m recjax.train.train_main --gin_file=... --gin.KEY=VALUE`.

`run_train(gin_files, gin_bindings, gin_search_paths)` is what `recjax train`
delegates to: it imports the task registry (`seqio_tasks`, if installed, plus
modules named by gin `import` lines), parses gin and calls `train()`.
"""
from __future__ import annotations

import importlib
import importlib.util  # noqa: F401  (gin-config 0.5.0 needs it before gin)
import sys
from typing import Optional, Sequence

import recjax  # noqa: F401  (quiets TensorFlow before it is imported)
from recjax import host_malloc

host_malloc.tune()  # before JAX/TF start threads; see recjax/host_malloc.py
from absl import app
from absl import logging
import gin

from recjax.train import distributed
from recjax.train import gin_utils
from recjax.train import trainer


def _import_default_task_modules() -> None:
  if importlib.util.find_spec('seqio_tasks') is None:
    logging.info('seqio_tasks is not importable; only tasks registered by gin '
                 'imports are available.')
    return
  importlib.import_module('seqio_tasks')


# The model a run gin trains when no model gin is given (CPU-sized; the
# embedded default). T5X users give one explicitly: models/flan_t5_xl.gin, ...
DEFAULT_MODEL_GIN = 'models/flan_t5_tiny.gin'


def run_train(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
              gin_search_paths: Optional[Sequence[str]] = None,
              import_task_modules: bool = True):
  """Parses gin (model gin first, then the run gin, then bindings) and trains.

  A multi-process run (RECJAX_COORDINATOR_ADDRESS/NUM_PROCESSES/PROCESS_ID or
  RECJAX_MULTI_HOST=1; `recjax.train.distributed`) starts jax.distributed first.
  """
  distributed.maybe_initialize()
  if not gin_files:
    raise ValueError('Give at least one --gin_file, e.g. '
                     '--gin_file=models/flan_t5_tiny.gin '
                     '--gin_file=runs/finetune.gin')
  if import_task_modules:
    _import_default_task_modules()
  if not gin_utils.defines_macro(gin_files, 'MODEL_CONFIG',
                                 gin_search_paths or ()):
    print(f'[recjax] no model gin given (none binds MODEL_CONFIG); using '
          f'{DEFAULT_MODEL_GIN}. Give e.g. --gin_file=models/flan_t5_base.gin '
          'first to choose another.', file=sys.stderr)
    gin_files = [DEFAULT_MODEL_GIN] + list(gin_files)
  gin_utils.parse_gin_flags(gin_files, gin_bindings, gin_search_paths or ())
  logging.info('Operative-to-be gin config:\n%s', gin.config_str())
  return trainer.train()


def main(argv: Sequence[str]) -> None:
  """absl-style main: argv[1:] holds only gin flags."""
  files, bindings, paths, rest = gin_utils.split_gin_args(argv[1:])
  if rest:
    raise app.UsageError(f'Unknown arguments: {rest}')
  run_train(files, bindings, paths)


def _absl_main(gin_files, gin_bindings, gin_search_paths):
  def _main(argv):
    if argv[1:]:
      raise app.UsageError(f'Unknown arguments: {argv[1:]}')
    run_train(gin_files, gin_bindings, gin_search_paths)  # exit status 0
  return _main


if __name__ == '__main__':
  # gin flags (incl. T5X's --gin.KEY=VALUE) are parsed here; absl gets the
  # rest (--verbosity, --alsologtostderr, ...).
  _files, _bindings, _paths, _rest = gin_utils.split_gin_args(sys.argv[1:])
  app.run(_absl_main(_files, _bindings, _paths), argv=[sys.argv[0]] + _rest)
