"""A model ready to generate with: a trained run or a converted LM.

  run = load_run("runs/shapes")                  # a multimodal recipe
  run.ask("circle.png", "what colour is the circle?")      # -> 'red'
  run = load_run("runs/lm_tiny")                 # a text LM recipe
  run.ask(None, "the red circle")                # a continuation
  run = load_run("converted/llama")              # python -m mmjax.convert
  run.generate([[1, 450, 4996]], max_new_tokens=8).tokens  # token ids in/out
  run = load_run(checkpoint="runs/shapes/checkpoints/sft/600")

What `load_run` accepts:

  multimodal workdir  config.json of family 'mllm': the MLLM, the last
                      finished stage's parameters, the dataset's tokenizer.
  text LM workdir     config.json of family 'lm' (configs/lm.py): the
                      decoder as a `TextLM`, its `llm` parameters,
                      WORKDIR/tokenizer.model.
  converted LM        `python -m mmjax.convert` output of family 'lm'
                      (LLaMA, Mistral, Qwen2, Gemma): no tokenizer unless
                      one is passed; without one, prompt with token ids.

A multimodal run's prompts are chat-templated user turns (as the recipe
trains) and stop at `<|end|>`; a text LM's are plain text after BOS and
stop at EOS. Reading the files is `mmjax.inference.workdir`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from mmjax.data import native_resolution as native_lib
from mmjax.data.tokenizer import AUDIO_TOKEN, IMAGE_ID, Tokenizer
from mmjax.decoding import decode
from mmjax.decoding.contrastive import Contrast
from mmjax.decoding.fastv import FastVConfig
from mmjax.decoding.sampling import Sampling
from mmjax.inference import image_markers, prompts
from mmjax.inference import media as media_lib
from mmjax.inference.prompts import InputError
from mmjax.inference.workdir import (UnreadableCheckpointError,
                                     WorkdirError, find_tokenizer,
                                     is_converted, load_tokenizer,
                                     model_params, read_config,
                                     read_converted, read_final_store,
                                     read_store, text_lm_params)
from mmjax.models import build
from mmjax.models.mllm import MLLM, MLLMConfig
from mmjax.models.text_lm import TEXT_ONLY, TextLM, TextLMConfig

Prompt = str | Sequence[int]


@dataclasses.dataclass
class Run:
  """A model ready to generate with (module docstring).

    run = mmjax.inference.load("runs/shapes_tiny")
    run.ask("circle.png", "what colour is the circle?")   # -> 'red'
    run.generate(["what shape?", "what colour?"], ["a.png", "b.png"]).texts

  Attributes:
    config: the run's config (a conversion: its family, model and hf).
    model: the MLLM, or a TextLM for a plain decoder LM.
    params: the model's parameter tree.
    tokenizer: encodes string prompts and decodes answers; None for a
      conversion loaded without one (then prompts are token ids).
    workdir: the directory loaded.
    checkpoint: the step directory (or a conversion's params directory)
      the parameters came from.
    max_len: the context a prompt plus its answer must fit (None: no
      check).
    stop_ids: a row stops after generating one of these.
    pad_id: the id in padding slots.
  """
  config: ml_collections.ConfigDict
  model: MLLM | TextLM
  params: dict[str, Any]
  tokenizer: Tokenizer | None
  workdir: str
  checkpoint: str
  max_len: int | None = None
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0

  @property
  def cfg(self) -> MLLMConfig | TextLMConfig:
    return self.model.cfg

  @property
  def text_only(self) -> bool:
    """A plain decoder LM: text prompts only, no chat template."""
    return self.cfg.fusion == TEXT_ONLY

  def ask(self, images: Any, prompt: str, *, max_new_tokens: int = 32,
          sampling: Sampling = Sampling(), seed: int = 0,
          fastv: FastVConfig | None = None, resize: str = "square",
          chunk: int = 4, on_text: Callable[[str], None] | None = None,
          contrast: Contrast | None = None) -> str:
    """The model's answer to one prompt about images (greedy by default).

    Args:
      images: None (text only), one image, or a list of them; an image is a
        file path, a PIL image or uint8[H, W, 3]. A text LM takes None.
      prompt: the user's text; `<image>` markers place the images (none:
        one `<image>` per image before the text, as the recipe trains). A
        text LM continues it. Empty only with images (else InputError).
      max_new_tokens, sampling, seed, fastv, contrast: as
        `decode.generate` (contrast needs an image).
      resize: 'square' (stretch) or 'pad' (keep the aspect, then resize).
      chunk: tokens per compiled decode call between `on_text` calls.
      on_text: gets each new piece of the answer as decoding goes.
    """
    return self.answer(prompt, self.prepare_media(images, resize=resize),
                       max_new_tokens=max_new_tokens, sampling=sampling,
                       seed=seed, fastv=fastv, chunk=chunk, on_text=on_text,
                       contrast=contrast)

  def answer(self, prompt: str, media: np.ndarray | None, *,
             max_new_tokens: int = 32, sampling: Sampling = Sampling(),
             seed: int = 0, fastv: FastVConfig | None = None, chunk: int = 4,
             on_text: Callable[[str], None] | None = None,
             clips: Sequence[tuple[np.ndarray, np.ndarray]] = (),
             contrast: Contrast | None = None) -> str:
    """`ask` with media already preprocessed: f32[M, S, S, 3] (or
    [M, F, S, S, 3] for video; `media.media_arrays`), a list of any-size
    items for a native-resolution model (`media.native_media`), the tiles of
    an InternVL-tiled one (`media.TiledMedia`), or None. `clips`: audio
    clips as `media.clip_features` gives them (a model with an audio tower);
    the prompt's `<audio>` markers place them (none: one `<audio>` per clip
    before the text, as the audio recipe trains)."""
    tok = self._need_tokenizer("to answer in text")
    n_media = 0 if media is None else len(media)
    pieces = media_lib.expand_tiles(native_lib.sized_pieces(
        self._pieces(prompt, n_media, clips), media), media)
    media = media_lib.model_media(media)
    shown = [""]

    def stream(tokens: list[list[int]]) -> None:
      text = tok.decode(tokens[0]).lstrip()
      if on_text is not None and text.startswith(shown[0]):
        on_text(text[len(shown[0]):])
        shown[0] = text
    if fastv is not None:
      fastv.check(self.cfg)
    out = decode.generate(
        self.model, self.params, [pieces],
        None if media is None else [media], image_token_id=self._image_id,
        max_new_tokens=max_new_tokens, stop_ids=self.stop_ids,
        sampling=sampling, seed=seed, fastv=fastv, batch_size=1,
        pad_id=self.pad_id, max_len=self.max_len, chunk=chunk,
        on_tokens=stream, audio=[list(clips)] if clips else None,
        audio_token_id=getattr(tok, "audio_id", None) if clips else None,
        contrast=contrast)
    text = tok.decode(out.tokens[0]).strip()
    if on_text is not None and text.startswith(shown[0]):
      on_text(text[len(shown[0]):])
    return text

  def generate(self, prompts: Sequence[Prompt], images: Any = None, *,
               max_new_tokens: int = 32, sampling: Sampling = Sampling(),
               seed: int = 0, batch_size: int = 8,
               fastv: FastVConfig | None = None, resize: str = "square",
               stop_ids: Sequence[int] | None = None,
               contrast: Contrast | None = None) -> decode.Generation:
    """Answers (or continuations) of a batch of prompts.

    Args:
      prompts: each a string (a multimodal run: the user turn, templated as
        `ask` does; a text LM: plain text after BOS) or a list of token ids
        (used as they are, BOS and template included; `<image>` ids place a
        multimodal run's images).
      images: None, or one entry per prompt: None, one image or a list.
      max_new_tokens, sampling, seed, fastv: as `decode.generate`; row i
        samples the same tokens whatever the batching.
      batch_size: rows per compiled program.
      resize: as `ask`.
      stop_ids: replaces the run's (`<|end|>` and EOS, or EOS).
      contrast: visual contrastive decoding (`mmjax.decoding.contrastive`;
        every prompt needs an image).

    Returns:
      decode.Generation: per prompt the new token ids (stop id cut off) and
      their text ("" without a tokenizer).
    """
    if isinstance(prompts, str):
      raise InputError("prompts is a list of prompts: pass [prompt]")
    per_prompt = [None] * len(prompts) if images is None else list(images)
    if len(per_prompt) != len(prompts):
      raise InputError(f"{len(per_prompt)} image entries for {len(prompts)} "
                       "prompts: give one entry (None, an image or a list) "
                       "per prompt")
    media = [self.prepare_media(ims, resize=resize) for ims in per_prompt]
    pieces = [media_lib.expand_tiles(native_lib.sized_pieces(
        self._pieces(p, 0 if m is None else len(m)), m), m)
              for p, m in zip(prompts, media)]
    media = [None if m is None else media_lib.model_media(m) for m in media]
    if all(m is None for m in media):
      media = None
    elif native_lib.takes_native(self.cfg) or not isinstance(
        next(m for m in media if m is not None), np.ndarray):
      media = [[] if m is None else m for m in media]  # items of any size
    else:  # prompts without images get an empty [0, ...] array
      shape = next(m for m in media if m is not None).shape[1:]
      media = [np.zeros((0,) + shape, np.float32) if m is None else m
               for m in media]
    if fastv is not None:
      fastv.check(self.cfg)
    out = decode.generate(
        self.model, self.params, pieces, media, image_token_id=self._image_id,
        max_new_tokens=max_new_tokens,
        stop_ids=self.stop_ids if stop_ids is None else stop_ids,
        sampling=sampling, seed=seed, fastv=fastv, batch_size=batch_size,
        pad_id=self.pad_id, max_len=self.max_len, contrast=contrast)
    texts = ([self.tokenizer.decode(t).strip() for t in out.tokens]
             if self.tokenizer is not None else out.texts)
    return decode.Generation(out.tokens, texts)

  def prompt_pieces(self, prompt: Prompt, n_media: int
                    ) -> list[prompts.Piece]:
    """One prompt as `decode.generate` takes it: a string as the templated
    user turn ending where the answer starts, or token ids as given; split
    at its `n_media` images (scoring a continuation builds on it)."""
    return self._pieces(prompt, n_media)

  @property
  def image_token_id(self) -> int:
    """The id of an image placeholder in this run's prompts."""
    return self._image_id

  @property
  def _image_id(self) -> int:
    if self.tokenizer is None:  # a conversion: its HF image token
      ids = _hf_ids(self.config.get("hf"), "image_token_id")
      if ids:
        return ids[0]
      return IMAGE_ID
    image_id = self.image_marker.image_id(self.tokenizer)
    recorded = _hf_ids(self.config.get("hf"), "image_token_id")
    if recorded and image_id != recorded[0]:
      raise InputError(
          f"the tokenizer's {self.image_marker.token!r} is id {image_id}, "
          f"the model's image token is {recorded[0]}: pass the model's own "
          "tokenizer")
    return image_id

  @property
  def image_marker(self) -> image_markers.ImageMarker:
    """How a string prompt writes its images (the model family's way)."""
    return image_markers.for_config(self.config)

  def _need_tokenizer(self, why: str) -> Tokenizer:
    if self.tokenizer is None:
      raise InputError(
          f"{self.workdir} was loaded without a tokenizer, which is needed "
          f"{why}: pass tokenizer=PATH to mmjax.inference.load, or prompt "
          "run.generate with token-id lists")
    return self.tokenizer

  def prepare_media(self, images: Any, video: Sequence[Any] | None = None,
                    resize: str = "square", max_frames: int = 4
                    ) -> np.ndarray | None:
    """One prompt's images (and video frames) as `answer` takes them.

    Args:
      images: None, one image or a list (file paths, PIL images or
        uint8[H, W, 3]).
      video: frames of a video (`media.read_video`), or None.
      resize, max_frames: as `media.media_arrays`.

    Returns:
      f32[M, S, S, 3] (or [M, F, S, S, 3]), None without media.

    Raises:
      InputError: an unreadable image, or any media for a text-only LM.
    """
    stills = media_lib.image_list(images)
    if not stills and not video:
      return None
    if self.text_only:
      raise InputError(f"{self.workdir} holds a text-only LM, which takes no "
                       "images or video: give none")
    stills = [media_lib.as_image(im) for im in stills]
    return media_lib.media_arrays(self.cfg, stills, video, resize, max_frames)

  def _pieces(self, prompt: Prompt, n_media: int,
              clips: Sequence[tuple[np.ndarray, np.ndarray]] = ()
              ) -> list[prompts.Piece]:
    """One prompt as `decode.generate` takes it (module docstring)."""
    if isinstance(prompt, str):
      check_prompt(prompt, n_media + len(clips))
      tok = self._need_tokenizer("for string prompts")
      if self.text_only:
        return [tok.encode(prompt, add_bos=True)]
      marker = self.image_marker
      content = marker.user_turn(prompt, n_media)
      if clips:
        audio_id = getattr(tok, "audio_id", None)
        if audio_id is None:
          raise InputError("this run's tokenizer has no <audio> piece, so "
                           "its prompts cannot hold audio clips")
        content = prompts.user_turn(content, len(clips), AUDIO_TOKEN)
      turns = [{"role": "user", "content": content}]
      return prompts.split_at_images(
          self.cfg, marker.prompt_ids(tok, turns), self._image_id,
          audio_id=getattr(tok, "audio_id", None),
          clip_frames=[int(np.sum(m)) for _, m in clips])
    ids = [int(t) for t in np.asarray(prompt, np.int64).reshape(-1)]
    vocab = self.cfg.lm.vocab_size
    if not ids or not all(0 <= t < vocab for t in ids):
      raise InputError(f"a token-id prompt must be a non-empty list of ids "
                       f"in [0, {vocab}); got {ids[:8]}")
    if self.text_only:
      return [ids]
    return prompts.split_at_images(self.cfg, ids, self._image_id)


def check_prompt(prompt: str, n_media: int) -> None:
  """InputError for a blank prompt without media: the model would generate
  from the template alone. A blank prompt with images asks about them (the
  model describes them as it learned to)."""
  if not prompt.strip() and not n_media:
    raise InputError("the prompt is empty and no image or video is given, "
                     "so there is nothing to answer: give a prompt (a "
                     "multimodal run also takes an empty prompt with an "
                     "image, and describes it)")


def _hf_ids(hf_meta: Any, key: str) -> list[int]:
  """A token id (or list of them) a conversion recorded, as a list."""
  value = hf_meta.get(key) if hf_meta is not None else None
  if value is None:
    return []
  return [int(v) for v in (value if isinstance(value, (list, tuple))
                           else [value])]


def _tokenizer(given: Any, workdir: str, config: ml_collections.ConfigDict
               ) -> Tokenizer | None:
  """A given tokenizer (path or object), else the run's (None for a
  conversion)."""
  if given is not None and not isinstance(given, (str, os.PathLike)):
    return given
  if "hf" in config:
    return load_tokenizer(os.fspath(given)) if given is not None else None
  return find_tokenizer(workdir, config, given)


def load_run(workdir: str | None = None, *, checkpoint: str | None = None,
             tokenizer: Any = None,
             config: ml_collections.ConfigDict | None = None) -> Run:
  """The model, final (or given) parameters and tokenizer of a run.

  Args:
    workdir: a recipe's workdir (multimodal or text LM; its newest
      finished stage checkpoint that can be read is used: an unreadable one
      is skipped with a warning on stderr), or a `python -m mmjax.convert`
      output of family 'lm'.
    checkpoint: a stage step directory (WORKDIR/checkpoints/<stage>/<step>)
      instead; the workdir is three levels up.
    tokenizer: an mmjax tokenizer.model path, or a tokenizer object
      (encode, decode, bos_id, eos_id, pad_id, image_id).
    config: use this config instead of WORKDIR/config.json.

  Raises:
    WorkdirError: nothing generation can use there; the message says why
      (`UnreadableCheckpointError` for a given checkpoint that cannot be
      read).
  """
  if (workdir is None) == (checkpoint is None):
    raise WorkdirError("give exactly one of --workdir and --checkpoint")
  if checkpoint is not None:
    checkpoint = os.path.abspath(checkpoint.rstrip("/"))
    if os.path.basename(checkpoint) == "state":
      checkpoint = os.path.dirname(checkpoint)
    workdir = os.path.dirname(os.path.dirname(os.path.dirname(checkpoint)))
  workdir = os.path.abspath(workdir)
  if checkpoint is None and config is None and is_converted(workdir):
    config, model, params = read_converted(workdir)
    step_dir, max_len = os.path.join(workdir, "params"), None
  else:
    config = config if config is not None else read_config(workdir)
    if checkpoint is None:
      step_dir, store = read_final_store(workdir, config)
    else:
      step_dir = checkpoint
      try:
        store = read_store(step_dir, config)
      except UnreadableCheckpointError as e:
        raise UnreadableCheckpointError(
            f"{e}; pass an older step as the checkpoint, or the workdir to "
            "use its newest readable finished one") from None
    if config.family == "lm":
      model, params = text_lm_params(build.decoder_config(config), store,
                                     step_dir)
      max_len = int(config.data.seq_len)
    else:
      model = MLLM(build.mllm_config(config))
      params = model_params(build.mllm_init(model, IMAGE_ID), store,
                            step_dir)
      max_len = int(config.data.max_len)
  tok = _tokenizer(tokenizer, workdir, config)
  if tok is not None:
    stops = ((tok.eos_id,) if model.cfg.fusion == TEXT_ONLY else
             (tok.end_of_turn_id, tok.eos_id))
    pad_id = getattr(tok, "pad_id", 0)
  else:
    stops = tuple(_hf_ids(config.get("hf"), "eos_token_id"))
    pad_id = (_hf_ids(config.get("hf"), "pad_token_id") or [0])[0]
  return Run(config=config, model=model, params=params, tokenizer=tok,
             workdir=workdir, checkpoint=step_dir, max_len=max_len,
             stop_ids=stops, pad_id=pad_id)
