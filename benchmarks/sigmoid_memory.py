"""Temporary memory of the SigLIP sigmoid loss: plain vs ring-chunked.

  python benchmarks/sigmoid_memory.py [--devices=8] [--embed=64]
      [--batches=1024,2048,4096,8192] [--block_size=64]

Compiles value_and_grad of the loss on a global batch of B unit embeddings
sharded over `--devices` simulated CPU devices (mesh data=devices) and prints
XLA's per-device temporary bytes (`compiled.memory_analysis()`, nothing is
run). The plain loss (`losses.sigmoid_contrastive_loss`) holds [B/n, B]
stripes of logits and their gradient: x4 per doubling of B. The ring loss
(`sigmoid_ring.chunked_sigmoid_loss`) holds one [B/n, B/n] block (x4 too, but
n^2 times smaller), and with a fixed `block_size` one [B/n, block] block:
linear in B.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

_DEVICES = flags.DEFINE_integer("devices", 8, "simulated CPU devices")
_EMBED = flags.DEFINE_integer("embed", 64, "embedding width E")
_BATCHES = flags.DEFINE_list("batches", ["1024", "2048", "4096", "8192"],
                             "global batch sizes B")
_BLOCK = flags.DEFINE_integer("block_size", 64,
                              "texts per logits block of the fixed-block row")


def _set_device_count(argv: list[str]) -> None:
  """XLA reads the device count once, before jax is imported."""
  count = next((a.split("=", 1)[1] for a in argv
                if a.startswith("--devices=")), "8")
  flag = f"--xla_force_host_platform_device_count={count}"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                             flag).strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def temp_bytes(loss_fn, batch: int, embed: int, mesh) -> int:
  """Per-device temp bytes of jit(value_and_grad(loss_fn)) at batch B."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mmjax import parallel  # pylint: disable=g-import-not-at-top
  sharding = parallel.batch_sharding(mesh, parallel.DEFAULT_RULES)
  z = jax.ShapeDtypeStruct((batch, embed), jnp.float32, sharding=sharding)
  s = jax.ShapeDtypeStruct((), jnp.float32)
  grad = jax.value_and_grad(lambda *a: loss_fn(*a)[0], (0, 1, 2, 3))
  compiled = jax.jit(grad).lower(z, z, s, s).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from mmjax import parallel  # pylint: disable=g-import-not-at-top
  from mmjax.train import losses, sigmoid_ring  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh({"data": -1})
  n = jax.device_count()
  variants = {
      "plain": losses.sigmoid_contrastive_loss,
      "chunked": lambda *a: sigmoid_ring.chunked_sigmoid_loss(*a, mesh),
      f"chunked block={_BLOCK.value}": lambda *a: (
          sigmoid_ring.chunked_sigmoid_loss(*a, mesh,
                                            block_size=_BLOCK.value)),
  }
  print(f"per-device temp bytes of value_and_grad, E={_EMBED.value}, "
        f"{n} simulated CPU devices (compiled.memory_analysis)")
  print(f"{'B':>6} " + " ".join(f"{name:>22}" for name in variants))
  previous = None
  for batch in map(int, _BATCHES.value):
    row = {name: temp_bytes(fn, batch, _EMBED.value, mesh)
           for name, fn in variants.items()}
    growth = ("" if previous is None else "   x" + " x".join(
        f"{row[k] / max(previous[k], 1):.2f}" for k in row))
    print(f"{batch:>6} " + " ".join(f"{v:>22,}" for v in row.values()) +
          growth, flush=True)
    previous = row


if __name__ == "__main__":
  _set_device_count(sys.argv)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  app.run(main)
