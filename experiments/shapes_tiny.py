"""The --size=tiny mode shared by the shapes sweeps (imported by them).

Step counts per stage at size=tiny, chosen so that one variant of the
shapes recipe takes about 5 minutes on 2 quiet CPU cores (the five-paradigm
fusion ablation about 25-30): about 3.5 minutes of steps and 1.5 of
start-up, compilation and evaluation. Estimated from step times measured
under load (text_lm, siglip at batch 64, align, sft, dpo: about 0.6, 2.5,
0.8, 1 and 2.7 times an sft step; an sft step ~0.3 s on a quiet machine),
not from a quiet full run. A stage a variant lacks is skipped (qformer
exists only for fusion=qformer, siglip not for one_backbone). The recipe's
own step counts (configs/shapes.py) apply without --size=tiny. Lower these
if the fusion ablation takes longer than 30 minutes on your machine.
"""

TINY_STEPS = {"text_lm": 100, "siglip": 60, "qformer": 60, "align": 100,
              "sft": 300, "dpo": 30}

# Only sft and dpo are evaluated at size=tiny (evaluations cost time too).
TINY_OVERRIDES = {"stages.align.evals": ()}
