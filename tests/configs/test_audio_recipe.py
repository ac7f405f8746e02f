"""configs/audio.py: a 3-step smoke run of every stage in the one loop, its
audio_vqa evaluation, `python -m mmjax.generate --audio` and
`python -m mmjax.evaluate` on the run; the image + audio variant
(`joint=1`) likewise."""
import json
import os

import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import evals
from mmjax.data import audio as audio_lib
from mmjax.data import tones
from mmjax.inference import media as media_lib
from mmjax.inference import run as run_lib
from mmjax.train import config_checks
from tests.conftest import REPO
from tests.helpers import one_error_line, run_cli

CONFIG = os.path.join(REPO, "configs", "audio.py")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("audio")
  # text_lm=1: the optional text-only stage is trained too.
  config = config_lib.load_config(f"{CONFIG}:steps=3,batch=4,text_lm=1")
  # 40 clips: enough text for the text_lm stage's 16-token windows.
  config.data.update(dict(data_dir=str(root / "data"), num_train=40,
                          num_validation=2, num_test=2, text_seq_len=16))
  config.eval.update(dict(max_examples=6, batch_size=4))
  config.update(dict(log_every=1, eval_batches=1, progress_bar=False))
  config.checkpoint.async_save = False
  evals.train_and_evaluate(config, str(root / "run"), verbose=False)
  return str(root / "run")


def test_recipe_validates_and_names_its_stages():
  config = config_lib.load_config(CONFIG)
  config_checks.validate_config(config)
  assert config.stage_order == ("align", "sft")
  assert config.stages.align.trainable == ("audio", "audio_connector")
  assert config.data.dataset == "tones" and "vision" not in config.model
  text = config_lib.load_config(f"{CONFIG}:text_lm=1,steps=5")
  assert text.stage_order == ("text_lm", "align", "sft")
  assert all(s.steps == 5 for s in text.stages.values())


@pytest.fixture(scope="module")
def joint_run_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("joint")
  config = config_lib.load_config(f"{CONFIG}:joint=1,steps=2,batch=4")
  config.data.update(dict(data_dir=str(root / "data"), num_train=8,
                          num_validation=2, num_test=2))
  config.eval.update(dict(max_examples=40, batch_size=8))
  config.update(dict(log_every=1, eval_batches=1, progress_bar=False))
  config.checkpoint.async_save = False
  evals.train_and_evaluate(config, str(root / "run"), verbose=False)
  return str(root / "run")


def test_smoke_run_trains_every_stage_and_scores_by_type(run_dir):
  rows = [json.loads(line) for line in open(
      os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8")]
  trained = {(r["stage"], r["step"]) for r in rows if "loss" in r}
  assert {("text_lm", 3), ("align", 3), ("sft", 3)} <= trained
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
  with open(os.path.join(run_dir, "eval", "sft.json"), encoding="utf-8") as f:
    scores = json.load(f)
  flat = json.dumps(scores)
  assert "test/acc/all" in flat and "test/acc/count" in flat
  assert "test/se/waveform" in flat


def _wav(path, clip):
  audio_lib.write_wav(path, clip, tones.SAMPLE_RATE)
  return str(path)


def test_generate_cli_answers_about_a_clip(run_dir, tmp_path):
  clip = tones.from_int16(tones.example("test", 0)["audio"])
  wav = _wav(tmp_path / "clip.wav", clip)
  prompt = "how many tones are there?"
  proc = run_cli("mmjax.generate", f"--workdir={run_dir}", f"--audio={wav}",
                 f"--prompt={prompt}", "--max_new_tokens=3")
  assert proc.returncode == 0, proc.stderr[-2000:]
  run = run_lib.load_run(run_dir)
  clips = [media_lib.clip_features(run.cfg, media_lib.read_clip(wav))]
  want = run.answer(prompt, None, max_new_tokens=3, clips=clips)
  assert proc.stdout.strip() == want


@pytest.mark.parametrize("content,needle", [
    (b"RIFF not a wave file", "cannot read audio file"),
    (None, "zero length"),
])
def test_generate_cli_refuses_bad_audio_in_one_line(run_dir, tmp_path,
                                                     content, needle):
  path = tmp_path / "bad.wav"
  if content is None:
    _wav(path, np.zeros(0, np.float32))
  else:
    path.write_bytes(content)
  proc = run_cli("mmjax.generate", f"--workdir={run_dir}", f"--audio={path}",
                 "--prompt=how many tones are there?")
  assert needle in one_error_line(proc)


def test_evaluate_cli_scores_an_audio_run_by_type(run_dir):
  proc = run_cli("mmjax.evaluate", f"--workdir={run_dir}", "--split=test")
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(os.path.join(run_dir, "eval", "final_test.json"),
            encoding="utf-8") as f:
    scores = json.load(f)
  assert scores["count/all"] == sum(
      len(r) for r in [tones.example("test", i)["qa"] for i in range(2)])
  assert "acc/waveform" in scores and "se/count" in scores
  for flag, needle in (("--split=heldout", "has the splits"),
                       ("--captions=2", "shapes-only")):
    proc = run_cli("mmjax.evaluate", f"--workdir={run_dir}", flag)
    assert needle in one_error_line(proc)


def test_joint_variant_trains_both_towers_and_asks_about_both(joint_run_dir):
  config = config_lib.load_config(f"{CONFIG}:joint=1")
  config_checks.validate_config(config)
  assert config.stage_order == ("regions", "align", "align_audio", "sft")
  assert config.stages.sft.data == "joint_chat"
  assert "vision" not in config.stages.sft.trainable
  rows = [json.loads(line) for line in open(
      os.path.join(joint_run_dir, "metrics.jsonl"), encoding="utf-8")]
  trained = {r["stage"] for r in rows if "loss" in r}
  assert trained == {"regions", "align", "align_audio", "sft"}
  with open(os.path.join(joint_run_dir, "eval", "sft.json"),
            encoding="utf-8") as f:
    flat = json.dumps(json.load(f))
  for key in ("test/acc/same_count", "test/acc/tone_count",
              "test/acc/colour"):
    assert key in flat, key
