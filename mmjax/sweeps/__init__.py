"""Config sweeps: a sweep file's variants, their plans, running them, and
the results table and plots.

  from mmjax.sweeps import spec as S      # in a sweep file (experiments/)
  SWEEP = S.Sweep(config="configs/shapes.py", base_args={"size": "tiny"},
                  variants=S.grid(fusion=["projection", "resampler"]))

  from mmjax import sweeps
  outcome = sweeps.run_sweep("experiments/fusion_ablation.py", "runs/fusion")
  spec = sweeps.load_sweep("experiments/fusion_ablation.py")   # a Sweep
  sweeps.variant_names(spec.variants)                          # run names

Modules: spec (grid / zip / Sweep), plan (variant configs and commands),
runner (`run_sweep`: N variants at once, resumable), results (CSV, markdown,
plots).
"""
from mmjax.sweeps.plan import SweepError, load_sweep
from mmjax.sweeps.runner import Outcome, run_sweep
from mmjax.sweeps.spec import Sweep, grid, variant_names
from mmjax.sweeps.spec import zip  # pylint: disable=redefined-builtin
