"""`python -m mmjax.generate` on a fabricated run: answers, streams, and
refuses bad input with exit status 2 and one line."""
import os
import subprocess
import sys

import numpy as np
import pytest

from mmjax import testing
from mmjax.decoding import decode
from mmjax.inference import media as media_lib
from mmjax.inference import prompts
from mmjax.inference import run as run_lib
from tests.conftest import REPO
from tests.helpers import draw_png, make_workdir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("generate")
  return make_workdir(root / "run", root / "data")


def cli(*args):
  return subprocess.run([sys.executable, "-m", "mmjax.generate", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=600)


def test_cli_answers_about_a_drawn_png_as_generation_does(run_dir, tmp_path):
  png = draw_png(tmp_path / "drawn.png")
  prompt = "what colour is the square?"
  proc = cli(f"--workdir={run_dir}", f"--image={png}", f"--prompt={prompt}",
             "--max_new_tokens=6", "--stream_chunk=2")
  assert proc.returncode == 0, proc.stderr[-2000:]
  run = run_lib.load_run(run_dir)
  assert run.checkpoint.endswith(os.path.join("dpo", "2"))
  media = media_lib.media_arrays(run.cfg, [media_lib.read_image(png)], None,
                                 "square", 4)
  pieces = []
  want = run.answer(prompt, media, max_new_tokens=6,
                    sampling=decode.Sampling(), chunk=2,
                    on_text=pieces.append)
  assert want and proc.stdout.strip() == want
  # Streamed: more than one piece, which together are the answer.
  assert len([p for p in pieces if p]) > 1 and "".join(pieces) == want


def test_unreadable_image_exits_2_with_one_line(run_dir, tmp_path):
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"\x89PNG not really")
  proc = cli(f"--workdir={run_dir}", f"--image={bad}", "--prompt=hi")
  assert proc.returncode == 2 and proc.stdout == ""
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "cannot read image" in lines[0], proc.stderr


def test_prompt_longer_than_the_context_exits_2(run_dir, tmp_path):
  # Enough video frames (64 placeholders each) to exceed the run's context.
  context = run_lib.read_config(run_dir).data.max_len
  n = context // 64 + 1
  frames = tmp_path / "video"
  frames.mkdir()
  for i in range(n):
    draw_png(frames / f"{i:03d}.png")
  proc = cli(f"--workdir={run_dir}", f"--video={frames}", "--prompt=what?",
             f"--max_frames={n}")
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert f"exceeds the context of {context} tokens" in lines[0]


def test_checkpoint_of_another_model_exits_2(tmp_path):
  other = make_workdir(tmp_path / "run", tmp_path / "data",
                       params_fusion="resampler")
  proc = cli(f"--checkpoint={other}/checkpoints/dpo/2",
             f"--image={draw_png(tmp_path / 'a.png')}", "--prompt=hi")
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "does not hold this config's model" in lines[0]


def test_video_frames_and_markers():
  cfg = testing.tiny_mllm_config()
  frames = [np.full((64, 64, 3), i, np.uint8) for i in range(10)]
  media = media_lib.media_arrays(cfg, frames[:1], frames, "square", 3)
  assert media.shape == (4, 64, 64, 3)  # one still + 3 evenly spaced frames
  np.testing.assert_allclose(media[1:, 0, 0, 0] * 127.5 + 127.5, [0, 4, 9],
                             atol=1e-3)
  assert prompts.user_turn("hi", 2) == "<image>\n<image>\nhi"
  assert prompts.user_turn("<image> vs <image>?", 2) == "<image> vs <image>?"
  with pytest.raises(prompts.InputError, match="1 <image> marker"):
    prompts.user_turn("<image> hi", 2)
