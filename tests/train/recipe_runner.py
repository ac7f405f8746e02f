"""Runs the shapes recipe as a user would (python -m mmjax.main), small."""
import subprocess
import sys

from tests.conftest import REPO

# A small dataset and short evaluations: CI checks that the recipe runs,
# README's table reports what the full recipe reaches.
SMALL = ["--config.data.num_train=48", "--config.data.num_validation=8",
         "--config.data.num_test=8", "--config.data.num_heldout=8",
         "--config.batch_size=8", "--config.eval.max_examples=8",
         "--config.eval.batch_size=8", "--config.eval_batches=1",
         "--config.progress_bar=False",
         # Evaluate once (after instruction tuning) to keep CI short.
         "--config.stages.align.evals=()", "--config.stages.dpo.evals=()"]

# The recipe without the vision tower's own stages (siglip, regions), for
# the paradigms whose tower is the projection run's: what they add is their
# connector and its stages.
TOWER_FREE_ORDER = {
    f: "--config.stage_order=" + repr(
        ("qformer",) * (f == "qformer") + ("align", "sft", "dpo"))
    for f in ("resampler", "qformer", "cross_attention")}


def run_main(args, workdir, data_dir, **kw):
  """Starts `python -m mmjax.main` (args[0] is --config=...); a Popen."""
  # --config first: absl applies --config.KEY overrides after it.
  cmd = [sys.executable, "-m", "mmjax.main", f"--workdir={workdir}", args[0],
         f"--config.data.data_dir={data_dir}", *SMALL, *args[1:]]
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kw)


def run_recipe_and_check_report(args, workdir, data_dir):
  """Runs the recipe to the end; its report lists every stage's results."""
  proc = run_main(args, workdir, data_dir)
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode == 0, out[-3000:]
  report = (workdir / "report.md").read_text()
  text_lm = any("text_lm=1" in a for a in args)
  for stage in ("text_lm",) * text_lm + ("align", "sft", "dpo"):
    assert f"## Stage `{stage}`" in report
  assert "test/acc/all" in report and "heldout/acc/all" in report
  assert (workdir / "losses.png").stat().st_size > 1000
