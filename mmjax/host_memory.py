"""Host memory: let a training process keep the pages it frees.

XLA:CPU allocates an executable's temporaries as one buffer at every call
and frees it after (256 MB for the t2i step of configs/t2i.py). glibc
serves a block above its mmap threshold (at most 32 MB) with a fresh
mapping and unmaps it on free, so every step faults in 60k zeroed pages:
0.12 s of kernel time per t2i step, a third of its CPU time. With one
malloc arena, no mmap and no trimming the next step reuses the freed
buffer (docs/performance.md, "Host memory").

Call `keep_freed_pages()` before JAX starts its CPU client (its threads
take their malloc arenas when they start); `python -m mmjax.main` does.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# Free memory above this at the top of the heap goes back to the system.
_TRIM_BYTES = 2 ** 31 - 1


def keep_freed_pages() -> bool:
  """Sets glibc's malloc to one arena, no mmap, trimming above 2 GiB.

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
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
              (_M_TRIM_THRESHOLD, _TRIM_BYTES))
  return all(mallopt(param, value) == 1 for param, value in settings)
