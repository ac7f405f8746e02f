"""XLA flags that make the tests' programs compile fast (imports no jax).

The suite spends more time compiling tiny programs than running them.

- `SUITE` (every test, set by conftest.py and inherited by the commands
  tests start): LLVM at -O0. Only LLVM's code generation changes, and with
  it the last bits of elementwise math (the tiny model's logits within
  5e-7 relative of the default flags'). The whole suite 1,923 s -> 1,597 s
  on 2 cores.
- `fast_compile()` (the mesh-parity worker, whose programs are the largest):
  also no expensive LLVM passes and, on jaxlib < 0.11.1, XLA:CPU's legacy
  fusion emitters: a train step compiles 4-6x faster (29.8 s -> 4.9 s).
  Not for the whole suite (measured, stop 50): there it ran in 1,238 s but
  failed three tests: a prefix-LM cached decode against the full forward
  off by 2.5e-5 (atol 2e-5), GRPO's dynamic-sampling gradients off by 2e-9
  on values of 1e-6 (rtol 1e-4), and the rollout benchmark's compiled
  update held 3 while loops instead of 0: the optimized HLO is not the
  same under the legacy emitters.
"""
import importlib.metadata
import re

SUITE = "--xla_backend_optimization_level=0"


def jaxlib_version() -> tuple[int, ...]:
  """(major, minor, patch) of the installed jaxlib (jaxlib is not imported)."""
  version = importlib.metadata.version("jaxlib")
  return tuple(int(n) for n in re.findall(r"\d+", version)[:3])


def fast_compile() -> str:
  """SUITE and more, space-separated, for XLA_FLAGS (see the docstring)."""
  flags = SUITE + " --xla_llvm_disable_expensive_passes=true"
  # jaxlib 0.11.1 removed the legacy emitters and their flag, and XLA aborts
  # on a flag it does not know.
  if jaxlib_version() < (0, 11, 1):
    flags += " --xla_cpu_use_fusion_emitters=false"
  return flags
