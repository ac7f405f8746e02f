"""The benchmark scripts run (tiny, 1-2 steps) and their numbers add up."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import common
from benchmarks import train_step
from tests.conftest import REPO


def run_script(script, *args):
  """Runs benchmarks/SCRIPT in a fresh process (flags, devices, threads)."""
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "benchmarks", script), *args],
      capture_output=True, text=True, cwd=REPO, check=False,
      env=dict(os.environ, HF_HUB_OFFLINE="1"))
  return proc


def test_dot_flops_counts_matmuls_inside_scan_and_jit():
  def f(a, b):
    def body(carry, _):
      return jax.jit(jnp.dot)(carry, b), None
    return jax.lax.scan(body, a, None, length=3)[0]
  a = jnp.ones((4, 8))
  b = jnp.ones((8, 8))
  assert common.dot_flops(jax.make_jaxpr(f)(a, b).jaxpr) == 3 * 2 * 4 * 8 * 8


def test_analytic_flops_equal_the_steps_matmuls():
  # (tiny at batch 8 is checked by the --quick run below.)
  batch, text_len = 2, 16
  setup = train_step.build_step("small", "projection", batch=batch,
                                text_len=text_len, abstract=True)
  with setup.context():
    jaxpr = jax.make_jaxpr(setup.step)(setup.state, setup.batch)
  counted = common.dot_flops(jaxpr.jaxpr)
  seq_len = setup.batch["tokens"].shape[1]
  assert seq_len == 64 + text_len  # 64 image tokens at both sizes
  analytic = common.analytic_train_flops(setup.cfg, batch, seq_len)
  assert counted == pytest.approx(analytic["total"], rel=1e-9)


@pytest.mark.parametrize("fusion,seq_len", [
    ("resampler", 128), ("qformer", 128),  # 64 latents + 64 text tokens
    ("cross_attention", 65),               # one <image> marker + text
    ("one_backbone", 136)])                # 8 x (8 patches + newline) + text
def test_every_paradigm_builds_the_trainer_step(fusion, seq_len):
  setup = train_step.build_step("tiny", fusion, abstract=True)
  assert setup.batch["tokens"].shape == (8, seq_len)
  with setup.context():
    jaxpr = jax.make_jaxpr(setup.step)(setup.state, setup.batch)
  assert common.dot_flops(jaxpr.jaxpr) > 2.5e9  # ~ the projection model's


def test_train_throughput_quick_matches_hf(tmp_path):
  out = tmp_path / "train.json"
  proc = run_script("train_throughput.py", "--quick", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "x HF" in proc.stdout and "MFU" in proc.stdout
  (row,) = json.loads(out.read_text())["rows"]
  assert (row["size"], row["fusion"], row["batch"], row["seq_len"]) == (
      "tiny", "projection", 8, 128)
  assert row["jaxpr_flops"] == pytest.approx(row["model_flops"], rel=1e-9)
  # XLA also counts norms, softmax and AdamW: a little more, not less.
  assert 1.0 < row["xla_ratio"] < 1.2
  assert 0 < row["mfu"] and row["compile_s"] > 0 and row["mem_peak"] > 0
  hf = row["hf"]
  # The same architecture: HF's SigLIP keeps a post-layernorm LLaVA skips.
  width = common.SIZES["tiny"]["vision"]["width"]
  assert hf["params"] == row["params"] + 2 * width
  # Both train (the same batch every step) from a near-uniform start.
  for r in (row, hf):
    assert abs(r["first_loss"] - jnp.log(512)) < 1.0
    assert r["last_loss"] < r["first_loss"]
  assert row["ratio_vs_hf"] == pytest.approx(
      hf["step_s"] / row["step_s"], rel=1e-6)


def test_matmul_peak_runs():
  proc = run_script("matmul_peak.py", "--sizes=64", "--reps=1", "--notorch")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "xla  float32" in proc.stdout


@pytest.mark.parametrize("script,flag", [
    ("train_throughput.py", "--sizes=huge"),
    ("scaling.py", "--sections=speed"),
    ("train_throughput.py", "--peak_sizes="),
    ("matmul_peak.py", "--sizes=0"),
    ("train_throughput.py", "--runs=0"),
])
def test_bad_flag_exits_2_with_one_line(script, flag):
  proc = run_script(script, flag)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --")


def test_generate_vs_hf_reports_bytes_per_token(tmp_path):
  out = tmp_path / "gen.json"
  proc = run_script("generate_vs_hf.py", "--sizes=tiny", "--batch=2",
                    "--new_tokens=16", "--repeats=3", "--bandwidth_mib=16",
                    f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["memory_bandwidth"]["read_gb_s"] > 0
  row = result["sizes"]["tiny"]
  ours = row["mmjax"]
  assert ours["decode_tok_s"] > 0 and row["hf"]["decode_tok_s"] > 0
  # The tiny LM by hand: d 128, 2 layers, 4 heads / 2 KV of 32, MLP 256,
  # vocab 512; f32; the embedding table is read only for the batch's rows.
  d, layers, kv_dim, mlp, vocab, batch = 128, 2, 64, 256, 512, 2
  per_layer = 2 * d * d + 2 * d * kv_dim + 3 * d * mlp + 2 * d
  weights = 4 * (layers * per_layer + d + d * vocab + batch * d)
  assert ours["weight_bytes"] == weights
  cache = 4 * 2 * layers * batch * ours["cache_len"] * kv_dim
  assert ours["cache_bytes"] == cache
  assert ours["cache_len"] == 64 + 64 + 16  # image + text tokens + new
  assert row["bytes_per_token"] == (weights + cache) / batch
  assert row["mmjax_gb_s"] == pytest.approx(
      (weights + cache) * ours["decode_tok_s"] / batch / 1e9)


def test_repeated_runs_drop_their_own_flags_and_summarize_medians():
  argv = ["train_throughput.py", "--sizes=tiny", "--runs", "3", "--out",
          "all.json", "--steps=4", "--runs=3"]
  assert common.child_argv(argv, "/b/t.py", "/tmp/r0.json") == [
      sys.executable, "/b/t.py", "--sizes=tiny", "--steps=4", "--runs=1",
      "--out=/tmp/r0.json"]
  runs = [{"rows": [{"size": "tiny", "fusion": "projection", "step_s": t,
                     "hf": {"step_s": h}, "ratio_vs_hf": h / t}]}
          for t, h in ((0.030, 0.045), (0.040, 0.041), (0.032, 0.060))]
  (row,) = common.summarize_runs(runs)
  assert row["step_s"] == 0.032 and row["hf_step_s"] == 0.045
  assert row["ratio_vs_hf"] == pytest.approx(0.045 / 0.032)
  assert row["ratio_runs"] == "1.50 1.02 1.88"


def test_cpu_info_tells_apart_two_cpus_that_share_a_name(tmp_path):
  # Two VMs both report "AMD EPYC"; their matmul peaks differ 2x, so the
  # family / model numbers and AVX-512 go beside every table.
  text = ("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\n"
          "model name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma sse4_2\n\n"
          "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 1\n"
          "model name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma sse4_2\n")
  path = tmp_path / "cpuinfo"
  path.write_text(text)
  info = common.cpu_info(str(path))
  assert (info["model"], info["family"], info["model_number"]) == (
      "AMD EPYC", 25, 1)
  assert info["avx512"] is False and info["simd"] == ["avx", "avx2", "fma"]
  assert common.cpu_line(str(path)).startswith(
      "CPU AMD EPYC (family 25 model 1), no AVX-512, ")
  path.write_text("model name\t: Some CPU\nflags\t\t: avx512f avx2\n")
  info = common.cpu_info(str(path))
  assert info["family"] is None and info["avx512"] is True
  assert common.cpu_line(str(path)).startswith("CPU Some CPU, AVX-512, ")
