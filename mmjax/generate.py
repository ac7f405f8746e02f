"""Answers a prompt about images with a trained model, streaming the answer.

  python -m mmjax.generate --workdir=runs/shapes --image=photo.png \\
      --prompt="what colour is the square?"
  python -m mmjax.generate --checkpoint=runs/shapes/checkpoints/sft/600 \\
      --image=a.png --image=b.png --prompt="<image> <image> same shapes?"
  python -m mmjax.generate --workdir=runs/shapes --video=frames/ \\
      --prompt="what moves?"

The model is the run's final one (`mmjax.workdir`: config.json, the last
finished stage's parameters, the dataset's tokenizer). Each image is one
`<image>` in the user turn: put the markers in the prompt where the images
go, or none to have one `<image>\\n` per image before the text (as the
recipe trains). A video is a folder of frames (image files, in name order):
one media item of `model.frames` evenly spaced frames when the model takes
video (frames > 1), else up to --max_frames evenly spaced frames, each an
image. Tokens are printed as they come: the compiled decode loop runs
--stream_chunk tokens per call.

Bad input (an unreadable image, a prompt longer than the context, a
checkpoint of another model) exits with status 2 and one line saying what
to do.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from absl import app, flags, logging
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class InputError(ValueError):
  """Bad command-line input; the message says what to do."""


def read_image(path: str) -> np.ndarray:
  """uint8[H, W, 3] of an image file; InputError when it cannot be read."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    reason = str(e).split("\n")[0] or type(e).__name__
    raise InputError(f"cannot read image {path!r} ({reason}); give a PNG, "
                     "JPEG or other image file PIL can open") from None


def read_video(directory: str) -> list[np.ndarray]:
  """The frames of a folder, in name order."""
  if not os.path.isdir(directory):
    raise InputError(f"--video={directory!r} is not a folder; give a folder "
                     "of frame images")
  names = sorted(n for n in os.listdir(directory)
                 if n.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise InputError(f"--video={directory!r} holds no image files "
                     f"({', '.join(IMAGE_EXTENSIONS)})")
  return [read_image(os.path.join(directory, n)) for n in names]


def evenly(items: Sequence, n: int) -> list:
  """n items spread evenly over the sequence (all when it has <= n)."""
  if len(items) <= n:
    return list(items)
  return [items[int(i)] for i in np.linspace(0, len(items) - 1, n)]


def media_arrays(cfg, stills: Sequence[np.ndarray],
                 video: Sequence[np.ndarray] | None, resize: str,
                 max_frames: int) -> np.ndarray | None:
  """Preprocessed media items f32[M, S, S, 3] or [M, F, S, S, 3] (F =
  cfg.frames; a still image is repeated F times), None without media."""
  from mmjax.data import images as images_lib  # pylint: disable=g-import-not-at-top
  kind = images_lib.normalization_kind(cfg)
  prep = lambda im: images_lib.preprocess(im, cfg.side, resize=resize,
                                          kind=kind)
  items = [np.stack([prep(im)] * cfg.frames) if cfg.frames > 1 else prep(im)
           for im in stills]
  if video:
    if cfg.frames > 1:
      items.append(np.stack([prep(im) for im in evenly(video, cfg.frames)]))
    else:
      items += [prep(im) for im in evenly(video, max_frames)]
  return np.stack(items) if items else None


def user_turn(prompt: str, n_media: int, image_text: str = "<image>") -> str:
  """The prompt with one `<image>` marker per media item."""
  markers = prompt.count(image_text)
  if markers == 0:
    return (image_text + "\n") * n_media + prompt
  if markers != n_media:
    raise InputError(f"the prompt has {markers} {image_text} marker(s) for "
                     f"{n_media} image(s)/frame(s); use one per image, or "
                     "none to put them all first")
  return prompt


def answer(run, prompt: str, media: np.ndarray | None, *,
           max_new_tokens: int, sampling, seed: int = 0, fastv=None,
           chunk: int = 4, on_text: Callable[[str], None] | None = None
           ) -> str:
  """Generates the answer of `run` (`workdir.Run`) to one prompt.

  on_text gets each new piece of the answer as decoding goes.
  """
  from mmjax import evaluate, inference  # pylint: disable=g-import-not-at-top
  tok, cfg = run.tokenizer, run.cfg
  n_media = 0 if media is None else len(media)
  turns = [{"role": "user", "content": user_turn(prompt, n_media)}]
  pieces = evaluate.prompt_pieces(cfg, tok, turns)
  shown = [""]

  def stream(tokens: list[list[int]]) -> None:
    text = tok.decode(tokens[0]).lstrip()
    if on_text is not None and text.startswith(shown[0]):
      on_text(text[len(shown[0]):])
      shown[0] = text
  out = inference.generate(
      run.model, run.params, [pieces], None if media is None else [media],
      image_token_id=tok.image_id, max_new_tokens=max_new_tokens,
      stop_ids=[tok.end_of_turn_id, tok.eos_id], sampling=sampling,
      seed=seed, fastv=fastv, batch_size=1, pad_id=tok.pad_id,
      max_len=int(run.config.data.max_len), chunk=chunk, on_tokens=stream)
  text = tok.decode(out.tokens[0]).strip()
  if on_text is not None and text.startswith(shown[0]):
    on_text(text[len(shown[0]):])
  return text


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _define_flags() -> None:
  """The command line's flags (defined only when run as a program)."""
  d = flags
  d.DEFINE_string("workdir", None, "A run of python -m mmjax.main (its final "
                  "parameters).")
  d.DEFINE_string("checkpoint", None, "Or a stage checkpoint: "
                  "WORKDIR/checkpoints/<stage>/<step>.")
  d.DEFINE_string("config", None, "Config spec (configs/x.py:ARGS) instead "
                  "of the run's config.json.")
  d.DEFINE_string("tokenizer", None, "tokenizer.model path (default: the "
                  "workdir's, else the dataset's).")
  d.DEFINE_multi_string("image", [], "An image file; repeat for several.")
  d.DEFINE_string("video", None, "A folder of video frames.")
  d.DEFINE_integer("max_frames", 4, "Frames taken from a video by a model "
                   "without video input.")
  d.DEFINE_string("prompt", None, "The question or instruction.")
  d.DEFINE_integer("max_new_tokens", 32, "Most tokens to generate.")
  d.DEFINE_float("temperature", 0.0, "0 = greedy.")
  d.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens (0 = "
                   "all).")
  d.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = off).")
  d.DEFINE_integer("seed", 0, "Sampling seed.")
  d.DEFINE_integer("fastv_k", 0, "FastV: prune image tokens after layer k-1 "
                   "(0 = off).")
  d.DEFINE_float("fastv_r", 0.5, "FastV: fraction of image tokens dropped.")
  d.DEFINE_integer("stream_chunk", 4, "Tokens per compiled decode call "
                   "between prints.")
  d.DEFINE_enum("resize", "square", ["square", "pad"], "Stretch to a square, "
                "or pad then resize.")


def main(argv: Sequence[str]) -> None:
  """`python -m mmjax.generate ...` (module docstring)."""
  f = flags.FLAGS
  if len(argv) > 1:
    _fail(f"unexpected arguments {list(argv[1:])}; quote the --prompt")
  if not f["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # orbax warns about metadata files
  if f.prompt is None:
    _fail("--prompt is required, e.g. --prompt=\"what colour is the square?\"")
  if (f.workdir is None) == (f.checkpoint is None):
    _fail("give exactly one of --workdir=DIR and --checkpoint=PATH")
  try:  # Images first: a bad file fails before JAX is imported.
    stills = [read_image(p) for p in f.image]
    video = read_video(f.video) if f.video else None
  except InputError as e:
    _fail(str(e))
  from mmjax import config as config_lib  # pylint: disable=g-import-not-at-top
  from mmjax import fastv as fastv_lib  # pylint: disable=g-import-not-at-top
  from mmjax import inference, workdir  # pylint: disable=g-import-not-at-top
  try:
    sampling = inference.Sampling(f.temperature, f.top_k, f.top_p)
    run = workdir.load_run(
        f.workdir, checkpoint=f.checkpoint, tokenizer=f.tokenizer,
        config=config_lib.load_config(f.config) if f.config else None)
    fastv = None
    if f.fastv_k:
      fastv = fastv_lib.FastVConfig(f.fastv_k, f.fastv_r)
      fastv.check(run.cfg)
    media = media_arrays(run.cfg, stills, video, f.resize, f.max_frames)
    answer(run, f.prompt, media, max_new_tokens=f.max_new_tokens,
           sampling=sampling, seed=f.seed, fastv=fastv, chunk=f.stream_chunk,
           on_text=lambda t: print(t, end="", flush=True))
  except (InputError, workdir.WorkdirError, config_lib.ConfigError,
          ValueError) as e:  # ValueError: sizes, lengths, flag values
    _fail(str(e).split("\n")[0])
  print(flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
