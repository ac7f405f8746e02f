"""Native-resolution ViT (Qwen2-VL's tower) vs the square-resize path at
equal pixel counts: train-step time (forward + backward) and memory.

  python benchmarks/native_resolution.py [--sizes=tiny,small] [--steps=5]
      [--images=8] [--side=224] [--out=native.json]

Each row encodes `--images` images of `--side`^2 pixels each in total:

  square   every image resized to side x side: `Qwen2VLVisionTower.__call__`
           on [B, (side/14)^2] patches, full attention per image (what a
           fixed-square model pays).
  native   the same pixel budget spread over mixed aspect ratios (1:4, 4:1,
           1:2, 2:1, 1:1, 3:4, 4:3, ...; each image's area ~ side^2, sides
           multiples of 28: `smart_resize` with max_pixels = side^2), one
           image per row packed by `native_resolution.pack_rows` (rows
           padded to a power of two) and encoded by `packed` with the
           per-row block-diagonal mask: the training path.
  native flat   all images in ONE sequence (`native_resolution.pack`, the
           generation path): attention cost grows with the square of the
           total, which is why training packs per row.

The step is the tower alone (a sum-of-squares loss on its tokens, gradients
for every tower parameter), f32 on the CPU (or whatever JAX's default
device is). Reported: median step seconds over --steps (after one warm-up),
real patches (pixels / 14^2) per second, XLA's compiled temp bytes (the
activations the step keeps), and the share of padded patches. A figure is
only meaningful on a quiet machine: the load is printed beside it.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from mmjax.data import native_resolution as native_lib
from mmjax.models import qwen2vl_vision

_SIZES = flags.DEFINE_list("sizes", ["tiny", "small"],
                           "tower widths from mmjax/models/sizes.py")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps per row")
_IMAGES = flags.DEFINE_integer("images", 8, "images per step")
_SIDE = flags.DEFINE_integer("side", 224, "square side; every image has "
                             "about side^2 pixels (a multiple of 28)")
_OUT = flags.DEFINE_string("out", "", "write the rows as JSON here")

# Aspect ratios (height : width) the native images cycle through.
ASPECTS = ((1, 4), (4, 1), (1, 2), (2, 1), (1, 1), (3, 4), (4, 3), (9, 16))


def tower_config(size: str) -> qwen2vl_vision.Qwen2VLVisionConfig:
  """Qwen2-VL's tower (patch 14, temporal 2, merge 2) at a named width."""
  v = common.SIZES[size]["vision"]
  return qwen2vl_vision.Qwen2VLVisionConfig(
      image_size=56, width=v["width"], depth=v["depth"],
      mlp_dim=v["mlp_dim"], n_heads=v["n_heads"])


def native_images(side: int, n: int, seed: int = 0) -> list[np.ndarray]:
  """n preprocessed images of mixed aspects, each resized into side^2 px."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    a, b = ASPECTS[i % len(ASPECTS)]
    h = max(28, int(round(side * np.sqrt(a / b))))
    w = max(28, int(round(side * np.sqrt(b / a))))
    pixels = rng.integers(0, 256, (h, w, 3), np.uint8)
    out.append(native_lib.preprocess(pixels, 28, 28 * 28, side * side))
  return out


def _step(tower, params, method, *args):
  """jit(params -> (loss, grads)) of a sum-of-squares loss on the tokens."""
  def loss(p):
    if method == "call":
      tokens = tower.apply({"params": p}, *args).tokens
    else:
      tokens = tower.apply({"params": p}, *args,
                           method=qwen2vl_vision.Qwen2VLVisionTower.packed)
    return jnp.mean(jnp.square(tokens))
  return jax.jit(jax.value_and_grad(loss))


def measure(size: str, side: int, n_images: int, steps: int
            ) -> list[dict[str, float | str]]:
  """The three rows of one tower size."""
  cfg = tower_config(size)
  tower = qwen2vl_vision.Qwen2VLVisionTower(cfg)
  square = np.random.default_rng(1).standard_normal(
      (n_images, side, side, 3)).astype(np.float32)
  params = tower.init(jax.random.key(0), square[:1, :56, :56])["params"]
  images = native_images(side, n_images)
  sizes = [im.shape[:2] for im in images]
  real_native = native_lib.still_patches(cfg, sizes)
  longest = max(native_lib.still_patches(cfg, [s]) for s in sizes)
  n_row = native_lib.row_length(longest, cfg.spatial_merge)
  rows = native_lib.pack_rows(cfg, [[im] for im in images], n_row)
  flat = native_lib.pack_for(cfg, [images])
  cases = {
      "square": ("call", (jnp.asarray(square),), n_images * (side // 14) ** 2,
                 n_images * (side // 14) ** 2),
      "native": ("packed", tuple(jnp.asarray(rows[k]) for k in
                                 native_lib.BATCH_KEYS[:3]),
                 real_native, n_images * n_row),
      "native flat": ("packed", (jnp.asarray(flat.patches),
                                 jnp.asarray(flat.rope_ids),
                                 jnp.asarray(flat.segment_ids)),
                      real_native, len(flat.patches)),
  }
  out = []
  for name, (method, args, real, total) in cases.items():
    fn = _step(tower, params, method, *args)
    compiled = fn.lower(params).compile()
    mem = compiled.memory_analysis()
    wall, cpu = common.time_steps_cpu(
        lambda: jax.block_until_ready(compiled(params)), steps)
    stats = common.summarize_times(wall, cpu)
    out.append({"size": size, "input": name, "real_patches": real,
                "patches": total, "padding": 1 - real / total,
                "pixels": real * 14 * 14,
                "step_ms": 1e3 * stats["step_s"],
                "patches_per_s": real / stats["step_s"],
                "temp_mib": float(getattr(mem, "temp_size_in_bytes", 0))
                / 2 ** 20 if mem else None})
  return out


def main(argv):
  del argv
  if _SIDE.value % 28 or _SIDE.value < 56 or _IMAGES.value < 1:
    print(f"error: --side={_SIDE.value} must be a multiple of 28 (>= 56) and "
          f"--images={_IMAGES.value} >= 1", file=sys.stderr)
    sys.exit(2)
  try:
    sizes = common.parse_choices(_SIZES.value, list(common.SIZES), "sizes")
  except common.BenchmarkInputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); "
        f"{common.load_average()}; {_IMAGES.value} images of ~"
        f"{_SIDE.value}^2 px a step", flush=True)
  rows = []
  for size in sizes:
    rows += measure(size, _SIDE.value, _IMAGES.value, _STEPS.value)
  common.print_table(rows, [
      ("size", "size", "s"), ("input", "input", "s"),
      ("real patches", "real_patches", "d"), ("all patches", "patches", "d"),
      ("padding", "padding", ".1%"), ("step ms", "step_ms", ".1f"),
      ("real patches/s", "patches_per_s", ",.0f"),
      ("temp MiB", "temp_mib", ".1f")])
  common.write_json(_OUT.value, {"rows": rows, "side": _SIDE.value,
                                 "images": _IMAGES.value})


if __name__ == "__main__":
  app.run(main)
