"""How well a trained VQ tokenizer reconstructs a split of shapes images:
PSNR and codebook usage, measured outside the training loop.

  metrics = evaluate_vq("runs/vq", split="test")
  # {'psnr': dB, 'batch_usage': share of codes used per batch of 32,
  #  'split_usage': share used over the whole split, 'perplexity': ...}

PSNR is per image over pixels in [0, 1] (the decoded image clipped, as a
written PNG would be), averaged over the split's images.

  write_grid("runs/vq", "recon.png", n=8)   # originals above, decoded below
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data import builders, datasets
from mmjax.data import images as images_lib
from mmjax.inference import workdir as workdir_lib
from mmjax.inference.vq_tokenizer import load_vq_tokenizer
from mmjax.models import build
from mmjax.models import vq_codebook


def _test_images(config, split: str, batch_size: int):
  """(number of records, iterator of f32[<=batch_size, S, S, 3]): each
  record's image once, preprocessed as the pipeline does ([-1, 1]).

  Read per record rather than through a format: the contrastive and caption
  formats give one example per caption, so images would repeat."""
  cfg = build.mllm_config(config)
  source = builders.load_source(datasets.shapes_dataset(config), split)
  kind = images_lib.normalization_kind(cfg)

  def batches():
    for lo in range(0, len(source), batch_size):
      yield np.stack([
          images_lib.preprocess(source[i]["image"], cfg.side, kind=kind)
          for i in range(lo, min(lo + batch_size, len(source)))])
  return len(source), batches()


def evaluate_vq(workdir: str, split: str = "test", batch_size: int = 32,
                limit: int = 0, stage: str = "vq") -> dict[str, Any]:
  """Reconstruction metrics of a run's tokenizer on a shapes split
  (limit > 0: its first `limit` images)."""
  config = workdir_lib.read_config(workdir)
  tok = load_vq_tokenizer(workdir, stage)
  total, batches = _test_images(config, split, batch_size)
  k = tok.codebook.shape[0]

  @jax.jit
  def step(images):
    codes = tok.encode(images)
    recon = jnp.clip(tok.decode(codes), -1.0, 1.0)
    mse = jnp.mean((recon - images) ** 2, (1, 2, 3)) / 4.0  # [0, 1] units
    return codes, 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))

  n = total if limit <= 0 else min(limit, total)
  psnrs, batch_usage, counts = [], [], np.zeros(k)
  for images in batches:
    images = images[:n - len(psnrs)]
    codes, psnr = jax.device_get(step(jnp.asarray(images)))
    psnrs += list(psnr)
    batch_usage.append(float(vq_codebook.usage(jnp.asarray(codes), k)[0]))
    counts += np.bincount(codes.reshape(-1), minlength=k)
    if len(psnrs) >= n:
      break
  p = counts / counts.sum()
  entropy = -float(np.sum(p[p > 0] * np.log(p[p > 0])))
  return {"psnr": float(np.mean(psnrs)), "images": len(psnrs),
          "batch_usage": float(np.mean(batch_usage)),
          "split_usage": float((counts > 0).mean()),
          "perplexity": float(np.exp(entropy)), "codebook_size": k}


def write_grid(workdir: str, path: str, n: int = 8, split: str = "test",
               stage: str = "vq", scale: int = 2) -> str:
  """A PNG of the first n images of a split (top row) and their
  reconstructions through the codes (bottom row), each scaled up."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  config = workdir_lib.read_config(workdir)
  tok = load_vq_tokenizer(workdir, stage)
  _, batches = _test_images(config, split, n)
  images = jnp.asarray(next(batches))
  recon = jnp.clip(tok.decode(tok.encode(images)), -1.0, 1.0)
  rows = [np.concatenate(list(np.asarray(x)), 1) for x in (images, recon)]
  grid = images_lib.to_uint8(np.concatenate(rows, 0))
  img = Image.fromarray(grid)
  img.resize((img.width * scale, img.height * scale),
             Image.NEAREST).save(path)
  return path
