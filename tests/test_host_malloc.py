"""recjax.host_malloc: a freed large block is reused, not re-faulted."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != 'glibc',
                                reason='mallopt tuning is glibc-only')

# Allocates, touches and frees 256 MiB twice in a fresh interpreter and prints
# the page faults of the second round: 65536 pages if the block went back to
# the kernel (glibc's default for blocks this large), ~0 if it was reused.
_PROBE = r'''
import ctypes, resource, sys
from recjax import host_malloc
tuned = host_malloc.tune()
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
n = 256 << 20
def touch():
  p = libc.malloc(n)
  libc.memset(p, 1, n)
  libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def _probe(**env):
  out = subprocess.run([sys.executable, '-c', _PROBE], check=True,
                       capture_output=True, text=True,
                       env={**os.environ, **env}).stdout.split()
  return out[0] == 'True', int(out[1])


def test_tuned_process_reuses_freed_blocks():
  tuned, faults = _probe()
  assert tuned
  assert faults < 1000, faults


def test_opt_out_keeps_glibc_default():
  tuned, faults = _probe(RECJAX_MALLOC_TUNING='0')
  assert not tuned
  assert faults > 60000, faults  # the 65536 pages of 256 MiB, faulted again
