"""Tests for M-RoPE: id builders (position_ids) and rotation (positions)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import position_ids as pid
from mmjax.models import positions

jax.config.update("jax_default_matmul_precision", "highest")

T = pid.TextSegment
V = pid.VisionSegment

_rope = jax.jit(positions.apply_rope, static_argnums=2)
_mrope = jax.jit(positions.apply_mrope, static_argnums=(2, 3))


def _ids(*rows):
  return np.array(rows, np.int32)


def _hf_mrope_numpy(x, pos, theta, sections):
  """Numpy transcription of HF Qwen2-VL (4.57.1) rotary + M-RoPE application.

  Qwen2VLRotaryEmbedding: freqs = inv_freq x position_ids per axis ->
  emb = cat(freqs, freqs) -> cos/sin of shape [3, B, L, Dh].
  apply_multimodal_rotary_pos_emb: split the last axis by `mrope_section * 2`,
  chunk i comes from axis i % 3, concatenate, then
  q * cos + rotate_half(q) * sin. x: [B, L, H, Dh], pos: [3, B, L].
  """
  dh = x.shape[-1]
  inv_freq = 1.0 / theta**(np.arange(0, dh, 2, dtype=np.float64) / dh)
  freqs = pos[..., None].astype(np.float64) * inv_freq  # [3, B, L, Dh/2]
  emb = np.concatenate([freqs, freqs], axis=-1)
  cos, sin = np.cos(emb), np.sin(emb)
  bounds = np.cumsum(list(sections) * 2)[:-1]
  cos = np.concatenate(
      [m[i % 3] for i, m in enumerate(np.split(cos, bounds, axis=-1))], -1)
  sin = np.concatenate(
      [m[i % 3] for i, m in enumerate(np.split(sin, bounds, axis=-1))], -1)
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # unsqueeze_dim=2
  rotated = np.concatenate([-x[..., dh // 2:], x[..., :dh // 2]], axis=-1)
  return x * cos + rotated * sin


# ----------------------------------------------------------------- id builders


def test_text_only_ids_are_three_copies_of_arange():
  pos, delta = pid.mrope_positions([T(7)])
  np.testing.assert_array_equal(pos, np.tile(np.arange(7), (3, 1)))
  assert pos.dtype == np.int32 and delta == 0
  np.testing.assert_array_equal(pid.rope_positions([T(3), V(1, 2, 2)]),
                                np.arange(7))


def test_image_and_text_hand_computed():
  # 3 text, image t=1 h=2 w=3 (non-square), 2 text.
  pos, delta = pid.mrope_positions([T(3), V(1, 2, 3), T(2)])
  np.testing.assert_array_equal(pos, _ids(
      [0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7],
      [0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7],
      [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7]))
  assert delta == 8 - 11
  # A port that swaps height and width gets different ids.
  swapped, _ = pid.mrope_positions([T(3), V(1, 3, 2), T(2)])
  assert not np.array_equal(pos, swapped)


def test_two_images_with_text_between():
  pos, delta = pid.mrope_positions(
      [T(2), V(1, 2, 3), T(1), V(1, 3, 2), T(2)])
  np.testing.assert_array_equal(pos, _ids(
      [0, 1, 2, 2, 2, 2, 2, 2, 5, 6, 6, 6, 6, 6, 6, 9, 10],
      [0, 1, 2, 2, 2, 3, 3, 3, 5, 6, 6, 7, 7, 8, 8, 9, 10],
      [0, 1, 2, 3, 4, 2, 3, 4, 5, 6, 7, 6, 7, 6, 7, 9, 10]))
  assert delta == 11 - 17


def test_video_text_after_continues_at_block_max_plus_one():
  # DESIGN.md section 7: merged grid 4x2x3 -> ids after the video are 8..13 in
  # transformers 4.57.1 (5.23 gives 7..12, colliding with the last frame).
  pos, delta = pid.mrope_positions([T(4), V(4, 2, 3), T(6)])
  video = pos[:, 4:28]
  np.testing.assert_array_equal(video[0], 4 + np.repeat(np.arange(4), 6))
  np.testing.assert_array_equal(video[1],
                                4 + np.tile([0, 0, 0, 1, 1, 1], 4))
  np.testing.assert_array_equal(video[2], 4 + np.tile([0, 1, 2], 8))
  np.testing.assert_array_equal(pos[:, 28:], np.tile(np.arange(8, 14), (3, 1)))
  assert delta == 14 - 34


def test_from_patch_grid_merges():
  assert V.from_patch_grid(4, 4, 6) == V(4, 2, 3)
  with pytest.raises(ValueError, match="divisible"):
    V.from_patch_grid(1, 3, 4)


def test_temporal_scaling_changes_only_temporal_ids():
  plain, _ = pid.mrope_positions([T(2), V(4, 2, 3, second_per_grid_t=0.5)])
  scaled, delta = pid.mrope_positions(
      [T(2), V(4, 2, 3, second_per_grid_t=0.5)], tokens_per_second=3)
  np.testing.assert_array_equal(scaled[1:], plain[1:])
  # floor(frame * 0.5 * 3) = 0, 1, 3, 4 (4.57.1 would truncate 0.5 to 0).
  np.testing.assert_array_equal(scaled[0, 2:],
                                2 + np.repeat([0, 1, 3, 4], 6))
  assert delta == 7 - 26  # text after would continue at the t max + 1
  # Images (t = 1) are unaffected.
  img = [T(1), V(1, 2, 2, second_per_grid_t=2.0), T(1)]
  np.testing.assert_array_equal(
      pid.mrope_positions(img, tokens_per_second=25)[0],
      pid.mrope_positions(img)[0])


def test_batch_left_and_right_padding():
  a = [T(2), V(1, 2, 3), T(1)]  # 9 tokens, max id 5
  b = [T(3)]  # 3 tokens
  single_a, _ = pid.mrope_positions(a)
  left = np.array([[1] * 9, [0] * 6 + [1] * 3])
  pos, deltas = pid.mrope_positions_batch([a, b], left)
  assert pos.shape == (3, 2, 9) and pos.dtype == np.int32
  np.testing.assert_array_equal(pos[:, 0], single_a)
  np.testing.assert_array_equal(pos[:, 1, :6], 1)  # HF's padding value
  np.testing.assert_array_equal(pos[:, 1, 6:], np.tile([0, 1, 2], (3, 1)))
  np.testing.assert_array_equal(deltas, [6 - 9, 3 - 9])
  right = left[:, ::-1]
  pos_r, deltas_r = pid.mrope_positions_batch([a[::-1], b], right)
  np.testing.assert_array_equal(pos_r[:, 1, :3], np.tile([0, 1, 2], (3, 1)))
  np.testing.assert_array_equal(pos_r[:, 1, 3:], 1)
  np.testing.assert_array_equal(deltas_r, deltas)
  with pytest.raises(ValueError, match="row 1"):
    pid.mrope_positions_batch([a, [T(4)]], left)
  with pytest.raises(ValueError, match="attention_mask"):
    pid.mrope_positions_batch([a, b])


def test_decode_continues_where_prompt_ended():
  prompt = [T(4), V(4, 2, 3), T(6)]
  pos, delta = pid.mrope_positions(prompt)
  dec = pid.mrope_decode_positions(pos.shape[1], delta, num_tokens=2)
  assert dec.shape == (3, 1, 2) and dec.dtype == jnp.int32
  np.testing.assert_array_equal(dec, np.tile([[[14, 15]]], (3, 1, 1)))
  # Batched, left-padded prompt: the first decode slot is the padded length.
  batch, deltas = pid.mrope_positions_batch(
      [prompt, [T(5)]], np.array([[1] * 34, [0] * 29 + [1] * 5]))
  dec = jax.jit(pid.mrope_decode_positions)(34, deltas)
  np.testing.assert_array_equal(dec[:, :, 0],
                                np.tile(batch.max(axis=(0, 2)) + 1, (3, 1)))
  np.testing.assert_array_equal(dec[0, :, 0], [14, 5])


# ------------------------------------------------------------- placeholders

_P = 99  # placeholder id


def test_segments_from_tokens_two_images():
  tokens = np.array([1, 2, _P, _P, _P, _P, _P, _P, 3, _P, _P, 4])
  segs = pid.segments_from_tokens(tokens, _P, [(1, 2, 3), V(1, 1, 2)])
  assert segs == [T(2), V(1, 2, 3), T(1), V(1, 1, 2), T(1)]
  # Several placeholder ids (image, video); runs of different ids split.
  tokens = np.array([_P, _P, 98, 98, 98, 98, 5])
  segs = pid.segments_from_tokens(tokens, [_P, 98], [(1, 1, 2), (2, 1, 2)])
  assert segs == [V(1, 1, 2), V(2, 1, 2), T(1)]


@pytest.mark.parametrize("tokens,grids,match", [
    ([1, _P, _P, 2, _P, _P, 3], [(1, 1, 2)], r"image/video #1 .*no grid"),
    ([1, _P, _P, 2], [(1, 1, 2), (1, 2, 2)],
     r"image/video #1 .*\(1, 2, 2\).*no placeholders"),
    ([1, _P, _P, 2, _P, _P, _P], [(1, 1, 2), (1, 2, 2)],
     r"image/video #1 .*needs t\*h\*w = 4.*run of 3 at tokens \[4, 7\)"),
])
def test_placeholder_mismatch_names_the_image(tokens, grids, match):
  with pytest.raises(pid.PlaceholderMismatchError, match=match):
    pid.segments_from_tokens(np.array(tokens), _P, grids)
  assert issubclass(pid.PlaceholderMismatchError, ValueError)


# ------------------------------------------------------------------ rotation


def test_apply_mrope_on_text_ids_equals_rope_exactly():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 2, 16)),
                  jnp.float32)
  pos1 = jnp.asarray(np.arange(10).reshape(2, 5) * 37, jnp.int32)
  want = _rope(x, pos1, 1e6)
  for sections in [(2, 3, 3), (8, 0, 0), (0, 0, 8), (4, 4, 0)]:
    got = _mrope(x, jnp.stack([pos1] * 3), 1e6, sections)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dh,sections", [(16, (2, 3, 3)), (128, (16, 24, 24))])
def test_apply_mrope_matches_hf_numpy_reference(dh, sections):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 6, 2, dh)).astype(np.float32)
  pos = rng.integers(0, 300, size=(3, 2, 6))  # different id on each axis
  got = _mrope(jnp.asarray(x), jnp.asarray(pos, jnp.int32), 1e6, sections)
  want = _hf_mrope_numpy(x, pos, 1e6, sections)
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
  # Swapping the height and width ids changes the result.
  swapped = _mrope(jnp.asarray(x), jnp.asarray(pos[[0, 2, 1]], jnp.int32),
                   1e6, sections)
  assert np.abs(np.asarray(swapped) - want).max() > 1e-2


def test_apply_mrope_float_positions():
  x = np.random.default_rng(2).normal(size=(1, 3, 1, 16)).astype(np.float32)
  pos = np.array([[[0.5, 1.25, 7.0]], [[0.0, 2.5, 3.0]], [[1.0, 1.5, 9.75]]])
  got = _mrope(jnp.asarray(x), jnp.asarray(pos, jnp.float32), 1e4, (2, 3, 3))
  np.testing.assert_allclose(got, _hf_mrope_numpy(x, pos, 1e4, (2, 3, 3)),
                             atol=1e-5)


def test_apply_positions_dispatch_and_errors():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 4, 1, 16)),
                  jnp.float32)
  pos1 = jnp.arange(4, dtype=jnp.int32)[None] * 3
  np.testing.assert_array_equal(positions.apply_positions(x, pos1, 1e4),
                                positions.apply_rope(x, pos1, 1e4))
  pos3 = jnp.stack([pos1, pos1 + 1, pos1 * 2])
  np.testing.assert_array_equal(
      positions.apply_positions(x, pos3, 1e4, (2, 3, 3)),
      positions.apply_mrope(x, pos3, 1e4, (2, 3, 3)))
  with pytest.raises(ValueError, match="need mrope_sections"):
    positions.apply_positions(x, pos3, 1e4)
  with pytest.raises(ValueError, match="sum to 9 .* head_dim 16"):
    positions.apply_positions(x, pos3, 1e4, (3, 3, 3))
  with pytest.raises(ValueError, match="positions"):
    positions.apply_positions(x, pos3[None], 1e4, (2, 3, 3))
  with pytest.raises(ValueError, match=r"\[3, B, L\]"):
    positions.apply_mrope(x, pos3[:2], 1e4, (2, 3, 3))
