"""Position ablation: 1-D RoPE, M-RoPE (Qwen2-VL) and V2PE (InternVL).

  python -m mmjax.sweep --sweep=experiments/position_ablation.py \
      --workdir=runs/positions_tiny --size=tiny

Measures accuracy by question type on the test split and on the held-out
compositions (colour x shape pairs never seen in training). The shapes
benchmark has one image per question, so there is no multi-image
comparison here: the held-out split is the generalisation test.
"""
from mmjax.models.choices import POSITIONS
from mmjax.sweeps import spec as S

from shapes_tiny import TINY_OVERRIDES, TINY_STEPS  # experiments/

SWEEP = S.Sweep(
    description="Position schemes with projection fusion; held-out "
    "compositions are the generalisation test (no multi-image questions in "
    "the shapes benchmark).",
    config="configs/shapes.py",
    args={"fusion": "projection"},
    variants=S.grid(positions=POSITIONS),
    sizes={"tiny": TINY_OVERRIDES},
    stage_steps={"tiny": TINY_STEPS},
)
