"""Resolution: how large must the input square be to read the digits?

  python -m mmjax.sweep --sweep=experiments/resolution_sweep.py \
      --workdir=runs/resolution_tiny --size=tiny

configs/shapes_detail.py (digits on 192x128, 128x192, 256x128 and 160x160
canvases) through fixed squares of side 64, 96 and 128 (64, 144 and 256
visual tokens per image at patch 8), and 128 with 2x2 pixel shuffle (64
tokens: 128-px detail at the 64-px token budget). results.md puts accuracy
per question type (`number` is the one that needs the detail) beside
visual tokens per image. docs/resolution.md says what to expect (the
legibility table) and keeps slots for the native-resolution and tiled
variants.
"""
from mmjax.sweeps import spec as S

from shapes_tiny import TINY_OVERRIDES, TINY_STEPS  # experiments/

SIDES = [64, 96, 128]

SWEEP = S.Sweep(
    description="Fixed input squares 64/96/128 px and 128 px + pixel "
    "shuffle on shapes_detail (projection, rope).",
    config="configs/shapes_detail.py",
    args={"fusion": "projection", "positions": "rope"},
    variants=(S.grid(side=SIDES, **{"model.projector": ["mlp"]}) +
              [{"side": 128, "model.projector": "pixel_shuffle"}]),
    sizes={"tiny": TINY_OVERRIDES},
    stage_steps={"tiny": TINY_STEPS},
)
