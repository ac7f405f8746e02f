"""Runs benchmarks/hf_llava.py (the Hugging Face LLaVA train step) in a
subprocess, so torch's threads and resident memory are measured apart from
JAX's, and returns its RESULT line as a dict.

Shared by the scripts that put HF beside mmjax (train_throughput.py,
step_matmuls.py); hf_llava.py defines its own flags, so it is run, not
imported.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Mapping, Sequence


def run_hf(size: str, steps: int, warmup: int, batch: int, text_len: int,
           dtype: str = "float32", device: str = "cpu",
           peak_sizes: Sequence[int] = (1024, 2048), threads: int = 2,
           env: Mapping[str, str] | None = None) -> dict[str, float]:
  """benchmarks/hf_llava.py in a subprocess; its RESULT line as a dict.

  `env`: extra environment variables (benchmarks/host.py's malloc
  settings).

  Raises RuntimeError with the end of its stderr if it fails.
  """
  cmd = [sys.executable, os.path.join(os.path.dirname(__file__),
                                      "hf_llava.py"),
         f"--size={size}", f"--steps={steps}", f"--warmup={warmup}",
         f"--batch={batch}", f"--text_len={text_len}", f"--dtype={dtype}",
         f"--device={device}", f"--threads={threads}",
         f"--peak_sizes={','.join(map(str, peak_sizes))}"]
  full_env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
  proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env,
                        check=False)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                     f"{proc.stderr[-3000:]}")
