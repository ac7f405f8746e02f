"""mmjax.host_memory: a freed large buffer is reused without page faults."""
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Mallocs, fills and frees a 256 MB buffer 5 times (as XLA:CPU does with
# a step's temporaries) and prints the minor page faults of the last 4.
_PROGRAM = """
import ctypes, resource, sys
from mmjax import host_memory
if sys.argv[1] == "keep":
  assert host_memory.keep_freed_pages()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def step():
  size = 256 * 2 ** 20
  buffer = libc.malloc(size)
  ctypes.memset(buffer, 1, size)
  libc.free(buffer)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
  out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], cwd=REPO,
                       capture_output=True, text=True, check=True)
  return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="glibc's malloc")
def test_a_freed_buffer_is_reused_without_faulting_its_pages_in_again():
  pages = 4 * 256 * 2 ** 20 // 4096
  assert _faults("default") > pages // 2  # each step maps fresh pages
  assert _faults("keep") < pages // 50
