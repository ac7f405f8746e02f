"""How well a trained VQ tokenizer reconstructs a split of shapes images:
PSNR and codebook usage, measured outside the training loop.

  metrics = evaluate_vq("runs/vq", split="test")
  # {'psnr': dB, 'batch_usage': share of codes used per batch of 32,
  #  'split_usage': share used over the whole split, 'perplexity': ...}

PSNR is per image over pixels in [0, 1] (the decoded image clipped, as a
written PNG would be), averaged over the split's images.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data import builders, datasets
from mmjax.inference import workdir as workdir_lib
from mmjax.inference.vq_tokenizer import load_vq_tokenizer
from mmjax.models import build
from mmjax.models import vq_codebook


def evaluate_vq(workdir: str, split: str = "test", batch_size: int = 32,
                limit: int = 0, stage: str = "vq") -> dict[str, Any]:
  """Reconstruction metrics of a run's tokenizer on a shapes split
  (limit > 0: its first `limit` images)."""
  from mmjax.data import pipeline  # pylint: disable=g-import-not-at-top  (grain)
  config = workdir_lib.read_config(workdir)
  tok = load_vq_tokenizer(workdir, stage)
  builder = datasets.shapes_dataset(config)
  source = builders.load_source(builder, split)
  it = pipeline.make_iterator(
      source, fmt="contrastive", cfg=build.mllm_config(config),
      tokenizer=datasets.tokenizer_for(builder, config),
      batch_size=batch_size, seed=0, max_len=config.model.text.max_len,
      train=False)
  k = tok.codebook.shape[0]

  @jax.jit
  def step(images):
    codes = tok.encode(images)
    recon = jnp.clip(tok.decode(codes), -1.0, 1.0)
    mse = jnp.mean((recon - images) ** 2, (1, 2, 3)) / 4.0  # [0, 1] units
    return codes, 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))

  n = len(source) if limit <= 0 else min(limit, len(source))
  psnrs, batch_usage, counts = [], [], np.zeros(k)
  for batch in it:
    real = np.asarray(batch["valid"]) > 0
    images = jnp.asarray(batch["images"])[:, 0]
    codes, psnr = jax.device_get(step(images))
    take = min(int(real.sum()), n - len(psnrs))
    psnrs += list(psnr[real][:take])
    used = codes[real][:take]
    batch_usage.append(float(vq_codebook.usage(jnp.asarray(used), k)[0]))
    counts += np.bincount(used.reshape(-1), minlength=k)
    if len(psnrs) >= n:
      break
  p = counts / counts.sum()
  entropy = -float(np.sum(p[p > 0] * np.log(p[p > 0])))
  return {"psnr": float(np.mean(psnrs)), "images": len(psnrs),
          "batch_usage": float(np.mean(batch_usage)),
          "split_usage": float((counts > 0).mean()),
          "perplexity": float(np.exp(entropy)), "codebook_size": k}
