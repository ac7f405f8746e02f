"""Host memory: let a training process keep the pages it frees.

XLA:CPU allocates an executable's temporaries as one buffer at every call
and frees it after (43 MB for the tiny benchmark step, 157 MB for small,
256 MB for the t2i step of configs/t2i.py). glibc serves a block above its
mmap threshold (at most 32 MB) with a fresh mapping and unmaps it on free,
so every step faults in its temporaries' pages zeroed again: 11k page
faults and ~22 ms of kernel time per 42 ms tiny step, 42k and ~80 ms per
small step (docs/performance.md, "Host memory").

`prepare_host()` stops that, before JAX starts its CPU client:

- `keep_freed_pages()`: no mmap and no trimming, so a freed buffer goes
  back to its malloc arena and the next step reuses its pages;
- `run_cpu_computations_inline()`: the calling thread runs a CPU
  computation instead of handing it to one of XLA's threads. A thread
  other than the main one allocates from its own arena, whose heaps are
  capped at 64 MB, so a larger buffer is mapped afresh whatever mallopt
  says; the main thread's arena grows without that cap. (Capping the
  process at one arena does the same for the large buffers but makes
  XLA's threads contend for it: 36 instead of 31 ms per tiny step.)

`python -m mmjax.main` calls it; the train-step benchmarks do too.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Free memory above this at the top of the heap goes back to the system.
_TRIM_BYTES = 2 ** 31 - 1
# The same settings as environment variables, for a child process (an
# HF benchmark run beside mmjax gets what mmjax gets).
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0",
              "MALLOC_TRIM_THRESHOLD_": str(_TRIM_BYTES)}


def keep_freed_pages() -> bool:
  """Sets glibc's malloc to no mmap and trimming only above 2 GiB.

  Returns False (and changes nothing) where there is no glibc (macOS,
  musl): the allocator there is not the one measured.
  """
  if not sys.platform.startswith("linux"):
    return False
  name = ctypes.util.find_library("c") or "libc.so.6"
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_BYTES))
  return all(mallopt(param, value) == 1 for param, value in settings)


def run_cpu_computations_inline() -> None:
  """A single-device CPU computation runs on the thread that calls it.

  Takes effect when JAX creates its CPU client (the first use of a
  device), so call it before that.
  """
  # Imported here: main.py imports this module before its flag checks,
  # which should fail in a second, not after JAX's import.
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_enable_async_dispatch", False)


def prepare_host() -> bool:
  """Both of the above; True where glibc took the malloc settings."""
  run_cpu_computations_inline()
  return keep_freed_pages()
