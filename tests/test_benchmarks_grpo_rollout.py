"""benchmarks/grpo_rollout.py: rollout, generate, step and update, timed."""
import json

import pytest

from tests.test_benchmarks import run_script


def test_tiny_run_times_rollout_generate_step_and_update(tmp_path):
  out = tmp_path / "grpo_rollout.json"
  proc = run_script("grpo_rollout.py", "--sizes=tiny", "--batch=2",
                    "--group_size=2", "--repeats=1", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith("device: ")
  assert "rollout/generate" in proc.stdout
  result = json.loads(out.read_text())
  (row,) = result["rows"]
  assert (row["size"], row["batch"], row["group_size"], row["rows"]) == (
      "tiny", 2, 2, 4)
  assert row["generated_tokens"] == 4 * 4  # R rows x the stage's 4 tokens
  for name in ("rollout", "generate", "prefill_decode", "prefill_decode_at_l",
               "step", "update"):
    assert row[name]["steps_timed"] == 1 and row[name]["step_s"] > 0, name
  for name in ("rollout", "generate", "prefill_decode",
               "prefill_decode_at_l"):
    assert row[f"{name}_tok_s"] == pytest.approx(
        16 / row[name]["step_s"]), name
  assert row["rollout_vs_generate"] == pytest.approx(
      row["rollout_tok_s"] / row["generate_tok_s"])
  assert row["step_vs_generate_plus_update"] == pytest.approx(
      (row["generate"]["step_s"] + row["update_s"]) / row["step_s"])
  # The step samples (the decode loop is a while loop); the update with
  # the completions given does not.
  assert row["step_while_loops"] >= 1 and row["update_while_loops"] == 0
  # The step's prompts fill the pipeline's bucket; generate's are rounded
  # up to a multiple of 8 of the longest prompt.
  assert row["generate_prompt_slots"] % 8 == 0
  assert row["generate_prompt_slots"] <= row["rollout_prompt_slots"]


def test_bad_group_size_exits_2_with_one_line():
  proc = run_script("grpo_rollout.py", "--group_size=1")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: config.stages.grpo.group_size=1")
