"""`python -m mmjax.generate` / `mmjax.evaluate` on bad input: one line on
stderr and exit status 2 before anything loads, and a final checkpoint that
cannot be read falls back to the previous finished one with a warning."""
import json
import os
import shutil

import numpy as np
import pytest

from mmjax.evals import standalone
from mmjax.inference import prompts
from mmjax.inference import run as run_lib
from mmjax.inference import workdir as workdir_lib
from mmjax.train import checkpoint as ckpt_lib
from tests.helpers import draw_png, make_workdir
from tests import helpers


def _add_stage_checkpoint(workdir, stage, from_stage="dpo", step=2):
  """A finished checkpoint of `stage` holding the `from_stage` parameters
  (the MLLM stages share one parameter tree)."""
  config = workdir_lib.read_config(workdir)
  store = workdir_lib.read_store(
      os.path.join(workdir, "checkpoints", from_stage, str(step)), config)
  from mmjax.train import groups  # pylint: disable=g-import-not-at-top
  ckpt = ckpt_lib.StageCheckpointer(
      os.path.join(workdir, "checkpoints", stage), async_save=False)
  ckpt.save(step, {"step": np.int32(step),
                   "params": groups.unflatten(dict(store))}, {},
            {"stage": stage, "finished": True})
  ckpt.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A tiny trained run whose 'sft' and 'dpo' stages both finished."""
  root = tmp_path_factory.mktemp("bad_input")
  path = make_workdir(root / "run", root / "data")
  _add_stage_checkpoint(path, "sft")
  return path


@pytest.fixture
def truncated_run(run_dir, tmp_path):
  """A copy of the run whose final ('dpo') checkpoint files are cut short,
  as a full disk or an interrupted copy leaves them."""
  path = str(tmp_path / "run")
  shutil.copytree(run_dir, path)
  state = os.path.join(path, "checkpoints", "dpo", "2", "state")
  for root, _, files in os.walk(state):
    for name in files:
      file = os.path.join(root, name)
      with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) // 3)
  return path


# ---------------------------------------------------------------- prompts --
def test_empty_prompt_without_an_image_exits_2(run_dir):
  line = helpers.one_error_line(helpers.run_cli("mmjax.generate", f"--workdir={run_dir}",
                              "--prompt= "))
  assert "the prompt is empty and no image or video is given" in line


def test_empty_prompt_without_an_image_is_refused_by_the_api(run_dir):
  run = run_lib.load_run(run_dir)
  with pytest.raises(prompts.InputError, match="the prompt is empty"):
    run.ask(None, "")
  with pytest.raises(prompts.InputError, match="the prompt is empty"):
    run.generate(["what shape?", "  "])


# ------------------------------------------------------------- evaluation --
@pytest.mark.parametrize("flag", ["--max_examples=-1", "--batch_size=-4",
                                  "--captions=-2"])
def test_evaluate_negative_counts_exit_2_and_keep_the_result(run_dir, flag):
  previous = os.path.join(run_dir, "eval", "final_test.json")
  os.makedirs(os.path.dirname(previous), exist_ok=True)
  with open(previous, "w") as f:
    json.dump({"count/all": 6, "acc/all": 0.5}, f)
  line = helpers.one_error_line(helpers.run_cli("mmjax.evaluate", f"--workdir={run_dir}",
                              "--split=test", flag))
  name, value = flag[2:].split("=")
  assert f"--{name}={value} must be >= " in line
  with open(previous) as f:
    assert json.load(f) == {"count/all": 6, "acc/all": 0.5}
  with pytest.raises(prompts.InputError, match=f"{name}={value} must be"):
    standalone.evaluate_run(run_dir, "test", **{name: int(value)})


@pytest.mark.parametrize("module, args", [
    ("mmjax.evaluate", ()), ("mmjax.generate", ("--prompt=what?",))])
def test_bad_contrast_exits_2(module, args):
  line = helpers.one_error_line(helpers.run_cli(
      module, "--workdir=nowhere", *args, "--contrast_alpha=-1"))
  assert "--contrast_alpha=-1.0 must be > 0" in line


def test_generate_with_contrast_answers_about_the_image(run_dir, tmp_path):
  image = draw_png(tmp_path / "a.png")
  proc = helpers.run_cli("mmjax.generate", f"--workdir={run_dir}",
                         f"--image={image}", "--prompt=what shape?",
                         "--max_new_tokens=3", "--contrast_alpha=1")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip()
  line = helpers.one_error_line(helpers.run_cli(
      "mmjax.generate", f"--workdir={run_dir}", "--prompt=what shape?",
      "--contrast_alpha=1"))
  assert "give --image=PNG" in line


def test_contrastive_evaluation_is_written_beside_the_plain_one(run_dir):
  from mmjax.decoding.contrastive import Contrast  # pylint: disable=g-import-not-at-top
  previous = os.path.join(run_dir, "eval", "final_validation.json")
  os.makedirs(os.path.dirname(previous), exist_ok=True)
  with open(previous, "w") as f:
    json.dump({"count/all": 6}, f)
  metrics, _ = standalone.evaluate_run(run_dir, "validation", max_examples=6,
                                       captions=0, contrast=Contrast())
  assert metrics["count/all"] == 6
  assert metrics["contrast"] == "alpha=1.0 beta=0.1 keep=0.3"
  assert os.path.exists(os.path.join(run_dir, "eval",
                                     "final_validation_contrast.json"))
  with open(previous) as f:
    assert json.load(f) == {"count/all": 6}


def test_evaluation_of_nothing_writes_nothing(run_dir, monkeypatch):
  previous = os.path.join(run_dir, "eval", "final_heldout.json")
  os.makedirs(os.path.dirname(previous), exist_ok=True)
  with open(previous, "w") as f:
    json.dump({"count/all": 6}, f)
  monkeypatch.setattr(standalone.builders, "load_source",
                      lambda dataset, split: [])
  with pytest.raises(prompts.InputError, match=(
      "the heldout split of the run's dataset holds no records: nothing "
      "evaluated, no result written")):
    standalone.evaluate_run(run_dir, "heldout", max_examples=0)
  with open(previous) as f:
    assert json.load(f) == {"count/all": 6}


# ------------------------------------------------------------ checkpoints --
def test_truncated_final_checkpoint_falls_back_with_a_warning(
    truncated_run, capsys):
  run = run_lib.load_run(truncated_run)
  assert run.checkpoint == os.path.join(truncated_run, "checkpoints", "sft",
                                        "2")
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith(
      f"warning: checkpoint {truncated_run}/checkpoints/dpo/2 cannot be read")
  assert lines[0].endswith(f"using the older finished checkpoint "
                           f"{truncated_run}/checkpoints/sft/2")


def test_no_readable_finished_checkpoint_is_one_error(truncated_run):
  shutil.rmtree(os.path.join(truncated_run, "checkpoints", "sft"))
  with pytest.raises(run_lib.WorkdirError, match=(
      "none of its 1 finished checkpoint.s. can be read")):
    run_lib.load_run(truncated_run)


def test_unreadable_explicit_checkpoint_is_one_error_in_python(
    truncated_run):
  step = os.path.join(truncated_run, "checkpoints", "dpo", "2")
  with pytest.raises(workdir_lib.UnreadableCheckpointError, match=(
      f"checkpoint {step} cannot be read .*: it is truncated or corrupt; "
      "pass an older step")):
    run_lib.load_run(checkpoint=step)
  with pytest.raises(run_lib.WorkdirError, match="cannot be read"):
    standalone.evaluate_run(None, "test", checkpoint=step)


@pytest.mark.parametrize("module", [
    "mmjax.generate", pytest.param("mmjax.evaluate", marks=pytest.mark.slow)])
def test_unreadable_explicit_checkpoint_exits_2(truncated_run, tmp_path,
                                                module):
  step = os.path.join(truncated_run, "checkpoints", "dpo", "2")
  args = ([f"--image={draw_png(tmp_path / 'a.png')}", "--prompt=hi"]
          if module == "mmjax.generate" else ["--split=test"])
  line = helpers.one_error_line(helpers.run_cli(module, f"--checkpoint={step}", *args))
  assert f"checkpoint {step} cannot be read (" in line
  assert line.endswith("pass an older step as the checkpoint, or the "
                       "workdir to use its newest readable finished one")


@pytest.mark.slow
def test_generate_cli_falls_back_from_a_truncated_final_checkpoint(
    truncated_run, tmp_path):
  proc = helpers.run_cli("mmjax.generate", f"--workdir={truncated_run}",
              f"--image={draw_png(tmp_path / 'a.png')}", "--prompt=",
              "--max_new_tokens=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("warning: "), proc.stderr
  assert "sft/2" in lines[0]
