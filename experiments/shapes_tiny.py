"""The --size=tiny mode shared by the shapes sweeps (imported by them).

Step counts per stage at size=tiny. Measured: the five-paradigm fusion
ablation with these took 40 min 54 s of wall time with --parallel=2 on 2
CPU cores that other runs shared (load 8-9; 6 to 13 CPU minutes per
variant); stop 32's counts took 22 min 3 s on the quiet machine. A stage a
variant lacks is skipped (qformer exists only for fusion=qformer, siglip and
regions not for one_backbone). The recipe's own step counts
(configs/shapes.py) apply without --size=tiny. Lower these if the sweeps take too long on your machine.
"""

# Stop 34: the recipe's proportions (regions 1,500 / sft 2,000 steps) at
# about 40%: a shorter regions stage leaves shape at chance for every
# paradigm, which is what the previous counts (regions 200, sft 450) did.
TINY_STEPS = {"text_lm": 100, "siglip": 60, "regions": 600, "qformer": 60,
              "align": 100, "sft": 800, "dpo": 30}

# Only sft and dpo are evaluated at size=tiny (evaluations cost time too).
TINY_OVERRIDES = {"stages.align.evals": ()}
