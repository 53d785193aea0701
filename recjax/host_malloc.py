"""Keeps XLA:CPU's per-step buffers in the heap instead of fresh mmap'd pages.

XLA:CPU allocates each execution's temporaries as one block (about 0.8 GB for
a FLAN-T5-small training step at batch 8 x (128 + 32)) and frees it when the
step ends. glibc serves blocks that large with mmap and returns them with
munmap, so every step first-touches ~200k new pages (1.77 s of kernel time
per 3.26 s step in one A/B). With mmap disabled, a single arena (other
arenas fall back to mmap for blocks above 64 MiB) and no trimming, the block
is reused from step to step: no page faults, and 17-23% less wall time per
CPU training step (benchmarks/README.md). The cost is that freed memory stays in the process for
reuse (peak RSS is kept), as with tcmalloc.

`tune()` is called by recjax's entry points (`recjax.main`, the train and
inference jobs) before JAX or TensorFlow start threads; it only matters for
CPU-heavy runs but is harmless on accelerator hosts. RECJAX_MALLOC_TUNING=0
turns it off; it does nothing where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

# <malloc.h> mallopt parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_done = None


def tune() -> bool:
  """Applies the settings once per process; True if glibc accepted them."""
  global _done
  if _done is not None:
    return _done
  _done = False
  if os.environ.get('RECJAX_MALLOC_TUNING', '1') == '0':
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False  # not glibc (musl, macOS): nothing to tune
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  mallopt.restype = ctypes.c_int
  # mallopt returns 1 on success. glibc stores the trim threshold as a size_t:
  # -1 becomes SIZE_MAX, "never trim" (2 GiB - 1, the largest positive int,
  # is too small: the heap's free top exceeds it within a FLAN-T5-small step).
  _done = all(mallopt(param, value) == 1 for param, value in (
      (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)))
  return _done
