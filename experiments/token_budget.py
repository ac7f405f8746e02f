"""Token budget: how many visual tokens an image needs.

  python -m mmjax.sweep --sweep=experiments/token_budget.py \
      --workdir=runs/tokens_tiny --size=tiny

Perceiver-resampler latents from 8 to 256 per image, and the projection
paradigm with and without 2x2 pixel shuffle (64 vs 16 tokens per 64-px
image at size=tiny). results.md and tradeoff.png put test accuracy against
seconds per instruction-tuning step.
"""
from mmjax.sweeps import spec as S

from shapes_tiny import TINY_OVERRIDES, TINY_STEPS  # experiments/

LATENTS = [8, 16, 32, 64, 128, 256]

SWEEP = S.Sweep(
    description="Resampler latents 8..256 and pixel shuffle on/off "
    "(positions=rope).",
    config="configs/shapes.py",
    args={"positions": "rope"},
    variants=(S.grid(fusion=["resampler"],
                     **{"model.resampler.n_latents": LATENTS}) +
              S.grid(fusion=["projection"],
                     **{"model.projector": ["mlp", "pixel_shuffle"]})),
    # 256 latents + the question do not fit the recipe's 128 tokens.
    common={"data.max_len": 320},
    sizes={"tiny": TINY_OVERRIDES},
    stage_steps={"tiny": TINY_STEPS},
)
