"""Resolution: how large must the input be to read the digits, and how?

  python -m mmjax.sweep --sweep=experiments/resolution_sweep.py \
      --workdir=runs/resolution_tiny --size=tiny

configs/shapes_detail.py (digits on 192x128, 128x192, 256x128 and 160x160
canvases) read six ways (fusion=projection, positions=rope):
  fixed squares of side 64, 96 and 128 (64, 144 and 256 visual tokens per
    image at patch 8), and 128 with 2x2 pixel shuffle (64 tokens: 128-px
    detail at the 64-px token budget);
  native: a Qwen2-VL tower at each canvas's own size (2x2 PatchMerger: 96-128
    tokens);
  tiled: InternVL tiles of 64 px, up to 6 + a thumbnail (192 to 448 tokens).
Every arm trains its tower in align and sft (tower=1) and none has the
siglip stage, which needs one square image: the same recipe for all six.
results.md puts accuracy per question type (`number` is the one that needs
the detail) beside visual tokens per image; docs/resolution.md says what to
expect (the legibility table).
"""
from mmjax.sweeps import spec as S

from shapes_tiny import TINY_OVERRIDES  # experiments/

SIDES = [64, 96, 128]
# The shapes tiny counts without the stages these arms lack (siglip,
# regions), sft at half: the 128-px and tiled arms cost 2-3x the 64-px one.
RESOLUTION_STEPS = {"align": 100, "sft": 400, "dpo": 30}
# Evaluated after dpo only: a native or tiled evaluation pass (1,000 test +
# 1,000 held-out questions) costs about 4 CPU minutes.
RESOLUTION_OVERRIDES = {**TINY_OVERRIDES, "stages.sft.evals": ()}

SWEEP = S.Sweep(
    description="Fixed input squares 64/96/128 px, 128 px + pixel shuffle, "
    "native resolution and InternVL tiles on shapes_detail (projection, "
    "rope; towers trained in align and sft).",
    config="configs/shapes_detail.py",
    args={"fusion": "projection", "positions": "rope", "tower": 1},
    variants=(S.grid(side=SIDES, **{"model.projector": ["mlp"]}) +
              [{"side": 128, "model.projector": "pixel_shuffle"},
               {"input": "native"},
               {"input": "tiled", "side": 64}]),
    sizes={"tiny": RESOLUTION_OVERRIDES},
    stage_steps={"tiny": RESOLUTION_STEPS},
)
