"""A trained VQ image tokenizer, read from a run's `vq` stage checkpoint:
images -> codes -> images.

  tok = load_vq_tokenizer("runs/vq")            # the newest finished step
  codes = tok.encode(images)     # f32[b, S, S, 3] in [-1, 1] -> int32[b, h, w]
  images = tok.decode(codes)     # -> f32[b, S, S, 3]

The encoder and decoder are the checkpoint's `params`; the codebook is its
`loss_state` (the EMA codebook the stage carries, train/stages/vq.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mmjax.config import ConfigError
from mmjax.inference import workdir as workdir_lib
from mmjax.models import vq as vq_lib
from mmjax.models import vq_codebook
from mmjax.train.stages import vq as vq_stage


@dataclasses.dataclass
class VQTokenizer:
  model: vq_lib.VQVAE
  params: Any
  codebook: jax.Array        # f32[K, D]

  def encode(self, images: jax.Array) -> jax.Array:
    """f32[b, S, S, 3] -> codes int32[b, S/f, S/f]."""
    z = self.model.apply({"params": self.params}, images,
                         method=vq_lib.VQVAE.encode)
    return vq_codebook.nearest(z, self.codebook)

  def decode(self, codes: jax.Array) -> jax.Array:
    """codes int32[b, h, w] -> f32[b, h*f, w*f, 3]."""
    return self.model.apply({"params": self.params},
                            self.codebook[codes],
                            method=vq_lib.VQVAE.decode)


def load_vq_tokenizer(workdir: str, stage: str = "vq") -> VQTokenizer:
  """The tokenizer of `stage`'s newest finished checkpoint in a workdir.

  Raises:
    workdir_lib.WorkdirError: no VQ run or no finished checkpoint there.
  """
  try:
    cfg, params, codebook = vq_stage.load_trained(workdir, stage)
  except ConfigError as e:
    raise workdir_lib.WorkdirError(str(e)) from None
  return VQTokenizer(vq_lib.VQVAE(cfg), params, codebook)
