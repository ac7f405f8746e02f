"""Runs every variant of a sweep file and gathers their results.

  python -m mmjax.sweep --sweep=experiments/fusion_ablation.py \\
      --workdir=runs/fusion [--size=tiny] [--parallel=N] [--steps_cap=N]

Every variant's config is validated first (a bad key or value exits with
status 2 naming the variant). Each variant then runs as
`python -m mmjax.main` in DIR/<variant> (one after another, or N at once),
its output in DIR/<variant>/log.txt. A finished variant is skipped when the
sweep runs again; an unfinished one resumes where its checkpoints stop. A
variant that fails is reported with the end of its log and marked in the
results; the others go on, and the sweep exits with status 1 at the end.
Results: DIR/results.csv, DIR/results.md and PNG plots beside them. The
library call is `mmjax.sweeps.run_sweep`; sweep files use
`mmjax.sweeps.spec` (`grid`, `zip`, `Sweep`).
"""
from __future__ import annotations

import shlex
import signal

from absl import app, flags, logging

from mmjax import config as config_lib
from mmjax.sweeps import plan as plan_lib
from mmjax.sweeps import runner

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file, e.g. "
                             "experiments/fusion_ablation.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where variants run and "
                               "results go.")
_SIZE = flags.DEFINE_string("size", None, "Config size of every variant "
                            "(e.g. tiny); also picks the sweep's step table.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Variants run at once.")
_STEPS_CAP = flags.DEFINE_integer("steps_cap", 0, "Cap every stage at N "
                                  "steps (smoke runs); 0 = no cap.")
_ONLY = flags.DEFINE_list("only", None, "Run only these variants (names).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Validate and print the "
                             "commands; run nothing.")


def main(argv):
  fail = config_lib.fail
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}")
  if not _SWEEP.value or not _WORKDIR.value:
    fail("--sweep and --workdir are required, e.g. "
         "--sweep=experiments/fusion_ablation.py --workdir=runs/fusion")
  if _PARALLEL.value < 1 or _STEPS_CAP.value < 0:
    fail(f"--parallel={_PARALLEL.value} must be >= 1 and --steps_cap="
         f"{_STEPS_CAP.value} >= 0")
  if _DRY_RUN.value:
    try:
      spec = plan_lib.load_sweep(_SWEEP.value)
      plans = plan_lib.build_plans(spec, _SWEEP.value, _WORKDIR.value,
                                   _SIZE.value, _STEPS_CAP.value, _ONLY.value)
    except config_lib.ConfigError as e:
      fail(str(e))
    for plan in plans:
      print(shlex.join(plan.command()))
    return
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)

  def terminated(*_):
    raise SystemExit(143)  # unwinds: running variants checkpoint and stop
  signal.signal(signal.SIGTERM, terminated)
  try:
    outcome = runner.run_sweep(_SWEEP.value, _WORKDIR.value, size=_SIZE.value,
                        parallel=_PARALLEL.value, steps_cap=_STEPS_CAP.value,
                        only=_ONLY.value)
  except config_lib.ConfigError as e:
    fail(str(e))
  print(f"results: {outcome.paths['md']}  {outcome.paths['csv']}", flush=True)
  if outcome.failed:
    fail(f"{len(outcome.failed)} variant(s) failed: "
          f"{', '.join(outcome.failed)} (see results.md)", code=1)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.absl_flags_parser)
