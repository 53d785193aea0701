"""Opt-in multi-process start-up: `jax.distributed.initialize` before any JAX work.

Every process of a multi-host run (a TPU pod's workers, one process per GPU
under SLURM, N processes on one machine in tests) runs the same command; the
only difference between them is where they learn who they are:

  * explicitly, from the environment (any launcher):
      RECJAX_COORDINATOR_ADDRESS=host:port  process 0's address, reachable
      RECJAX_NUM_PROCESSES=N
      RECJAX_PROCESS_ID=i                   0 <= i < N
      RECJAX_LOCAL_DEVICE_IDS=0,1           optional: this process's devices
  * automatically, with `recjax train --multi_host` or RECJAX_MULTI_HOST=1:
    JAX reads a Cloud TPU pod's metadata, SLURM's variables (SLURM_PROCID,
    SLURM_NTASKS, SLURM_STEP_NODELIST, one GPU per task by SLURM_LOCALID) or
    Open MPI's.

With none of these set, nothing happens: one process, as on a laptop.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

ENV_COORDINATOR = 'RECJAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'RECJAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'RECJAX_PROCESS_ID'
ENV_LOCAL_DEVICE_IDS = 'RECJAX_LOCAL_DEVICE_IDS'
ENV_MULTI_HOST = 'RECJAX_MULTI_HOST'
_EXPLICIT = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
_TRUE = ('1', 'true', 'yes', 'on')


def _int(env: Mapping[str, str], key: str) -> int:
  try:
    return int(env[key])
  except ValueError:
    raise ValueError(f'{key}={env[key]!r}: expected an integer') from None


def initialize_args(env: Optional[Mapping[str, str]] = None
                   ) -> Optional[Dict[str, Any]]:
  """Keyword arguments for `jax.distributed.initialize`, from `env`.

  Returns None when the environment asks for no multi-process run, {} for
  JAX's auto-detection (RECJAX_MULTI_HOST=1), else the explicit arguments.
  Raises ValueError naming the variable that is missing or malformed.
  """
  env = os.environ if env is None else env
  given = [k for k in _EXPLICIT if env.get(k, '') != '']
  if given:
    missing = [k for k in _EXPLICIT if k not in given]
    if missing:
      raise ValueError(f'{", ".join(given)} set but {", ".join(missing)} '
                       f'not: a multi-process run needs all of '
                       f'{", ".join(_EXPLICIT)}')
    address = env[ENV_COORDINATOR].strip()
    host, sep, port = address.rpartition(':')
    if not sep or not host or not port.isdigit():
      raise ValueError(f'{ENV_COORDINATOR}={address!r}: expected host:port')
    num = _int(env, ENV_NUM_PROCESSES)
    pid = _int(env, ENV_PROCESS_ID)
    if num < 1:
      raise ValueError(f'{ENV_NUM_PROCESSES}={num}: expected >= 1')
    if not 0 <= pid < num:
      raise ValueError(f'{ENV_PROCESS_ID}={pid}: expected 0 <= id < '
                       f'{ENV_NUM_PROCESSES} ({num})')
    args: Dict[str, Any] = dict(coordinator_address=address,
                                num_processes=num, process_id=pid)
    ids = env.get(ENV_LOCAL_DEVICE_IDS, '').strip()
    if ids:
      try:
        args['local_device_ids'] = [int(x) for x in ids.split(',') if x]
      except ValueError:
        raise ValueError(f'{ENV_LOCAL_DEVICE_IDS}={ids!r}: expected '
                         'comma-separated integers, e.g. 0,1') from None
    return args
  if env.get(ENV_MULTI_HOST, '').strip().lower() in _TRUE:
    return {}
  return None


def maybe_initialize(multi_host: bool = False,
                     env: Optional[Mapping[str, str]] = None) -> bool:
  """Starts jax.distributed when asked (flag or environment); idempotent.

  Returns whether this is a multi-process run. Must run before anything
  touches a JAX device.
  """
  args = initialize_args(env)
  if args is None and not multi_host:
    return False
  import jax  # pylint: disable=g-import-not-at-top
  if jax.distributed.is_initialized():
    return True
  jax.distributed.initialize(**(args or {}))
  return True
