"""Sweeps: grid/zip, validation before anything runs, runs that skip what is
finished and mark what failed, and the results table."""
import csv
import json
import os
import subprocess
import sys

import pytest

from mmjax.sweeps import results as sweep_results
from mmjax.sweeps import plan as sweep_plan
from mmjax.sweeps import runner as sweep_runner
from mmjax.sweeps import spec as S
from mmjax.config import load_config
from tests.conftest import REPO

LM = os.path.join(REPO, "configs/lm.py")
# The text LM: the cheapest recipe that runs through main (seconds a run).
_LM_SMALL = {"data.num_sentences": 400, "data.seq_len": 32, "batch_size": 8,
             "log_every": 1, "eval_every": 0, "eval_batches": 1}


def _write_sweep(path, variants, common=None, args=None, extra=""):
  path.write_text(
      "from mmjax.sweeps import spec as S\n"
      f"SWEEP = S.Sweep(config={LM!r}, args={args or {'size': 'tiny'}!r},\n"
      f"    variants={variants!r}, common={common or _LM_SMALL!r}{extra})\n")
  return str(path)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "mmjax.sweep", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=600,
                        check=False)


def test_grid_is_every_combination_last_axis_fastest():
  assert S.grid(a=[1, 2], b=["x", "y"]) == [
      {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"},
      {"a": 2, "b": "y"}]
  assert S.grid(**{"model.projector": ["mlp"]}) == [{"model.projector": "mlp"}]


def test_zip_pairs_values_and_wants_equal_lengths():
  assert S.zip(a=[1, 2], b=["x", "y"]) == [{"a": 1, "b": "x"},
                                            {"a": 2, "b": "y"}]
  with pytest.raises(ValueError, match="equal length"):
    S.zip(a=[1, 2], b=["x"])
  with pytest.raises(ValueError, match="list of values"):
    S.grid(fusion="projection")


def test_variant_names_are_short_unique_and_safe():
  assert S.variant_names([{"fusion": "qformer",
                           "model.resampler.n_latents": 8}]) == [
                               "fusion=qformer-n_latents=8"]
  # Two keys with the same last part: the full keys tell them apart.
  assert S.variant_names([{"a.x": 1}, {"b.x": 1}]) == ["a.x=1", "b.x=1"]
  assert S.variant_names([{"init_from": "/no/such"}]) == [
      "init_from=_no_such"]


def test_plan_applies_args_size_steps_and_cap():
  spec = S.Sweep(config=LM, args={"size": "small"},
                 variants=[{"model.n_layers": 1}, {"stages.lm.steps": 7}],
                 sizes={"tiny": {"seed": 3}},
                 stage_steps={"tiny": {"lm": 50}})
  plans = sweep_plan.build_plans(spec, None, "/tmp/w", size="tiny")
  first, second = plans
  assert first.spec.endswith("configs/lm.py:size=tiny")
  assert first.config.model.n_layers == 1 and first.config.seed == 3
  assert first.config.stages.lm.steps == 50
  assert first.config.stages.lm.schedule.warmup_steps <= 10
  assert second.config.stages.lm.steps == 7  # the variant's own steps win
  command = first.command()
  assert command[3] == f"--config={first.spec}"  # before its overrides
  assert "--config.model.n_layers=1" in command
  assert "--config.progress_bar=False" in command
  capped = sweep_plan.build_plans(spec, None, "/tmp/w", size="tiny",
                                  steps_cap=5)
  assert [p.config.stages.lm.steps for p in capped] == [5, 5]


def test_bad_values_name_the_variant():
  for variant, words in (({"model.n_heads": 3}, ["variant #0", "n_heads"]),
                         ({"sise": "tiny"}, ["'sise'", "Did you mean"]),
                         ({"batch_size": "eight"}, ["batch_size", "'eight'"])):
    spec = S.Sweep(config=LM, args={"size": "tiny"}, variants=[variant])
    with pytest.raises(sweep_plan.SweepError) as e:
      sweep_plan.build_plans(spec, None, "/tmp/w")
    for word in words:
      assert word in str(e.value), (word, str(e.value))


def test_only_must_name_variants():
  spec = S.Sweep(config=LM, args={"size": "tiny"},
                 variants=S.grid(**{"model.n_layers": [1, 2]}))
  assert [p.name for p in sweep_plan.build_plans(
      spec, None, "/tmp/w", only=["n_layers=2"])] == ["n_layers=2"]
  with pytest.raises(sweep_plan.SweepError, match="n_layers=3"):
    sweep_plan.build_plans(spec, None, "/tmp/w", only=["n_layers=3"])


def test_unknown_key_exits_2_before_running_anything(tmp_path):
  path = _write_sweep(tmp_path / "bad.py",
                      [{"model.n_layers": 1}, {"model.n_layer": 1}])
  out = _cli(f"--sweep={path}", f"--workdir={tmp_path / 'w'}")
  assert out.returncode == 2, out.stderr
  error = out.stderr.strip().splitlines()[-1]
  assert error.startswith("error: variant #1 'n_layer=1': unknown config key "
                          "'model.n_layer'"), error
  assert "Did you mean 'n_layers'?" in error
  assert not (tmp_path / "w").exists()  # nothing ran, nothing written


@pytest.mark.slow
def test_sweep_runs_skips_finished_and_marks_failed(tmp_path):
  # The last variant passes validation and fails at run time (main cannot
  # load init_from); the others must still run.
  path = _write_sweep(tmp_path / "two.py",
                      [{"model.n_layers": 1}, {"model.n_layers": 2},
                       {"init_from": str(tmp_path / "missing")}],
                      args={"size": "tiny", "steps": 2})
  workdir = tmp_path / "w"
  out = _cli(f"--sweep={path}", f"--workdir={workdir}", "--parallel=2")
  assert out.returncode == 1, out.stdout + out.stderr
  bad = "init_from=" + str(tmp_path / "missing").replace("/", "_")
  assert f"{bad}: FAILED (exit 2)" in out.stdout + out.stderr
  assert f"1 variant(s) failed: {bad}" in out.stderr
  with open(workdir / "results.csv", encoding="utf-8") as f:
    rows = {r["variant"]: r for r in csv.DictReader(f)}
  assert {k: r["status"] for k, r in rows.items()} == {
      "n_layers=1": "ok", "n_layers=2": "ok", bad: "failed"}
  assert "is not a directory" in rows[bad]["error"]
  assert int(rows["n_layers=2"]["params"]) > int(rows["n_layers=1"]["params"])
  assert float(rows["n_layers=1"]["step_s"]) > 0  # compile window excluded
  assert float(rows["n_layers=1"]["wall_s"]) > float(
      rows["n_layers=1"]["cpu_s"]) / 4 > 0
  md = (workdir / "results.md").read_text()
  assert f"| {bad} | failed |" in md and "is not a directory" in md
  assert (workdir / "costs.png").stat().st_size > 1000
  # Again: finished variants are skipped, the failed one is tried again.
  outcome = sweep_runner.run_sweep(path, str(workdir), progress=False)
  assert outcome.failed == [bad]
  attempts = {n: sweep_runner.read_status(str(workdir / n))["attempts"]
              for n in rows}
  assert attempts == {"n_layers=1": 1, "n_layers=2": 1, bad: 2}
  log = (workdir / "n_layers=1" / "log.txt").read_text()
  assert log.count("=== ") == 1


def test_results_row_of_a_shapes_workdir(tmp_path):
  """Accuracy, yes-rate, tokens per image, parameters and step time."""
  evals = {"test/acc/colour": 0.5, "test/acc/count": 0.2,
           "test/acc/all": 0.4, "test/count/all": 9, "test/pope/count": 4,
           "test/absent_yes_rate": 0.25, "heldout/acc/all": 0.3,
           "samples": []}
  (tmp_path / "eval").mkdir()
  (tmp_path / "eval" / "dpo.json").write_text(json.dumps(evals))
  (tmp_path / "eval" / "sft.json").write_text(json.dumps({
      "test/acc/all": 0.9}))
  records = [{"stage": "sft", "step": 0, "compile_time_s": 9.0},
             {"stage": "sft", "step": 10, "step_time_s": 5.0},
             {"stage": "sft", "step": 20, "step_time_s": 0.2},
             {"stage": "sft", "step": 20, "compile_time_s": 3.0},  # bucket
             {"stage": "sft", "step": 30, "step_time_s": 1.0},
             {"stage": "sft", "step": 40, "step_time_s": 0.4},
             {"stage": "dpo", "step": 10, "step_time_s": 7.0}]
  (tmp_path / "metrics.jsonl").write_text(
      "\n".join(json.dumps(r) for r in records))
  shapes = os.path.join(REPO, "configs/shapes.py")
  config = load_config(f"{shapes}:size=tiny,fusion=projection")
  row = sweep_results.variant_row("p", {"fusion": "projection"}, config,
                                  str(tmp_path), {"status": "ok",
                                                  "wall_s": 61.0})
  assert row["eval_stage"] == "dpo"  # the last stage that evaluated
  assert row["test/acc/all"] == 0.4 and row["heldout/acc/all"] == 0.3
  assert row["test/absent_yes_rate"] == 0.25
  assert "test/count/all" not in row and "test/pope/count" not in row
  assert row["test/acc/count"] == 0.2  # the question type "count"
  assert row["step_s"] == pytest.approx(0.3)  # windows with compiles left out
  assert row["visual_tokens"] == row["seq_tokens"] == 64
  assert 0.3e6 < row["params"] < 3e6
  # The config the run wrote wins over the (possibly edited) recipe file.
  ran = config.to_dict()
  ran["model"]["lm"]["n_layers"] = 1
  (tmp_path / "config.json").write_text(json.dumps(ran, default=list))
  assert sweep_results.variant_row("p", {}, config, str(tmp_path), {})[
      "params"] < row["params"]
  xattn = sweep_results.model_facts(load_config(
      f"{shapes}:size=tiny,fusion=cross_attention"))
  assert xattn["seq_tokens"] == 1 and xattn["visual_tokens"] == 16
  assert "| 16 (1 in sequence) |" in sweep_results.results_markdown(
      [dict(row, **xattn)], "t")
  paths = sweep_results.write_results(str(tmp_path), [row], "t")
  md = open(paths["md"], encoding="utf-8").read()
  assert "| p | ok | dpo | 0.400 | 0.500 | 0.200 | 0.300 | 0.250 | 64 |" in md
  assert os.path.getsize(paths["accuracy_test"]) > 1000


def test_seeds_of_a_variant_are_summarised_as_mean_and_sd(tmp_path):
  """`grid(fusion=..., seed=[0, 1])`: rows that differ only in their seed
  form one group in results.md's "Across seeds" table; a group with one
  finished run, or variants without a seed, are not summarised."""
  config = load_config(f"{REPO}/configs/shapes.py:size=tiny")
  rows = []
  for name, variant, acc, status in [
      ("a0", {"fusion": "projection", "seed": 0}, 0.80, "ok"),
      ("a1", {"fusion": "projection", "config.seed": 1}, 0.90, "ok"),
      ("a2", {"fusion": "projection", "seed": 2}, 0.10, "failed"),
      ("b0", {"fusion": "resampler", "seed": 0}, 0.50, "ok"),
      ("c", {"fusion": "qformer"}, 0.70, "ok")]:
    (tmp_path / name / "eval").mkdir(parents=True)
    (tmp_path / name / "eval" / "sft.json").write_text(json.dumps({
        "test/acc/all": acc, "test/acc/shape": acc - 0.1,
        "heldout/acc/all": acc / 2}))
    rows.append(sweep_results.variant_row(name, variant, config,
                                          str(tmp_path / name),
                                          {"status": status}))
  assert [r.get("seed_group") for r in rows] == [
      "fusion=projection"] * 3 + ["fusion=resampler", None]
  summary = sweep_results.seed_summary(rows)
  assert list(summary) == ["fusion=projection"]  # one finished run: no row
  mean, sd, runs = summary["fusion=projection"]["test/acc/all"]
  assert (mean, runs) == (pytest.approx(0.85), 2)
  assert sd == pytest.approx(0.0707, abs=1e-4)  # sample sd of 0.8, 0.9
  md = sweep_results.results_markdown(rows, "t")
  assert "Across seeds" in md
  assert ("| fusion=projection | 2 | 0.850 +- 0.071 | 0.750 +- 0.071 | "
          "0.425 +- 0.035 |") in md
  assert "Across seeds" not in sweep_results.results_markdown(rows[3:], "t")
