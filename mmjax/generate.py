"""Answers a prompt about images with a trained model, streaming the answer.

  python -m mmjax.generate --workdir=runs/shapes --image=photo.png \\
      --prompt="what colour is the square?"
  python -m mmjax.generate --workdir=runs/lm_tiny --prompt="the red circle"
  python -m mmjax.generate --checkpoint=runs/shapes/checkpoints/sft/600 \\
      --image=a.png --image=b.png --prompt="<image> <image> same shapes?"
  python -m mmjax.generate --workdir=runs/shapes --video=frames/ \\
      --prompt="what moves?"
  python -m mmjax.generate --workdir=runs/audio --audio=clip.wav \\
      --prompt="how many tones are there?"

The model is the run's final one (`mmjax.inference.load`: config.json, the last
finished stage's parameters, the dataset's tokenizer). Each image is one
`<image>` in the user turn: put the markers in the prompt where the images
go, or none to have one `<image>\\n` per image before the text (as the
recipe trains). A video is a folder of frames (image files, in name
order): one media item of `model.frames` evenly spaced frames when the model
takes video (frames > 1), else up to --max_frames evenly spaced frames, each
an image. A text LM run (configs/lm.py), or a converted decoder LM (`python
-m mmjax.convert` output, with --tokenizer), takes no images: it continues
the prompt (plain text after BOS) until EOS. A converted Qwen2-VL (with
--tokenizer=its HF tokenizer dir) takes images of any size, each written
as its processor writes it (`inference.image_markers`). An audio run
(configs/audio.py) takes --audio clips (WAV; FLAC / OGG with soundfile),
resampled to 16 kHz: one `<audio>` per clip, placed by the markers in the
prompt or put first. Tokens are printed as they come: the compiled decode
loop runs --stream_chunk tokens per call.

An empty --prompt with an --image (or --video) asks about the image as it
is; without one there is nothing to answer and it is refused. Bad input
(an unreadable image or audio file, a zero-length clip, audio for a model
without an audio tower, an empty prompt without media, a prompt longer than
the context, a checkpoint of another model or one that cannot be read)
exits with status 2 and one line saying what to do. When the run's newest
finished checkpoint cannot be read, a warning says so and the previous
finished one is used.

--contrast_alpha=1 answers with visual contrastive decoding (each token
chosen against the answer about a noised copy of the image; needs --image;
docs/evaluation.md "Contrastive decoding").

Text to image: a run of configs/t2i.py draws the --prompt (a caption, e.g.
"two red circles and a blue square.") and writes the picture to --out
(e.g. image.png); --guidance sets classifier-free guidance (1 = off),
--temperature / --top_k / --top_p sample the image codes
(mmjax.decoding.image_tokens); unless given, the run's own config.drawing
(configs/t2i.py: guidance 3 at temperature 1, or with a layout greedy
without guidance); a run that plans a layout
first (configs/t2i.py:layout=1) also prints it, one "layout: a red circle
[x0, y0, x1, y1], ... (0..1000)" line. A caption longer than the
model reads, one asking for more than six objects, or a guidance <= 0 exits
2 with one line, as does --out for a run that does not draw or a drawing run
without --out.

Grounding: when the answer is a box `[x0, y0, x1, y1]` (0..1000 of the
image side, `mmjax.data.grounding`), one more line gives it in pixels of
the first image; a grounded caption ("describe the image with boxes." ->
"a red circle [...] and a blue star [...].") gives one such line per
object. --draw=out.png also writes that image with the boxes drawn (an
answer without a box then exits 2 after the answer, as does --draw without
--image).
"""
from __future__ import annotations

import os
from typing import Sequence

from absl import app, flags, logging

from mmjax import config as config_lib
from mmjax import contrast_flags

def _define_flags() -> None:
  """The command line's flags (defined only when run as a program)."""
  d = flags
  d.DEFINE_string("workdir", None, "A run of python -m mmjax.main (its final "
                  "parameters), or a python -m mmjax.convert output (a "
                  "decoder LM).")
  d.DEFINE_string("checkpoint", None, "Or a stage checkpoint: "
                  "WORKDIR/checkpoints/<stage>/<step>.")
  d.DEFINE_string("config", None, "Config spec (configs/x.py:ARGS) instead "
                  "of the run's config.json.")
  d.DEFINE_string("tokenizer", None, "A tokenizer.model or a Hugging Face "
                  "tokenizer dir (default: the workdir's, else the dataset's).")
  d.DEFINE_multi_string("image", [], "An image file; repeat for several.")
  d.DEFINE_string("video", None, "A folder of video frames.")
  d.DEFINE_multi_string("audio", [], "An audio file (WAV; FLAC / OGG with "
                        "soundfile); repeat for several.")
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
  contrast_flags.define_flags()
  d.DEFINE_integer("stream_chunk", 4, "Tokens per compiled decode call "
                   "between prints.")
  d.DEFINE_enum("resize", "square", ["square", "pad"], "Stretch to a square, "
                "or pad then resize.")
  d.DEFINE_string("out", None, "Text-to-image runs (configs/t2i.py): write "
                  "the picture the --prompt describes to this file (e.g. "
                  "image.png).")
  d.DEFINE_float("guidance", 3.0, "Text-to-image: classifier-free guidance "
                 "scale (> 0; 1 = off); unless given, the run's own "
                 "(config.drawing).")
  d.DEFINE_string("draw", None, "Write the first --image with the answer's "
                  "boxes drawn to this file (e.g. out.png); the answer must "
                  "be a box or a grounded caption.")


def _check_draw(path: str, n_images: int) -> None:
  """--draw's problems before a model is loaded (config.fail: exit 2)."""
  if not n_images:
    config_lib.fail(f"--draw={path} needs an --image to draw the box on; "
                    "give --image=PNG, or drop --draw")
  _check_image_path("draw", path)


def _check_image_path(flag: str, path: str) -> None:
  """An image file we can write: a known extension in an existing folder."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  ext = os.path.splitext(path)[1].lower()
  if ext not in Image.registered_extensions():
    config_lib.fail(f"--{flag}={path}: unknown image extension {ext!r}; use "
                    "e.g. out.png or out.jpg")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    config_lib.fail(f"--{flag}={path}: folder {folder} does not exist; "
                    "create it or write elsewhere")


def _text_to_image(f) -> None:
  """--out: draw the prompt with a configs/t2i.py run."""
  from mmjax import inference  # pylint: disable=g-import-not-at-top
  from mmjax.data import grounding  # pylint: disable=g-import-not-at-top
  from mmjax.inference import text_to_image  # pylint: disable=g-import-not-at-top
  fail = config_lib.fail
  if f.image or f.video or f.audio:
    fail("--out draws the --prompt; a text-to-image run takes no --image, "
         "--video or --audio")
  _check_image_path("out", f.out)
  try:
    run = text_to_image.load_text_to_image(f.workdir)
    guidance, sampling, _ = run.settings()
    given = lambda name: f[name].present  # noqa: E731
    sampling = inference.Sampling(
        f.temperature if given("temperature") else sampling.temperature,
        f.top_k if given("top_k") else sampling.top_k,
        f.top_p if given("top_p") else sampling.top_p)
    images, layouts = run.draw(
        [f.prompt], seed=f.seed,
        guidance=f.guidance if given("guidance") else guidance,
        sampling=sampling, with_layout=True)
    image = images[0]
    run.save_png(image, f.out)
  except (inference.WorkdirError, config_lib.ConfigError, ValueError,
          OSError) as e:
    fail(str(e).split("\n")[0])
  if run.model.layout_objects:  # the plan the picture was drawn from
    print("layout: " + (", ".join(
        f"{c} {s} {grounding.format_box(b)}" for c, s, b in layouts[0])
                        or "(no object)") + " (0..1000)", flush=True)
  print(f"wrote {f.out} ({image.shape[1]}x{image.shape[0]})", flush=True)


def _report_box(answer: str, stills, draw: str | None, resize: str) -> None:
  """A box line per box of the answer (a box, or a grounded caption's
  mentions), and --draw's picture."""
  from mmjax.data import grounding  # pylint: disable=g-import-not-at-top
  box = grounding.parse_box(answer)
  named = ([("", box)] if box is not None else
           [(f"{c} {s}: ", b) for c, s, b in grounding.parse_mentions(answer)])
  if not named:
    if draw:
      config_lib.fail(f"--draw={draw}: the answer {answer!r} is no box "
                      "[x0, y0, x1, y1] (0..1000), so there is nothing to "
                      "draw; ask \"where is the <colour> <shape>?\" or "
                      f"\"{grounding.GROUNDED_CAPTION_PROMPT}\"")
    return
  for name, box in named:
    line = f"box: {name}{grounding.format_box(box)} (0..1000)"
    if stills:
      height, width = stills[0].shape[:2]
      pixels = grounding.box_to_pixels(box, width, height, resize)
      line += (f" = pixels {grounding.format_box(pixels)} of a "
               f"{width}x{height} image")
    print(line, flush=True)
  if draw:
    try:
      grounding.draw_box(stills[0], [b for _, b in named], draw,
                         resize=resize)
    except (OSError, ValueError) as e:
      config_lib.fail(f"--draw={draw}: cannot write it ({e})")


def main(argv: Sequence[str]) -> None:
  """`python -m mmjax.generate ...` (module docstring)."""
  f = flags.FLAGS
  fail = config_lib.fail
  if len(argv) > 1:
    fail(f"unexpected arguments {list(argv[1:])}; quote the --prompt")
  if not f["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # orbax warns about metadata files
  if f.prompt is None:
    fail("--prompt is required, e.g. --prompt=\"what colour is the square?\"")
  if (f.workdir is None) == (f.checkpoint is None):
    fail("give exactly one of --workdir=DIR and --checkpoint=PATH")
  if f.out is not None:
    if f.workdir is None:
      fail("--out needs --workdir=DIR of a configs/t2i.py run")
    _text_to_image(f)
    return
  if f.workdir is not None:
    run_config = config_lib.read_run_config(f.workdir)
    from mmjax.inference import text_to_image  # pylint: disable=g-import-not-at-top
    if run_config is not None and text_to_image.is_text_to_image(run_config):
      fail(f"{f.workdir} is a text-to-image run: it draws the --prompt; give "
           "--out=image.png")
  if f.draw is not None:
    _check_draw(f.draw, len(f.image))
  from mmjax import inference  # pylint: disable=g-import-not-at-top  (after flag checks: a typo fails fast)
  from mmjax.inference import media as media_lib  # pylint: disable=g-import-not-at-top
  from mmjax.inference import run as run_lib  # pylint: disable=g-import-not-at-top
  try:
    contrast = contrast_flags.from_flags(f)
  except ValueError as e:
    fail(str(e))
  if contrast is not None and not f.image:
    fail(f"--contrast_alpha={f.contrast_alpha} contrasts the answer about "
         "an --image with one about a noised copy: give --image=PNG")
  try:  # Images and prompt first: bad input fails before a model is loaded.
    stills = [media_lib.read_image(p) for p in f.image]
    video = media_lib.read_video(f.video) if f.video else None
    heard = [media_lib.read_clip(p) for p in f.audio]
    run_lib.check_prompt(f.prompt, len(stills) + (video is not None) +
                         len(heard))
  except inference.InputError as e:
    fail(str(e))
  try:
    sampling = inference.Sampling(f.temperature, f.top_k, f.top_p)
    run = inference.load(
        f.workdir, checkpoint=f.checkpoint, tokenizer=f.tokenizer,
        config=config_lib.load_config(f.config) if f.config else None)
    fastv = inference.FastVConfig(f.fastv_k, f.fastv_r) if f.fastv_k else None
    if fastv is not None:
      fastv.check(run.cfg)
    media = run.prepare_media(stills, video, f.resize, f.max_frames)
    clips = [media_lib.clip_features(run.cfg, clip) for clip in heard]
    answer = run.answer(f.prompt, media, max_new_tokens=f.max_new_tokens,
               sampling=sampling, seed=f.seed, fastv=fastv,
               chunk=f.stream_chunk,
               on_text=lambda t: print(t, end="", flush=True), clips=clips,
               contrast=contrast)
  except (inference.InputError, inference.WorkdirError,
          config_lib.ConfigError, ValueError) as e:  # sizes, lengths, flags
    fail(str(e).split("\n")[0])
  print(flush=True)
  _report_box(answer, stills, f.draw, f.resize)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=config_lib.absl_flags_parser)
