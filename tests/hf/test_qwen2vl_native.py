"""Qwen2-VL at native resolution against transformers 4.57.1.

Host side: `native_resolution` (smart_resize, bicubic resize, normalise,
patch order, grids) equals `Qwen2VLImageProcessor` (slow path) on
non-square images and on a frame stack. Device side: the tower over a packed
batch of two non-square images of different sizes equals `model.visual`;
whole-model logits for two images and for a video; greedy decoding through
mmjax's KV-cache loop equals HF `generate`.
"""
import numpy as np
import pytest
import torch
import transformers
from transformers.models.qwen2_vl import image_processing_qwen2_vl as hf_proc

import hf_testing
from mmjax import hf
from mmjax.data import native_resolution as nr
from mmjax.decoding import decode
from mmjax.inference import run as run_lib
from mmjax.models import layout
from mmjax.models.layout import ImageSizeError
from mmjax.models.mllm import MLLM

IMAGE, VIDEO, START, END = 150, 151, 152, 153
PATCH = 14
SIZES = [(56, 84), (112, 56)]  # two non-square images of different sizes


@pytest.fixture(scope="module")
def qwen2vl(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.Qwen2VLConfig(
      vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2,
                         mlp_ratio=2, patch_size=PATCH, spatial_merge_size=2,
                         temporal_patch_size=2),
      text_config=dict(vocab_size=160, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, rope_theta=50.0,
                       rope_scaling={"type": "mrope",
                                     "mrope_section": [2, 3, 3]}),
      image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START,
      vision_end_token_id=END)
  model = hf_testing.perturb(
      transformers.Qwen2VLForConditionalGeneration(config), seed=11)
  conv = hf.import_checkpoint(hf_testing.save(
      model, tmp_path_factory.mktemp("qwen2vl_native")))
  return model, conv, conv.module()


def _uint8(h, w, seed):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def _media(sizes, seed=0):
  """Normalised-looking f32 media of the given (h, w) sizes."""
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(h, w, 3)).astype(np.float32) for h, w in sizes]


def _hf_patches(items):
  """pixel_values, grid_thw of HF's processor with resize etc. off."""
  proc = transformers.Qwen2VLImageProcessor(
      do_resize=False, do_rescale=False, do_normalize=False,
      patch_size=PATCH, temporal_patch_size=2, merge_size=2)
  out = proc(images=items, return_tensors="pt", data_format="channels_first",
             input_data_format="channels_last")
  return out["pixel_values"], out["image_grid_thw"]


@pytest.mark.parametrize("h,w", [(37, 91), (300, 41), (1000, 700), (20, 30),
                                 (28, 28 * 150), (1, 150)])
def test_smart_resize_matches_hf(h, w):
  kw = dict(factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 64)
  assert nr.smart_resize(h, w, **kw) == hf_proc.smart_resize(h, w, **kw)


def test_preprocess_matches_hf_processor():
  # Upsized to min_pixels, kept, downsized to max_pixels (all non-square).
  images = [_uint8(37, 91, 0), _uint8(130, 61, 1), _uint8(500, 333, 2)]
  lo, hi = 56 * 56, 28 * 28 * 16
  # min_pixels / max_pixels: 4.57.1's __init__ drops a `size=` argument.
  proc = transformers.Qwen2VLImageProcessor(min_pixels=lo, max_pixels=hi)
  ours, grids = [], []
  for im in images:
    x = nr.preprocess(im, 28, lo, hi)
    assert x.shape[0] != x.shape[1]  # aspect kept, no square
    patches, grid = nr.patchify(x)
    ours.append(patches)
    grids.append(grid)
  for im in images:  # one image per call: HF resizes a list to the first's size
    ref = proc(images=[im], return_tensors="np")
    got = ours.pop(0)
    assert [tuple(ref["image_grid_thw"][0])] == [grids.pop(0)]
    np.testing.assert_allclose(got, ref["pixel_values"], atol=2e-5)


def test_video_patches_match_hf():
  frames = _media([(56, 84)] * 3, seed=4)  # 3 frames: last one repeated
  proc = transformers.Qwen2VLImageProcessor(
      do_resize=False, do_rescale=False, do_normalize=False,
      patch_size=PATCH, temporal_patch_size=2, merge_size=2)
  ref, ref_grid = proc._preprocess(  # pylint: disable=protected-access
      frames, do_resize=False, do_rescale=False, do_normalize=False,
      data_format="channels_first", input_data_format="channels_last",
      patch_size=PATCH, temporal_patch_size=2, merge_size=2)
  ours, grid = nr.patchify(np.stack(frames))
  assert grid == tuple(ref_grid) == (2, 4, 6)
  np.testing.assert_array_equal(ours, ref)


def test_bad_sizes_are_refused():
  with pytest.raises(ImageSizeError, match="aspect ratio"):
    nr.smart_resize(1, 500)
  with pytest.raises(ImageSizeError, match="multiples of 28"):
    nr.patchify(np.zeros((30, 56, 3), np.float32))


def test_packed_tower_matches_visual(qwen2vl):
  model, conv, module = qwen2vl
  items = _media(SIZES, seed=1)
  pixels, thw = _hf_patches(items)
  packed = nr.pack_for(module.cfg.vision, [items])
  n = len(pixels)
  np.testing.assert_array_equal(packed.patches[:n], pixels.numpy())
  assert packed.grids == [tuple(g) for g in thw.tolist()]
  ref = model.model.visual(pixels, grid_thw=thw).numpy()
  ours = module.apply({"params": conv.params}, **packed.arrays(),
                      method=MLLM.encode_native)
  assert ours.shape == (1, 1, 6 + 8, 32)
  hf_testing.assert_parity("qwen2-vl packed visual", ours[0, 0], ref)
  # Attention stays inside each image: image 2 alone gives its own tokens.
  alone = module.apply({"params": conv.params},
                       **nr.pack_for(module.cfg.vision, [items[1:]]).arrays(),
                       method=MLLM.encode_native)
  np.testing.assert_allclose(alone[0, 0], ours[0, 0, 6:], atol=1e-5)


def _prompt(rng, grids, token):
  """Text, <start> placeholders <end> per item, text; and layout pieces."""
  head = list(rng.integers(0, 140, 3))
  tokens, pieces = list(head), [list(head)]
  for (h, w, f) in grids:
    n = (-(-f // 2)) * (h // 28) * (w // 28)
    tokens += [START] + [token] * n + [END]
    pieces[-1].append(START)
    pieces += [layout.Media(h, w, f), [END]]
  tail = list(rng.integers(0, 140, 4))
  tokens += tail
  pieces[-1] += tail
  return np.asarray(tokens), pieces


def _logits(module, params, tokens, pieces, media, token):
  seq = layout.assemble(module.cfg, pieces, token)
  np.testing.assert_array_equal(seq["image_token_mask"], tokens == token)
  visual = module.apply({"params": params},
                        **nr.pack_for(module.cfg.vision, [media]).arrays(),
                        method=MLLM.encode_native)
  ours, _ = module.apply({"params": params}, tokens[None],
                         seq["positions"][:, None], visual=visual,
                         image_token_mask=tokens[None] == token)
  return ours


def test_logits_two_images(qwen2vl):
  model, conv, module = qwen2vl
  items = _media(SIZES, seed=2)
  pixels, thw = _hf_patches(items)
  tokens, pieces = _prompt(np.random.default_rng(3),
                           [(h, w, 1) for h, w in SIZES], IMAGE)
  ref = model(input_ids=torch.tensor(tokens[None]), pixel_values=pixels,
              image_grid_thw=thw).logits.numpy()
  ours = _logits(module, conv.params, tokens, pieces, items, IMAGE)
  hf_testing.assert_parity("qwen2-vl logits, 2 native images", ours, ref)


def test_logits_video(qwen2vl):
  model, conv, module = qwen2vl
  frames = np.stack(_media([(56, 84)] * 4, seed=5))
  ours_px, grid = nr.patchify(frames)
  tokens, pieces = _prompt(np.random.default_rng(6), [(56, 84, 4)], VIDEO)
  ref = model(input_ids=torch.tensor(tokens[None]),
              pixel_values_videos=torch.tensor(ours_px),
              video_grid_thw=torch.tensor([grid])).logits.numpy()
  ours = _logits(module, conv.params, tokens, pieces, [frames], VIDEO)
  hf_testing.assert_parity("qwen2-vl logits, video", ours, ref)


def test_greedy_generation_native_images(qwen2vl):
  """Two non-square images of different sizes through mmjax's compiled
  KV-cache decode loop give HF `generate`'s greedy tokens."""
  model, conv, module = qwen2vl
  items = _media(SIZES, seed=7)
  pixels, thw = _hf_patches(items)
  tokens, pieces = _prompt(np.random.default_rng(8),
                           [(h, w, 1) for h, w in SIZES], IMAGE)
  n_new = 8
  ref = model.generate(
      input_ids=torch.tensor(tokens[None]), pixel_values=pixels,
      image_grid_thw=thw, max_new_tokens=n_new, min_new_tokens=n_new,
      do_sample=False, eos_token_id=None,
      pad_token_id=0)[0, len(tokens):].tolist()
  out = decode.generate(module, conv.params, [pieces], [items],
                        image_token_id=IMAGE, max_new_tokens=n_new,
                        batch_size=1)
  assert out.tokens[0] == ref
  assert len(set(ref)) > 2  # not degenerate


def test_run_generate_any_size_image(qwen2vl, tmp_path):
  """`inference.load_run` on a converted Qwen2-VL (what `python -m
  mmjax.generate --workdir=...` loads) keeps a 37x91 image's aspect: it is
  resized by smart_resize to 56x112 (8 tokens), never to a square, and
  answers with HF generate's greedy tokens."""
  model, conv, _ = qwen2vl
  run = run_lib.load_run(hf.save_converted(conv, tmp_path / "conv"))
  image = _uint8(37, 91, 9)
  media = run.prepare_media(image)
  assert [m.shape for m in media] == [(56, 112, 3)]
  # A 1-pixel-high strip is resized up (counted), a 1x300 one refused.
  assert [m.shape for m in run.prepare_media(_uint8(1, 150, 0))] == [
      (28, 700, 3)]
  with pytest.raises(ImageSizeError, match="aspect ratio over 200"):
    run.prepare_media(_uint8(1, 300, 0))
  ref_in = transformers.Qwen2VLImageProcessor()(images=[image],
                                                return_tensors="pt")
  assert ref_in["image_grid_thw"].tolist() == [[1, 4, 8]]
  before, after = [5, 17, START], [END, 33, 48]
  n_new = 6
  prompt = before + [IMAGE] * 8 + after
  ref = model.generate(
      input_ids=torch.tensor([prompt]), **ref_in, max_new_tokens=n_new,
      min_new_tokens=n_new, do_sample=False, eos_token_id=None,
      pad_token_id=0)[0, len(prompt):].tolist()
  out = run.generate([before + [IMAGE] + after], [image],
                     max_new_tokens=n_new, stop_ids=[])
  assert out.tokens[0] == ref


def test_batched_generation_mixed_sizes(qwen2vl):
  """One batch: a prompt with one image, one with two images of other sizes
  (left-padded, packed into one sequence, gathered back per row), and a
  text-only prompt; each row equals HF `generate` on that prompt alone."""
  model, conv, module = qwen2vl
  layouts = [[(56, 84)], [(112, 56), (84, 56)], []]
  refs, pieces_all, media_all = [], [], []
  for i, sizes in enumerate(layouts):
    items = _media(sizes, seed=20 + i)
    tokens, pieces = _prompt(np.random.default_rng(30 + i),
                             [(h, w, 1) for h, w in sizes], IMAGE)
    extra = _hf_patches(items) if items else (None, None)
    refs.append(model.generate(
        input_ids=torch.tensor(tokens[None]), pixel_values=extra[0],
        image_grid_thw=extra[1], max_new_tokens=5, min_new_tokens=5,
        do_sample=False, eos_token_id=None,
        pad_token_id=0)[0, len(tokens):].tolist())
    pieces_all.append(pieces)
    media_all.append(items)
  out = decode.generate(module, conv.params, pieces_all, media_all,
                        image_token_id=IMAGE, max_new_tokens=5,
                        batch_size=3)
  assert out.tokens == refs
