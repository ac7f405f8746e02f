"""benchmarks/logmel_throughput.py runs on a tiny input and prints a row per
implementation (a smoke run: no timing is asserted)."""
from tests.test_benchmarks import run_script


def test_logmel_throughput_smoke():
  proc = run_script("logmel_throughput.py", "--seconds=0.2", "--clips=1",
                    "--repeats=1", "--nohf")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "CPU:" in proc.stdout
  assert "mmjax (pad 30 s)" in proc.stdout
  assert "mmjax (clip only)" in proc.stdout
