"""`python -m recjax.infer.jobs_main {eval,infer} --gin_file=... --gin.KEY=VALUE`.

`run_eval` / `run_infer` are what `recjax eval` / `recjax infer` delegate to:
the same gin handling as `recjax train` (task registry imported, model gin
first, `models/flan_t5_tiny.gin` when no gin file binds MODEL_CONFIG).
"""
from __future__ import annotations

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
from recjax.train import train_main


def parse_job_gin(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
                  gin_search_paths: Optional[Sequence[str]] = None,
                  import_task_modules: bool = True,
                  example_run_gin: str = 'runs/eval.gin') -> None:
  """Parses gin as `train_main.run_train` does (multi-process start-up
  included), without training."""
  distributed.maybe_initialize()
  if not gin_files:
    raise ValueError(f'Give at least one --gin_file, e.g. '
                     f'--gin_file={example_run_gin}')
  if import_task_modules:
    train_main._import_default_task_modules()  # pylint: disable=protected-access
  if not gin_utils.defines_macro(gin_files, 'MODEL_CONFIG',
                                 gin_search_paths or ()):
    print(f'[recjax] no model gin given (none binds MODEL_CONFIG); using '
          f'{train_main.DEFAULT_MODEL_GIN}.', file=sys.stderr)
    gin_files = [train_main.DEFAULT_MODEL_GIN] + list(gin_files)
  gin_utils.parse_gin_flags(gin_files, gin_bindings, gin_search_paths or ())
  logging.info('Operative-to-be gin config:\n%s', gin.config_str())


def run_eval(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
             gin_search_paths: Optional[Sequence[str]] = None,
             import_task_modules: bool = True):
  from recjax.infer import jobs  # pylint: disable=g-import-not-at-top
  parse_job_gin(gin_files, gin_bindings, gin_search_paths, import_task_modules,
                'runs/eval.gin')
  return jobs.evaluate()


def run_infer(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
              gin_search_paths: Optional[Sequence[str]] = None,
              import_task_modules: bool = True):
  from recjax.infer import jobs  # pylint: disable=g-import-not-at-top
  parse_job_gin(gin_files, gin_bindings, gin_search_paths, import_task_modules,
                'runs/infer.gin')
  return jobs.infer()


JOBS = {'eval': run_eval, 'infer': run_infer}


if __name__ == '__main__':
  if len(sys.argv) < 2 or sys.argv[1] not in JOBS:
    sys.exit(f'usage: {sys.argv[0]} {{eval,infer}} --gin_file=... '
             '--gin.KEY=VALUE')
  _job = JOBS[sys.argv[1]]
  _files, _bindings, _paths, _rest = gin_utils.split_gin_args(sys.argv[2:])

  def _main(argv):
    if argv[1:]:
      raise app.UsageError(f'Unknown arguments: {argv[1:]}')
    _job(_files, _bindings, _paths)

  app.run(_main, argv=[sys.argv[0]] + _rest)
