"""Fusion ablation: the five paradigms on the shapes recipe.

  python -m mmjax.sweep --sweep=experiments/fusion_ablation.py \
      --workdir=runs/fusion_tiny --size=tiny --parallel=2

Measures, per paradigm: accuracy by question type (test and held-out, after
the last stage), the absent-object yes-rate, visual tokens per image,
parameters, seconds per instruction-tuning step and wall time.

Without --size the recipe runs at its own size and step counts. With
--size=tiny each stage runs the steps of experiments/shapes_tiny.py and only
sft and dpo are evaluated: all five paradigms took 22 min 3 s with
--parallel=2 on 2 quiet CPU cores.
"""
from mmjax.models.choices import FUSIONS
from mmjax.sweeps import spec as S

from shapes_tiny import TINY_OVERRIDES, TINY_STEPS  # experiments/

SWEEP = S.Sweep(
    description="The five fusion paradigms on the shapes recipe "
    "(positions=rope).",
    config="configs/shapes.py",
    args={"positions": "rope"},
    variants=S.grid(fusion=FUSIONS),
    sizes={"tiny": TINY_OVERRIDES},
    stage_steps={"tiny": TINY_STEPS},
)
