"""benchmarks/scaling.py runs (tiny, 1 step): its own file, so the two CI
workers split the benchmark smoke runs."""
import json

from tests.test_benchmarks import run_script


def test_scaling_quick(tmp_path):
  out = tmp_path / "scaling.json"
  proc = run_script("scaling.py", "--quick", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(out.read_text())["rows"]
  assert {r["section"] for r in rows} == {"visual", "fsdp"}
  (visual,) = [r for r in rows if r["section"] == "visual"]
  assert visual["visual_tokens"] == 16  # 32 px, patch 8
  assert visual["step_s"] > 0 and visual["cpu_s"] > 0
  fsdp = {r["devices"]: r for r in rows if r["section"] == "fsdp"}
  assert sorted(fsdp) == [1, 2]
  # Parameters, optimizer state and the batch split over the fsdp devices.
  assert fsdp[2]["mem_argument"] < 0.6 * fsdp[1]["mem_argument"]
  assert fsdp[2]["xla_flops"] < 0.6 * fsdp[1]["xla_flops"]
