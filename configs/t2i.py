"""Text -> image on shapes: an LM writes the VQ codes of a caption's image.

  python -m mmjax.main --config=configs/vq.py --workdir=runs/vq     # tokenizer
  python -m mmjax.main --config=configs/t2i.py:tokenizer=runs/vq --workdir=runs/t2i
  python -m mmjax.generate --workdir=runs/t2i --prompt="a red circle." --out=image.png

Args (comma-separated key=value after the colon):
  tokenizer=DIR  the workdir of a finished configs/vq.py run (default runs/vq)
  codes=K, levels=N  the tokenizer's args (configs/vq.py's defaults: 1024, 2)
  size=S         the LM's size (sizes.py: tiny, small; default tiny)
  layers=N       the LM's blocks (default 4; 0 = the size's own: tiny 2,
                 small 4)
  steps=N        stage length (default 1500)
  batch=N        global batch (default 16)
  lr=X           peak learning rate (default 2e-3)
  positions=P    none | sincos2d: each code slot also carries the row and
                 column of the code it predicts (default sincos2d;
                 config.model.code_positions)
  plain=0|1      flatten each training picture's background to its mean
                 colour before encoding (default 1; the t2i stage's
                 `plain_background`)
  merge=R        merge the tokenizer's codes within L2 distance R of a more
                 used one before the LM learns them (default 0.5; 0: none;
                 the t2i stage's `merge_codes`, vq_codebook.merge_nearby)
  edges=0|1      with a layout, each code cell also learns where its
                 object's box edges cut it, through a 2-layer MLP (default
                 1; config.model.cell_edges)
  layout=0|1     plan, then draw: the LM writes the objects' colours,
                 shapes and boxes before the codes, and each code slot
                 carries its cell's share of them (default 1;
                 config.model.scene_layout; models/scene_layout.py)
The defaults are the measured best (docs/image-generation.md); the recipe
before layouts was layout=0,positions=none,plain=0,lr=1e-3,layers=0, that
of stop 42 layers=0,edges=0,merge=0 (and the stage's
layout_order=left_to_right), that of stop 43 layers=4,edges=0,merge=0
(and left_to_right).
config.drawing: how the run draws unless told otherwise (generate,
evaluate): guidance, temperature / top_k / top_p of the codes, and with a
layout plan_temperature (colours, shapes), place_temperature (boxes) and
apart (each box kept clear of the earlier ones; measured no better);
with layout=1 everything greedy and no guidance (measured best,
docs/image-generation.md), else guidance 3 at temperature 1.
One stage, `t2i` (train/stages/t2i.py), on the shapes recipe's images and
captions (the 'contrastive' format: both captions of every training image,
32 ids at most); the tokenizer is frozen, 10% of the captions are dropped
for classifier-free guidance. docs/image-generation.md.
"""
import os

import ml_collections

from mmjax import config as config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  """Returns the text-to-image recipe; see the module docstring."""
  args = config_lib.parse_arg(arg, tokenizer="runs/vq", codes=1024, levels=2,
                              size="tiny", steps=1500, batch=16, plain=1,
                              positions="sincos2d", layout=1, lr=2e-3,
                              layers=4, merge=0.5, edges=1)
  vq_recipe = config_lib.load_config(
      os.path.join(_HERE, "vq.py") + f":codes={args.codes},levels="
      f"{args.levels}")
  shapes = config_lib.load_config(
      os.path.join(_HERE, "shapes.py") + f":size={args.size}")
  config = vq_recipe
  config.model.lm = shapes.model.lm
  if int(args.layers) < 0:
    raise config_lib.ConfigError(
        f"config arg layers={args.layers} must be >= 0 (0: the size's own)")
  if int(args.layers):
    config.model.lm.n_layers = int(args.layers)
  config.model.code_positions = args.positions
  config.model.scene_layout = bool(int(args.layout))
  config.model.cell_edges = bool(int(args.edges))
  stage = ml_collections.ConfigDict(config.stages.vq.to_dict())
  for key in ("commitment", "decay", "dead_threshold", "recon"):
    del stage[key]
  stage.update(loss="t2i", steps=args.steps,
               trainable=("llm", "scene_layout")
               if config.model.scene_layout else ("llm",),
               tokenizer=args.tokenizer, cfg_dropout=0.1,
               plain_background=bool(int(args.plain)),
               layout_weight=1.0, object_weight=1.0,
               layout_order="caption", merge_codes=float(args.merge))
  stage.optimizer.lr = float(args.lr)
  stage.optimizer.weight_decay = 0.01
  stage.optimizer.lr_mult = ml_collections.ConfigDict({"llm": 1.0})
  stage.schedule.warmup_steps = min(100, max(1, args.steps // 10))
  config.stages = ml_collections.ConfigDict({"t2i": stage})
  config.drawing = ml_collections.ConfigDict(dict(
      guidance=1.0 if config.model.scene_layout else 3.0,
      temperature=0.0 if config.model.scene_layout else 1.0,
      top_k=0, top_p=1.0, plan_temperature=0.0, place_temperature=0.0,
      apart=False))
  config.stage_order = ("t2i",)
  config.batch_size = args.batch
  return config
