"""XLA flags that make the tests' programs compile fast (imports no jax).

The suite spends more time compiling tiny programs than running them. LLVM
at -O0, without its expensive passes, and (jaxlib < 0.11.1) XLA:CPU's
legacy fusion emitters cut a train step's compile 4-6x (29.8 s -> 4.9 s,
tests/parallel/mesh_parity.py) and the whole suite by a fifth. XLA's HLO
passes still run, so the program is the same; only code generation
differs, and with it the last bits of elementwise math (measured: the tiny
model's logits within 5e-7 relative of the default flags', exp within a
few ulp). Tests compare within tolerances, or both sides under the same
flags.
"""
import importlib.metadata
import re


def jaxlib_version() -> tuple[int, ...]:
  """(major, minor, patch) of the installed jaxlib (jaxlib is not imported)."""
  version = importlib.metadata.version("jaxlib")
  return tuple(int(n) for n in re.findall(r"\d+", version)[:3])


def fast_compile() -> str:
  """The flags, space-separated, for XLA_FLAGS."""
  flags = ("--xla_backend_optimization_level=0 "
           "--xla_llvm_disable_expensive_passes=true")
  # jaxlib 0.11.1 removed the legacy emitters and their flag, and XLA aborts
  # on a flag it does not know.
  if jaxlib_version() < (0, 11, 1):
    flags += " --xla_cpu_use_fusion_emitters=false"
  return flags
