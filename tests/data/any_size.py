"""What the any-resolution training tests share (native Qwen2-VL, NaFlex,
InternVL tiles): random images of given sizes, a chat source of them, and
the end-to-end check of issue 23: train a tiny twin on a folder of
mixed-size PNGs, then answer about a 37x91 image through the generate CLI.
"""
import json

import numpy as np
from PIL import Image

from mmjax.data import hf_tokenizer
from tests import helpers
from tests.data import hf_tokenizers

# (height, width): wide, tall, tiny, square, one past the tiny budgets.
SIZES = [(37, 91), (120, 40), (20, 20), (64, 64), (300, 260)]


def image(h, w, seed):
  """uint8[h, w, 3] of random pixels."""
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def chat_source(sizes):
  """llava_conversations records with in-memory images of these sizes."""
  return [{"id": f"r{i}", "image": image(h, w, i), "conversations": [
      {"from": "human", "value": "<image>\nWhat is it?"},
      {"from": "gpt", "value": f"picture {i}."}]}
          for i, (h, w) in enumerate(sizes)]


def qwen_tokenizer(directory):
  """A tiny Qwen2 (chatml) Hugging Face tokenizer saved in `directory`."""
  return hf_tokenizer.HFTokenizer.load(hf_tokenizers.qwen_dir(directory),
                                       "chatml")


def train_on_folder_and_ask(tmp_path, spec, *flags):
  """Trains `spec` (a configs/llava.py tiny twin) 2 steps of sft on a folder
  of mixed-size PNGs, asks about a 37x91 image with `python -m
  mmjax.generate`, and returns (workdir, the folder's images dir)."""
  images = tmp_path / "images"
  images.mkdir()
  records = []
  for i, (h, w) in enumerate(SIZES + [(48, 160)]):
    Image.fromarray(image(h, w, i)).save(images / f"{i}.png")
    records.append({"id": f"r{i}", "image": f"{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nHow wide is it?"},
        {"from": "gpt", "value": f"{w} pixels."}]})
  (tmp_path / "data.json").write_text(json.dumps(records))
  tok = hf_tokenizers.qwen_dir(tmp_path / "qwen")
  # The LM's vocabulary is the tokenizer's: every id it samples decodes.
  vocab = hf_tokenizer.HFTokenizer.load(tok, "chatml").vocab_size
  workdir = tmp_path / "run"
  proc = helpers.run_cli(
      "mmjax.main", f"--config={spec},steps=2", f"--workdir={workdir}",
      f"--config.tokenizer={tok}", f"--config.model.lm.vocab_size={vocab}",
      "--config.chat_template=chatml", "--config.stage_order=('sft',)",
      f"--config.data.folder_json={tmp_path / 'data.json'}",
      f"--config.data.folder_images={images}",
      f"--config.data.data_dir={tmp_path / 'tfds'}", *flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = [json.loads(line) for line in
             (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = [m for m in metrics if "loss" in m]
  assert steps and all(m["data/skipped_image_size"] == 0 for m in steps)
  Image.fromarray(image(37, 91, 7)).save(tmp_path / "q.png")
  proc = helpers.run_cli("mmjax.generate", f"--workdir={workdir}",
                         f"--image={tmp_path / 'q.png'}",
                         "--prompt=How wide is it?", "--max_new_tokens=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip()
  return workdir, images
