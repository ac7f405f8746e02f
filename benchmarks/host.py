"""The host settings a train-step benchmark runs under: the ones
`python -m mmjax.main` makes (mmjax/host_memory.py), or none.

  from benchmarks import host
  ...
  hf_env = host.prepare()   # before this process starts JAX's CPU client

`--prepare_host` (default on): glibc's malloc keeps the pages it frees and
a single-device CPU computation runs on the calling thread, so XLA:CPU's
per-step temporaries are not faulted in afresh at every step. The HF
subprocess gets the same malloc settings (its environment), so the two
sides are compared on equal terms. `--noprepare_host` measures both as a
bare process runs them.
"""
from __future__ import annotations

from absl import flags

from mmjax import host_memory

_PREPARE_HOST = flags.DEFINE_bool(
    "prepare_host", True,
    "run as python -m mmjax.main does (mmjax/host_memory.py: malloc keeps "
    "freed pages, CPU computations inline); the HF subprocess gets the same "
    "malloc settings. --noprepare_host: neither")


def prepare() -> dict[str, str]:
  """Applies --prepare_host to this process; the HF subprocess's extra
  environment. Call before JAX creates its CPU client."""
  if not _PREPARE_HOST.value:
    return {}
  host_memory.prepare_host()
  return dict(host_memory.MALLOC_ENV)


def enabled() -> bool:
  """Whether --prepare_host is on (recorded in the results JSON)."""
  return _PREPARE_HOST.value
