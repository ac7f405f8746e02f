"""Seconds of audio featurised per second: mmjax's log-mel vs transformers'.

  python benchmarks/logmel_throughput.py [--seconds=5,30] [--clips=8] \
      [--repeats=3] [--n_mels=80] [--threads=0] [--out=logmel.json]

Times `mmjax.data.audio.log_mel` (numpy, one clip at a time) and
`transformers.WhisperFeatureExtractor.__call__` (one clip at a time, as a
data pipeline calls it; it computes the STFT with torch when torch is
installed, numpy otherwise) on the same random clips, in the same process,
both padding to 30 s (HF's default); mmjax also unpadded (`pad=False`: only
the clip's frames). Reports the best of --repeats passes over --clips clips
per length, as seconds of audio per second of wall time, with the CPU model
and the load: do not compare numbers from different runs or a busy machine.
"""
from __future__ import annotations

import os
import sys
import time

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top
from mmjax.data import audio  # pylint: disable=g-import-not-at-top

_SECONDS = flags.DEFINE_list("seconds", ["5", "30"], "clip lengths (s)")
_CLIPS = flags.DEFINE_integer("clips", 8, "clips per length")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed passes (best kept)")
_N_MELS = flags.DEFINE_integer("n_mels", 80, "mel bins (80 or 128)")
_THREADS = flags.DEFINE_integer("threads", 0, "torch threads (0: leave)")
_NOHF = flags.DEFINE_bool("nohf", False, "skip transformers")
_OUT = flags.DEFINE_string("out", "", "write the rows as JSON here")


def cpu_model() -> str:
  """The CPU's model name and whether it has AVX-512 (/proc/cpuinfo)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      text = f.read()
  except OSError:
    return "unknown"
  name = next((l.split(":", 1)[1].strip() for l in text.splitlines()
               if l.startswith("model name")), "unknown")
  return f"{name} ({'AVX-512' if 'avx512f' in text else 'no AVX-512'})"


def best_rate(fn, clips, repeats: int) -> float:
  """Audio seconds per wall second, best pass of `repeats` (after one
  untimed warm-up call)."""
  fn(clips[0])
  audio_s = sum(len(c) for c in clips) / audio.SAMPLE_RATE
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    for c in clips:
      fn(c)
    best = min(best, time.perf_counter() - start)
  return audio_s / best


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  n_mels = _N_MELS.value
  impls = {
      "mmjax (pad 30 s)": lambda c: audio.log_mel(c, n_mels=n_mels),
      "mmjax (clip only)": lambda c: audio.log_mel(c, n_mels=n_mels,
                                                   pad=False),
  }
  if not _NOHF.value:
    import transformers  # pylint: disable=g-import-not-at-top
    from transformers.utils import is_torch_available  # pylint: disable=g-import-not-at-top
    if _THREADS.value and is_torch_available():
      import torch  # pylint: disable=g-import-not-at-top
      torch.set_num_threads(_THREADS.value)
    fe = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    backend = "torch" if is_torch_available() else "numpy"
    impls[f"transformers ({backend} STFT)"] = lambda c: fe(
        c, sampling_rate=audio.SAMPLE_RATE, return_tensors="np")
  print(f"CPU: {cpu_model()}; {common.load_average()}", flush=True)
  rows = []
  for seconds in map(float, _SECONDS.value):
    n = int(seconds * audio.SAMPLE_RATE)
    clips = [(0.3 * rng.normal(size=n)).astype(np.float32)
             for _ in range(_CLIPS.value)]
    for name, fn in impls.items():
      rows.append(dict(clip_s=seconds, impl=name, n_mels=n_mels,
                       rate=best_rate(fn, clips, _REPEATS.value)))
  common.print_table(rows, [("clip (s)", "clip_s", ".2f"),
                            ("implementation", "impl", ""),
                            ("audio s / s", "rate", ".0f")])
  common.write_json(_OUT.value, dict(cpu=cpu_model(), rows=rows))


if __name__ == "__main__":
  app.run(main)
