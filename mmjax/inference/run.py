"""A finished (or partly finished) recipe's model: config, tokenizer, params.

  run = load_run("runs/shapes")                  # final parameters
  run = load_run(checkpoint="runs/shapes/checkpoints/sft/600")
  run.model, run.params, run.tokenizer, run.config

The final parameters are those of the last stage (in config.stage_order)
whose newest checkpoint is marked finished. Every stage checkpoints the whole
global parameter store (its model's parameters plus the carried ones), so any
stage's checkpoint holds every group the multimodal model needs once the
stages that train them have run. Only `params` and `carry` are read, not the
optimizer state.

The tokenizer is looked up at, in order: an explicit path, WORKDIR/
tokenizer.model, and the shapes dataset folder the recipe trained on
(`builders.TOKENIZER_FILE`; nothing is built here).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from flax import linen as nn

from mmjax import parallel
from mmjax.data import builders, datasets
from mmjax.data.tokenizer import IMAGE_ID, Tokenizer
from mmjax.models import build
from mmjax.models.mllm import MLLM, MLLMConfig
from mmjax.inference import decode, prompts
from mmjax.inference import media as media_lib
from mmjax.inference.fastv import FastVConfig
from mmjax.inference.sampling import Sampling
from mmjax.train import groups, stages


class WorkdirError(ValueError):
  """A workdir, checkpoint or tokenizer that cannot be used; says why."""


@dataclasses.dataclass
class Run:
  """A model ready to generate with.

    run = mmjax.inference.load("runs/shapes_tiny")
    run.ask("circle.png", "what colour is the circle?")   # -> 'red'
  """
  config: ml_collections.ConfigDict
  model: MLLM
  params: dict[str, Any]
  tokenizer: Tokenizer
  workdir: str
  checkpoint: str  # the step directory the parameters came from

  @property
  def cfg(self) -> MLLMConfig:
    return self.model.cfg

  def ask(self, images: Any, prompt: str, *, max_new_tokens: int = 32,
          sampling: Sampling = Sampling(), seed: int = 0,
          fastv: FastVConfig | None = None, resize: str = "square",
          chunk: int = 4, on_text: Callable[[str], None] | None = None
          ) -> str:
    """The model's answer to one prompt about images (greedy by default).

    Args:
      images: None (text only), one image, or a list of them; an image is a
        file path, a PIL image or uint8[H, W, 3].
      prompt: the user's text; `<image>` markers place the images (none:
        one `<image>` per image before the text, as the recipe trains).
      max_new_tokens, sampling, seed, fastv: as `decode.generate`.
      resize: 'square' (stretch) or 'pad' (keep the aspect, then resize).
      chunk: tokens per compiled decode call between `on_text` calls.
      on_text: gets each new piece of the answer as decoding goes.
    """
    stills = [media_lib.as_image(im) for im in media_lib.image_list(images)]
    media = media_lib.media_arrays(self.cfg, stills, None, resize, 1)
    return self.answer(prompt, media, max_new_tokens=max_new_tokens,
                       sampling=sampling, seed=seed, fastv=fastv, chunk=chunk,
                       on_text=on_text)

  def answer(self, prompt: str, media: np.ndarray | None, *,
             max_new_tokens: int = 32, sampling: Sampling = Sampling(),
             seed: int = 0, fastv: FastVConfig | None = None, chunk: int = 4,
             on_text: Callable[[str], None] | None = None) -> str:
    """`ask` with media already preprocessed: f32[M, S, S, 3] (or
    [M, F, S, S, 3] for video; `media.media_arrays`), or None."""
    tok = self.tokenizer
    n_media = 0 if media is None else len(media)
    turns = [{"role": "user", "content": prompts.user_turn(prompt, n_media)}]
    pieces = prompts.prompt_pieces(self.cfg, tok, turns)
    shown = [""]

    def stream(tokens: list[list[int]]) -> None:
      text = tok.decode(tokens[0]).lstrip()
      if on_text is not None and text.startswith(shown[0]):
        on_text(text[len(shown[0]):])
        shown[0] = text
    if fastv is not None:
      fastv.check(self.cfg)
    out = decode.generate(
        self.model, self.params, [pieces], None if media is None else [media],
        image_token_id=tok.image_id, max_new_tokens=max_new_tokens,
        stop_ids=[tok.end_of_turn_id, tok.eos_id], sampling=sampling,
        seed=seed, fastv=fastv, batch_size=1, pad_id=tok.pad_id,
        max_len=int(self.config.data.max_len), chunk=chunk,
        on_tokens=stream)
    text = tok.decode(out.tokens[0]).strip()
    if on_text is not None and text.startswith(shown[0]):
      on_text(text[len(shown[0]):])
    return text


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json (written by `python -m mmjax.main`)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise WorkdirError(f"{workdir} has no config.json: pass the --workdir "
                       "that `python -m mmjax.main` trained into")
  with open(path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.get("family") != "mllm":
    raise WorkdirError(f"{workdir} holds a {config.get('family')!r} run; "
                       "generation needs a multimodal (family 'mllm') recipe")
  return config


def _read_meta(step_dir: str) -> dict[str, Any] | None:
  try:
    with open(os.path.join(step_dir, "meta", "metadata"),
              encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def final_checkpoint(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Step directory of the last stage whose newest checkpoint is finished."""
  for stage in reversed(list(config.stage_order)):
    directory = os.path.join(workdir, "checkpoints", stage)
    steps = sorted((int(s) for s in (os.listdir(directory)
                                     if os.path.isdir(directory) else [])
                    if s.isdigit()), reverse=True)
    for step in steps:
      meta = _read_meta(os.path.join(directory, str(step)))
      if meta is not None:
        if meta.get("finished"):
          return os.path.join(directory, str(step))
        break  # the newest readable step of this stage is unfinished
  raise WorkdirError(f"{workdir} has no finished stage checkpoint: run the "
                     "recipe (python -m mmjax.main) to the end of a stage "
                     "first")


def read_store(step_dir: str, config: ml_collections.ConfigDict
               ) -> dict[str, Any]:
  """Flat {global path: array} held by one stage checkpoint.

  `config` names the stage's model, which maps its parameter paths to the
  global ones (contrastive and Q-Former stages rename theirs).
  """
  path = os.path.join(os.path.abspath(step_dir), "state")
  meta = _read_meta(step_dir)
  if meta is None or not os.path.isdir(path):
    raise WorkdirError(f"{step_dir} is not a readable stage checkpoint "
                       "(WORKDIR/checkpoints/<stage>/<step>)")
  state = parallel.restore_on_one_device(path, keys=("params", "carry"))
  store = groups.flatten(state.get("carry") or {})
  stage = meta.get("stage", "")
  to_global = lambda p: p
  if stage in config.stages:
    to_global = stages.stage_model(config, stage).to_global
  store.update({to_global(p): v for p, v in
                groups.flatten(state.get("params") or {}).items()})
  return store


def model_params(model: MLLM, store: dict[str, Any], where: str
                 ) -> dict[str, Any]:
  """The model's parameter tree picked from a global store, shape-checked."""
  abstract = groups.flatten(nn.unbox(jax.eval_shape(
      build.mllm_init(model, IMAGE_ID), jax.random.key(0))))
  problems = []
  for path, leaf in sorted(abstract.items()):
    have = store.get(path)
    if have is None:
      problems.append(f"{path}: missing")
    elif tuple(have.shape) != tuple(leaf.shape):
      problems.append(f"{path}: checkpoint {list(have.shape)}, config "
                      f"{list(leaf.shape)}")
  if problems:
    raise WorkdirError(
        f"{where} does not hold this config's model ({len(problems)} "
        f"parameters differ, e.g. {problems[0]}); use the config.json of "
        "the run that wrote the checkpoint, or finish its stages first")
  return groups.unflatten({p: store[p] for p in abstract})


def find_tokenizer(workdir: str, config: ml_collections.ConfigDict,
                   path: str | None = None) -> Tokenizer:
  """The run's tokenizer (module docstring for where it is looked up)."""
  candidates = [path] if path else []
  candidates.append(os.path.join(workdir, builders.TOKENIZER_FILE))
  try:
    builder = datasets.shapes_builder(config)
    candidates.append(os.path.join(builder.data_dir, builders.TOKENIZER_FILE))
  except Exception:  # pylint: disable=broad-except
    pass  # an unusual data config: only the explicit paths then
  for candidate in candidates:
    if os.path.exists(candidate):
      return Tokenizer.load(candidate)
  raise WorkdirError(f"no tokenizer at {' or '.join(candidates)}: pass "
                     "--tokenizer=PATH (the tokenizer.model of the dataset "
                     "the run trained on)")


def load_run(workdir: str | None = None, *, checkpoint: str | None = None,
             tokenizer: str | None = None,
             config: ml_collections.ConfigDict | None = None) -> Run:
  """The model, final (or given) parameters and tokenizer of a run.

  Args:
    workdir: the recipe's workdir; its last finished stage is used.
    checkpoint: a stage step directory (WORKDIR/checkpoints/<stage>/<step>)
      instead; the workdir is three levels up.
    tokenizer: an explicit tokenizer.model path.
    config: use this config instead of WORKDIR/config.json.
  """
  if (workdir is None) == (checkpoint is None):
    raise WorkdirError("give exactly one of --workdir and --checkpoint")
  if checkpoint is not None:
    checkpoint = os.path.abspath(checkpoint.rstrip("/"))
    if os.path.basename(checkpoint) == "state":
      checkpoint = os.path.dirname(checkpoint)
    workdir = os.path.dirname(os.path.dirname(os.path.dirname(checkpoint)))
  workdir = os.path.abspath(workdir)
  config = config if config is not None else read_config(workdir)
  step_dir = checkpoint or final_checkpoint(workdir, config)
  model = MLLM(build.mllm_config(config))
  params = model_params(model, read_store(step_dir, config), step_dir)
  return Run(config=config, model=model, params=params,
             tokenizer=find_tokenizer(workdir, config, tokenizer),
             workdir=workdir, checkpoint=step_dir)
