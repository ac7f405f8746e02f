"""The VQ image tokenizer on shapes images: one stage, loss `vq`.

  python -m mmjax.main --config=configs/vq.py --workdir=W

Args (comma-separated key=value after the colon):
  steps=N      stage length (default 1200)
  batch=N      global batch (default 8)
  codes=K      codebook size (default 1024)
  levels=N     stride-2 levels: 64 px -> 64 / 2**N codes a side (default 2:
               16 x 16 codes)
The shapes recipe's data and image size (64 px) are used as they are
(configs/shapes.py); the tokenizer is config.model.vq, its stage
config.stages.vq (docs/image-generation.md). The defaults are the measured
run there (1024 codes, conv widths 64 / 128, 1,200 steps): test PSNR 28.3
dB with 87% of the codebook used per batch of 32 (256 codes, widths 32 / 64,
800 steps: 26.0 dB).
"""
import os

import ml_collections

from mmjax import config as config_lib

_SHAPES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "shapes.py")

# Conv widths per level, coarsest last; `levels` takes the first N.
_WIDTHS = (64, 128, 128, 128)


def vq_model(codes: int = 1024, levels: int = 2
             ) -> ml_collections.ConfigDict:
  """The config.model.vq block (models/vq.py VQConfig)."""
  return ml_collections.ConfigDict(dict(
      codebook_size=codes, code_dim=32, channels=_WIDTHS[:levels],
      res_blocks=2))


def vq_stage(template: ml_collections.ConfigDict, steps: int
             ) -> ml_collections.ConfigDict:
  """A `vq` stage on the contrastive format's images (captions unused),
  with the optimizer and schedule layout of a shapes stage (`template`)."""
  stage = ml_collections.ConfigDict(template.to_dict())
  for key in ("chunked_loss", "attributes", "loss_chunk"):
    if key in stage:
      del stage[key]
  stage.update(loss="vq", data="contrastive", steps=steps,
               trainable=("vq",), evals=(), batch_size=0, commitment=0.25,
               decay=0.99, dead_threshold=1.0, recon="mse")
  stage.optimizer.lr = 2e-3
  stage.optimizer.weight_decay = 0.0  # a small conv autoencoder
  stage.optimizer.lr_mult = ml_collections.ConfigDict({"vq": 1.0})
  stage.schedule.warmup_steps = min(20, max(1, steps // 5))
  return stage


def get_config(arg=None):
  """Returns the tokenizer recipe; see the module docstring for the args."""
  args = config_lib.parse_arg(arg, steps=1200, batch=8, codes=1024,
                              levels=2)
  if not 1 <= args.levels <= len(_WIDTHS):
    raise config_lib.ConfigError(
        f"config arg levels={args.levels} must lie in [1, {len(_WIDTHS)}]")
  config = config_lib.load_config(f"{_SHAPES}:size=tiny")
  config.model.vq = vq_model(args.codes, args.levels)
  config.stages = ml_collections.ConfigDict(
      {"vq": vq_stage(config.stages.siglip, args.steps)})
  config.stage_order = ("vq",)
  config.batch_size = args.batch
  config.eval_batches = 4
  return config
