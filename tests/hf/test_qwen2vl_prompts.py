"""String prompts on a converted Qwen2-VL against transformers 4.57.1.

A tiny Qwen2-VL with a byte-level BPE tokenizer holding Qwen2-VL's special
tokens: `Run`'s prompt ids for a non-square image equal Qwen2VLProcessor's
(chat template + `<|image_pad|>` expanded to the merged-grid tokens), and
greedy answers through `inference.load` equal HF `generate`.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import tokenizers
import torch
import transformers
from PIL import Image
from tokenizers import decoders, models, pre_tokenizers, trainers

import hf_testing
from mmjax import hf, inference
from mmjax.data import native_resolution as nr
from mmjax.inference import image_markers
from mmjax.models import layout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>",
            "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
EOS, START, END, IMAGE, VIDEO = 0, 3, 4, 5, 6
VOCAB = 300
SENTENCES = ["what colour is the circle? it is red.",
             "Describe the image: two circles and one square.",
             "user assistant system hello world 1234"] * 4

# Qwen2-VL's chat template for text and image content items (as its
# chat_template.json renders them; videos and vision ids left out).
QWEN2VL_JINJA = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class _ImageProcessorOnly(transformers.Qwen2VLProcessor):
  """HF's Qwen2VLProcessor (chat template, `<|image_pad|>` expansion) without
  its video processor, which needs torchvision (not installed)."""

  def check_argument_for_proper_class(self, argument_name, argument):
    if argument_name == "video_processor" and argument is None:
      return None
    return super().check_argument_for_proper_class(argument_name, argument)


def _tokenizer_dir(path, specials=tuple(SPECIALS)) -> str:
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(
      vocab_size=VOCAB, show_progress=False, special_tokens=list(specials),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  fast = transformers.Qwen2TokenizerFast(
      tokenizer_object=tok, eos_token="<|endoftext|>",
      pad_token="<|endoftext|>", chat_template=QWEN2VL_JINJA)
  fast.save_pretrained(str(path))
  return str(path)


@pytest.fixture(scope="module")
def qwen2vl(tmp_path_factory):
  root = tmp_path_factory.mktemp("qwen2vl_prompts")
  tok_dir = _tokenizer_dir(root / "tokenizer")
  fast = transformers.Qwen2TokenizerFast.from_pretrained(tok_dir)
  assert [fast.convert_tokens_to_ids(t) for t in SPECIALS] == list(range(7))
  torch.manual_seed(0)
  config = transformers.Qwen2VLConfig(
      vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2,
                         mlp_ratio=2, patch_size=14, spatial_merge_size=2,
                         temporal_patch_size=2),
      text_config=dict(vocab_size=len(fast), hidden_size=32,
                       intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1,
                       rope_theta=50.0,
                       rope_scaling={"type": "mrope",
                                     "mrope_section": [2, 3, 3]}),
      image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START,
      vision_end_token_id=END)
  model = hf_testing.perturb(
      transformers.Qwen2VLForConditionalGeneration(config), seed=5)
  conv = hf.import_checkpoint(hf_testing.save(model, root / "hf"))
  run = inference.load(hf.save_converted(conv, root / "conv"),
                       tokenizer=tok_dir)
  processor = _ImageProcessorOnly(
      image_processor=transformers.Qwen2VLImageProcessor(), tokenizer=fast,
      chat_template=QWEN2VL_JINJA)
  return model, run, processor


def _image(h, w, seed):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def _hf_inputs(processor, image, text):
  messages = [{"role": "user", "content": [{"type": "image"},
                                           {"type": "text", "text": text}]}]
  rendered = processor.apply_chat_template(messages, tokenize=False,
                                           add_generation_prompt=True)
  return processor(text=[rendered], images=[image], return_tensors="pt")


def _our_ids(run, prompt, media):
  """The prompt ids `Run` feeds generation: pieces with each image's
  `<|image_pad|>` expanded to its merged-grid tokens."""
  pieces = nr.sized_pieces(run._pieces(prompt, len(media)), media)  # pylint: disable=protected-access
  ids = []
  for piece in pieces:
    ids += ([IMAGE] * layout.placeholder_tokens(
        run.cfg, piece.height, piece.width, piece.frames)
            if isinstance(piece, layout.Media) else list(piece))
  return ids


def test_marker_registry():
  assert image_markers.for_config({"hf": {"model_type": "qwen2_vl"}}) is (
      image_markers.QWEN2_VL)
  assert image_markers.for_config({"hf": {"model_type": "llava"}}) is (
      image_markers.DEFAULT)
  assert image_markers.for_config({}) is image_markers.DEFAULT
  assert image_markers.QWEN2_VL.user_turn("hi", 2) == "<image><image>hi"
  assert image_markers.DEFAULT.user_turn("hi", 2) == "<image>\n<image>\nhi"


def test_prompt_ids_equal_the_processors(qwen2vl):
  """A 37x91 image: the chat-templated prompt with 8 `<|image_pad|>` ids
  (smart_resize to 56x112, a 4x8 grid merged 2x2) equals HF's."""
  _, run, processor = qwen2vl
  image = _image(37, 91, 1)
  ref = _hf_inputs(processor, image, "what colour is the circle?")
  assert ref["image_grid_thw"].tolist() == [[1, 4, 8]]
  ours = _our_ids(run, "what colour is the circle?", run.prepare_media(image))
  assert ours == ref["input_ids"][0].tolist()
  assert ours.count(IMAGE) == 8 and ours.count(START) == 1


def test_greedy_answer_equals_hf_generate(qwen2vl):
  """`inference.load(...).generate` with a string prompt and a non-square
  image gives HF `generate`'s greedy tokens on the processor's inputs."""
  model, run, processor = qwen2vl
  image = _image(70, 40, 2)
  ref_in = _hf_inputs(processor, image, "Describe the image.")
  n_new = 6
  ref = model.generate(**ref_in, max_new_tokens=n_new,
                       min_new_tokens=n_new, do_sample=False,
                       eos_token_id=None, pad_token_id=EOS
                       )[0, ref_in["input_ids"].shape[1]:].tolist()
  out = run.generate(["Describe the image."], [image],
                     max_new_tokens=n_new, stop_ids=[])
  assert out.tokens[0] == ref
  assert len(set(ref)) > 2  # not degenerate


def test_prompt_places_images_with_image_markers(qwen2vl):
  """`<image>` inside the prompt places the image mid-text, as a content
  list [text, image, text] does in HF's chat template."""
  _, run, processor = qwen2vl
  image = _image(50, 120, 3)
  messages = [{"role": "user", "content": [
      {"type": "text", "text": "look: "}, {"type": "image"},
      {"type": "text", "text": " what colour?"}]}]
  rendered = processor.apply_chat_template(messages, tokenize=False,
                                           add_generation_prompt=True)
  ref = processor(text=[rendered], images=[image], return_tensors="pt")
  ours = _our_ids(run, "look: <image> what colour?", run.prepare_media(image))
  assert ours == ref["input_ids"][0].tolist()


@pytest.mark.slow
def test_cli_answers_as_hf_generate(qwen2vl, tmp_path):
  """`python -m mmjax.generate --workdir=CONVERTED --tokenizer=HF_DIR
  --image=PNG --prompt=...` prints HF generate's greedy answer (cut at the
  first <|im_end|> / <|endoftext|>, as the CLI stops)."""
  model, run, processor = qwen2vl
  png = tmp_path / "wide.png"
  image = _image(40, 90, 4)
  Image.fromarray(image).save(png)
  prompt = "what colour is the circle?"
  n_new = 6
  ref_in = _hf_inputs(processor, image, prompt)
  ref = model.generate(**ref_in, max_new_tokens=n_new,
                       min_new_tokens=n_new, do_sample=False,
                       eos_token_id=None, pad_token_id=EOS
                       )[0, ref_in["input_ids"].shape[1]:].tolist()
  stops = [i for i, t in enumerate(ref) if t in (EOS, 2)]
  want = run.tokenizer.decode(ref[:stops[0]] if stops else ref).strip()
  assert want
  proc = subprocess.run(
      [sys.executable, "-m", "mmjax.generate", f"--workdir={run.workdir}",
       f"--tokenizer={run.tokenizer.name}", f"--image={png}",
       f"--prompt={prompt}", f"--max_new_tokens={n_new}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == want


def test_another_tokenizer_is_refused(qwen2vl, tmp_path):
  """A tokenizer whose `<|image_pad|>` is not the model's image token (here
  swapped with `<|video_pad|>`) is refused, not silently misused."""
  _, run, _ = qwen2vl
  swapped = SPECIALS[:5] + [SPECIALS[6], SPECIALS[5]]
  other = inference.load(run.workdir,
                         tokenizer=_tokenizer_dir(tmp_path / "tok", swapped))
  with pytest.raises(inference.InputError,
                     match=r"'<\|image_pad\|>' is id 6, the model's image "
                           r"token is 5: pass the model's own tokenizer"):
    other.generate(["hi"], [_image(40, 60, 0)], max_new_tokens=1)
