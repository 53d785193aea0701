"""T5X-style gin flag handling: --gin_file, --gin.KEY=VALUE, --gin_search_paths.

gin-config 0.5.0 uses `importlib.util` without importing it; import it first.
"""
from __future__ import annotations

import importlib
import importlib.util  # noqa: F401  (must precede `import gin`)
import logging as logging_std
import os
import re
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

from absl import logging
import gin

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# A wheel ships the configs as recjax/gin_configs (setup.py maps it to the
# project's gin_configs/); a clone or an editable install has them at the root.
_PACKAGED_GIN_CONFIGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gin_configs')
GIN_CONFIGS = (_PACKAGED_GIN_CONFIGS if os.path.isdir(_PACKAGED_GIN_CONFIGS)
               else os.path.join(PROJECT_ROOT, 'gin_configs'))
DEFAULT_SEARCH_PATHS = (GIN_CONFIGS, PROJECT_ROOT)


def rewrite_gin_args(args: Sequence[str]) -> List[str]:
  """Turns `--gin.KEY=VALUE` into `--gin_bindings=KEY = VALUE` (as T5X)."""
  out = []
  for arg in args:
    m = re.match(r'^--gin\.([^=]+)=(.*)$', arg, re.S)
    if m:
      out.append(f'--gin_bindings={m.group(1)} = {m.group(2)}')
    else:
      out.append(arg)
  return out


def split_gin_args(args: Sequence[str]
                  ) -> Tuple[List[str], List[str], List[str], List[str]]:
  """(gin_files, gin_bindings, search_paths, remaining) from raw argv."""
  files, bindings, paths, rest = [], [], [], []
  args = list(rewrite_gin_args(args))
  i = 0
  while i < len(args):
    a = args[i]
    for flag, sink in (('--gin_file', files), ('--gin_bindings', bindings),
                       ('--gin_search_paths', paths)):
      if a == flag and i + 1 < len(args):
        sink.append(args[i + 1])
        i += 1
        break
      if a.startswith(flag + '='):
        sink.append(a[len(flag) + 1:])
        break
    else:
      rest.append(a)
    i += 1
  search = []
  for p in paths:
    search.extend(x for x in p.split(',') if x)
  return files, bindings, search, rest


def _import_gin_modules(gin_files: Iterable[str], search_paths: Sequence[str]):
  """Imports modules named in `import` lines (and of included files)."""
  seen = set()
  def visit(path):
    if path in seen or not os.path.isfile(path):
      return
    seen.add(path)
    with open(path, encoding='utf-8') as f:
      for line in f:
        m = re.match(r'^\s*import\s+([\w.]+)', line)
        if m:
          try:
            importlib.import_module(m.group(1))
          except ImportError as e:
            raise ImportError(f'{path}: cannot import {m.group(1)}: {e}') from e
        m = re.match(r'^\s*include\s+[\'"](.+)[\'"]', line)
        if m:
          visit(_find(m.group(1), search_paths) or m.group(1))
  for f in gin_files:
    visit(_find(f, search_paths) or f)


def _gin_texts(gin_files: Sequence[str],
               search_paths: Sequence[str]) -> Iterator[str]:
  """The text of each file found and of the files it includes, lazily."""
  paths = [os.path.abspath(p) for p in search_paths] + list(DEFAULT_SEARCH_PATHS)
  seen = set()
  def visit(path):
    if path is None or path in seen or not os.path.isfile(path):
      return
    seen.add(path)
    with open(path, encoding='utf-8') as f:
      text = f.read()
    yield text
    for m in re.findall(r'^\s*include\s+[\'"](.+)[\'"]', text, re.M):
      yield from visit(_find(m, paths))
  for f in gin_files:
    yield from visit(_find(f, paths))


def defines_macro(gin_files: Sequence[str], macro: str,
                  search_paths: Sequence[str] = ()) -> bool:
  """Whether any of the files (or the files they include) binds `macro`."""
  pattern = re.compile(rf'^\s*{re.escape(macro)}\s*=', re.M)
  return any(pattern.search(t) for t in _gin_texts(gin_files, search_paths))


class _GinResourceNoise(logging_std.Filter):
  """Drops gin's 'Path not found' ERROR for relative `include`s.

  gin first tries an include as a Python package resource and logs an error
  when it is not one, then finds it on the search paths; the message would
  look like a failure to users of `include 'runs/finetune.gin'`.
  """

  def filter(self, record):
    return not (record.pathname.endswith('resource_reader.py') and
                str(record.msg).startswith('Path not found'))


_NOISE_FILTER = _GinResourceNoise()


def _find(name: str, search_paths: Sequence[str]) -> Optional[str]:
  if os.path.isabs(name):
    return name if os.path.isfile(name) else None
  for base in list(search_paths) + [os.getcwd()]:
    p = os.path.join(base, name)
    if os.path.isfile(p):
      return p
  return None


def parse_gin_flags(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
                    search_paths: Sequence[str] = (),
                    skip_unknown: bool = False,
                    finalize_config: bool = True) -> None:
  """Parses gin files then bindings; files are looked up in `search_paths`,
  recjax's gin configs (`GIN_CONFIGS`), the project root and the cwd."""
  paths = [os.path.abspath(p) for p in search_paths] + list(
      DEFAULT_SEARCH_PATHS)
  for p in paths:
    gin.add_config_file_search_path(p)
  gin.add_config_file_search_path(os.getcwd())
  root = logging_std.getLogger()  # gin logs through the stdlib root logger
  if _NOISE_FILTER not in root.filters:
    root.addFilter(_NOISE_FILTER)
  _import_gin_modules(gin_files, paths)
  resolved = []
  for f in gin_files:
    found = _find(f, paths)
    if found is None:
      raise FileNotFoundError(
          f'gin file {f!r} not found in {paths + [os.getcwd()]}')
    resolved.append(found)
  logging.info('gin files: %s; bindings: %s', resolved, list(gin_bindings))
  gin.parse_config_files_and_bindings(resolved, list(gin_bindings),
                                      skip_unknown=skip_unknown,
                                      finalize_config=finalize_config)


def configurables() -> List[str]:
  """Names of every registered gin configurable (for error messages)."""
  from gin import config as gin_config  # pylint: disable=g-import-not-at-top
  return sorted(k for k, _ in gin_config._REGISTRY.items())  # pylint: disable=protected-access


def _referenced_macros(gin_files: Sequence[str],
                       search_paths: Sequence[str]) -> set:
  names = set()
  for text in _gin_texts(gin_files, search_paths):
    names.update(re.findall(r'%([A-Za-z_][\w.]*)', text))
    names.update(re.findall(r'^\s*([A-Za-z_]\w*)\s*=', text, re.M))
  return names


def check_bindings(gin_files: Sequence[str], gin_bindings: Sequence[str],
                   search_paths: Sequence[str] = (),
                   default_model_gin: str = 'models/flan_t5_tiny.gin') -> None:
  """Fails on a `--gin.MACRO=...` that no gin file defines or uses.

  gin accepts a binding of an unknown macro silently, so a typo such as
  --gin.TRAIN_STEP=5 would train with the default; the error names the
  macros the given files (and the default model gin) know instead.
  """
  files = list(gin_files)
  if not defines_macro(files, 'MODEL_CONFIG', search_paths):
    files.append(default_model_gin)
  known = None
  for binding in gin_bindings:
    key = binding.partition('=')[0].strip()
    if not key or '.' in key or '/' in key or not re.match(r'^\w+$', key):
      continue  # a configurable's parameter: gin checks those itself
    if known is None:
      known = _referenced_macros(files, search_paths)
      known.update(re.findall(r'%([A-Za-z_][\w.]*)', '\n'.join(gin_bindings)))
    if key not in known:
      macros = sorted(k for k in known if k.isupper())
      raise ValueError(f'--gin.{key}: no gin file ({", ".join(files)}) '
                       f'defines or uses macro {key}; known macros: '
                       f'{", ".join(macros)}')
