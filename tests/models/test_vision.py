"""Tests for mmjax.models.vision (SigLIP / CLIP ViT towers)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import vision

jax.config.update("jax_default_matmul_precision", "highest")

_ALLOWED_NAMES = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp",
                  None}
_cubic = vision._cubic_resize_matrix  # pylint: disable=protected-access
SIGLIP = vision.vision_variant("tiny")
CLIP = vision.vision_variant("tiny", kind="clip")
B = 2


def _images(seed, h=64, w=64):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(B, h, w, 3)), jnp.float32)


def _random_params(cfg, seed=0, scale=0.2):
  """numpy noise with the shapes of `init` (cheaper than compiling init)."""
  shapes = nn.unbox(jax.eval_shape(vision.VisionEncoder(cfg).init,
                                   jax.random.key(0), _images(0)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: jnp.asarray(scale * rng.normal(size=x.shape), x.dtype), shapes)


@functools.lru_cache(maxsize=None)
def _setup(kind):
  cfg = SIGLIP if kind == "siglip" else CLIP
  apply = jax.jit(vision.VisionEncoder(cfg).apply,
                  static_argnames=("feature_layer", "capture_intermediates"))
  return cfg, apply, _random_params(cfg)


def _run_full(kind):
  """Full forward with every block's and norm's output captured."""
  cfg, apply, params = _setup(kind)
  out, state = apply(params, _images(1), capture_intermediates=True)
  inter = state["intermediates"]
  return cfg, params, out, inter


def _np_layer_norm(x, p, eps):
  x = np.asarray(x, np.float64)
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * np.asarray(p["scale"]) + np.asarray(
      p["bias"])


def _np_gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


# ----------------------------------------------------------------- config


def test_config_family_defaults():
  assert (SIGLIP.norm_eps, SIGLIP.activation, SIGLIP.pool) == (
      1e-6, "gelu_tanh", "map")
  clip = vision.vision_variant("L/14-clip")
  assert (clip.norm_eps, clip.activation, clip.pool) == (
      1e-5, "quick_gelu", "none")
  assert (SIGLIP.grid, SIGLIP.num_patches) == (8, 64)
  so400m = vision.vision_variant("So400m/14")
  assert (so400m.grid, so400m.num_patches) == (27, 729)  # 384 // 14.


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="vit"), "allowed: \\['siglip', 'clip', 'internvit'\\]"),
    (dict(width=64, n_heads=3), "not divisible by n_heads"),
    (dict(image_size=4, patch_size=8), "smaller than patch_size"),
    (dict(activation="swish"), "allowed: gelu"),
    (dict(pool="cls"), "allowed: \\['none', 'map'\\]"),
    (dict(kind="clip", pool="map"), "set pool='none'"),
    (dict(dtype="float33"), "not a dtype name"),
    (dict(depth=0), "depth must be positive"),
])
def test_config_rejects(kwargs, match):
  with pytest.raises(ValueError, match=match):
    vision.VisionConfig(**kwargs)


def test_from_dict_and_variants_reject_unknown():
  with pytest.raises(ValueError, match="'hidden'.*allowed keys.*'width'"):
    vision.VisionConfig.from_dict({"width": 64, "hidden": 3})
  with pytest.raises(ValueError, match="'B/16', 'So400m/14'"):
    vision.vision_variant("H/14")
  with pytest.raises(ValueError, match="Unknown VisionConfig key"):
    vision.vision_variant("tiny", widht=32)
  assert vision.vision_variant("small", depth=1).depth == 1


# ----------------------------------------------------------- patchify


def test_patchify_dense_equals_strided_conv_with_hf_kernel():
  p, c, d = 4, 3, 5
  rng = np.random.default_rng(0)
  img = rng.normal(size=(2, 8, 12, c)).astype(np.float32)
  w_hf = rng.normal(size=(d, c, p, p)).astype(np.float32)  # torch [D, C, p, p]
  conv = jax.lax.conv_general_dilated(
      jnp.asarray(img.transpose(0, 3, 1, 2)), jnp.asarray(w_hf), (p, p),
      "VALID", precision="highest")  # [B, D, 2, 3]
  conv = np.asarray(conv).transpose(0, 2, 3, 1).reshape(2, 6, d)
  kernel = w_hf.transpose(2, 3, 1, 0).reshape(p * p * c, d)
  patches = np.asarray(vision.patchify(jnp.asarray(img), p))
  assert patches.shape == (2, 6, p * p * c)
  np.testing.assert_allclose(patches @ kernel, conv, rtol=1e-5, atol=1e-5)
  # Explicit order: token 4 is patch row 1, column 1; vector is (ph, pw, C).
  np.testing.assert_array_equal(patches[1, 4].reshape(p, p, c),
                                img[1, 4:8, 4:8])


def test_patchify_rejects_indivisible():
  with pytest.raises(ValueError, match="60x64 .* patch size 8"):
    vision.patchify(jnp.zeros((1, 60, 64, 3)), 8)


# --------------------------------------------------- position embeddings

# torch.nn.functional.interpolate(mode='bicubic', align_corners=False), 2.13.
_TORCH_4_TO_7 = np.array([
    [1.0992169, -0.0992165, 0., 0.],
    [0.6592568, 0.4022414, -0.0614982, 0.],
    [0.0572159, 0.9889759, -0.0461919, 0.],
    [-0.09375, 0.5937499, 0.5937501, -0.09375],
    [0., -0.0461919, 0.9889759, 0.0572162],
    [0., -0.0614977, 0.402241, 0.6592565],
    [0., 0., -0.0992165, 1.0992165]])
# The same on sin(arange(16)).reshape(4, 4), resized to (3, 5).
_TORCH_SIN_3X5 = np.array([
    [-0.181347, 0.344191, 0.763556, 0.624254, 0.213587],
    [0.226737, -0.242099, -0.650661, -0.583156, -0.25421],
    [-0.331611, 0.203519, 0.708462, 0.695047, 0.361525]])


def test_resize_posemb_matches_torch_bicubic():
  np.testing.assert_allclose(_cubic(4, 7), _TORCH_4_TO_7, atol=2e-6)
  pos = jnp.asarray(np.sin(np.arange(16.0)).reshape(16, 1), jnp.float32)
  out = vision.resize_posemb(pos, (3, 5))
  np.testing.assert_allclose(np.asarray(out).reshape(3, 5), _TORCH_SIN_3X5,
                             atol=2e-6)
  assert vision.resize_posemb(pos, (4, 4)) is pos  # Native grid: identity.
  np.testing.assert_allclose(_cubic(8, 8), np.eye(8), atol=1e-7)


# ------------------------------------------------------------- params


def _check_boxed(cfg):
  variables = jax.eval_shape(vision.VisionEncoder(cfg).init,
                             jax.random.key(0), _images(0))
  leaves = jax.tree.leaves(
      variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert len(leaves) > 10
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
    assert len(leaf.names) == leaf.value.ndim, leaf.names
    assert set(leaf.names) <= _ALLOWED_NAMES, leaf.names
  return nn.unbox(variables)["params"]


def test_param_tree_names_and_boxing():
  p = _check_boxed(SIGLIP)
  assert set(p) == {"patch_embedding", "position_embedding", "layers_0",
                    "layers_1", "post_layernorm", "head"}
  assert set(p["layers_0"]) == {"layer_norm1", "self_attn", "layer_norm2",
                                "mlp"}
  assert set(p["layers_0"]["mlp"]) == {"fc1", "fc2"}
  assert set(p["head"]) == {"probe", "attention", "layernorm", "mlp"}
  assert p["head"]["probe"].shape == (1, 1, 64)
  assert p["patch_embedding"]["kernel"].shape == (8 * 8 * 3, 64)
  assert p["position_embedding"].shape == (64, 64)
  c = _check_boxed(CLIP)
  assert {"class_embedding", "pre_layernorm"} <= set(c)
  assert "head" not in c and "bias" not in c["patch_embedding"]
  assert c["position_embedding"].shape == (65, 64)


def _analytic_count(cfg):
  d, m, p = cfg.width, cfg.mlp_dim, cfg.patch_size
  block = 4 * (d * d + d) + (d * m + m) + (m * d + d) + 4 * d
  n = cfg.num_patches
  if cfg.kind == "clip":
    embed = p * p * 3 * d + (n + 1) * d + d + 2 * d  # +class, +pre-LN.
  else:
    embed = p * p * 3 * d + d + n * d
  head = 0
  if cfg.pool == "map":
    head = d + 4 * (d * d + d) + 2 * d + (d * m + m) + (m * d + d)
  return embed + cfg.depth * block + 2 * d + head


# Measured: So400m/14 428,225,600 (the "400M-class" SigLIP tower incl. MAP
# head, 412,987,248 without); B/16 92,884,224 (85,797,120 without the head,
# the classic 86M ViT-B/16); CLIP L/14-336 303,507,456.
@pytest.mark.parametrize("name, pool, lo, hi", [
    ("tiny", None, 0, 1e9), ("small", None, 0, 1e9), ("bench", None, 0, 1e9),
    ("B/16", None, 92.5e6, 93.2e6), ("B/16", "none", 85.5e6, 86.5e6),
    ("So400m/14", None, 427e6, 429.5e6), ("L/14-clip", None, 303e6, 304e6),
])
def test_param_counts(name, pool, lo, hi):
  cfg = vision.vision_variant(name, **({"pool": pool} if pool else {}))
  x = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3),
                           jnp.float32)
  shapes = jax.eval_shape(vision.VisionEncoder(cfg).init, jax.random.key(0),
                          x)
  count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nn.unbox(shapes)))
  assert count == _analytic_count(cfg)
  assert lo <= count <= hi, count


# ------------------------------------------------------------ forward


def test_siglip_forward_semantics():
  cfg, params, out, inter = _run_full("siglip")
  assert out.tokens.shape == (B, 64, 64) and out.pooled.shape == (B, 64)
  assert out.grid == (8, 8)
  p = params["params"]
  final = inter["layers_1"]["__call__"][0]
  # last_hidden_state is post-LN'd for SigLIP.
  np.testing.assert_allclose(
      out.tokens, _np_layer_norm(final, p["post_layernorm"], cfg.norm_eps),
      rtol=1e-4, atol=1e-4)
  # MAP head against a numpy reference: probe attends to tokens.
  h = p["head"]
  x = np.asarray(out.tokens, np.float64)
  att = h["attention"]
  q = np.einsum("d,dhk->hk", np.asarray(h["probe"][0, 0]),
                att["q"]["kernel"]) + att["q"]["bias"]
  k = np.einsum("bnd,dhk->bnhk", x, att["k"]["kernel"]) + att["k"]["bias"]
  v = np.einsum("bnd,dhk->bnhk", x, att["v"]["kernel"]) + att["v"]["bias"]
  s = np.einsum("hk,bnhk->bhn", q, k) / np.sqrt(q.shape[-1])
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  a = np.einsum("bhn,bnhk->bhk", w, v)
  a = np.einsum("bhk,hkd->bd", a, att["o"]["kernel"]) + att["o"]["bias"]
  hh = _np_layer_norm(a, h["layernorm"], cfg.norm_eps)
  mlp = h["mlp"]
  hh = _np_gelu_tanh(hh @ mlp["fc1"]["kernel"] + mlp["fc1"]["bias"])
  ref = a + hh @ mlp["fc2"]["kernel"] + mlp["fc2"]["bias"]
  np.testing.assert_allclose(out.pooled, ref, rtol=1e-4, atol=1e-4)
  # Different images pool differently.
  assert np.abs(out.pooled[0] - out.pooled[1]).max() > 1e-2


def test_siglip_feature_layer_stops_early():
  _, apply, params = _setup("siglip")
  _, _, _, inter = _run_full("siglip")
  # Without the later block, post-LN and head the call must still work:
  # they are not run.
  pruned = {"params": {k: v for k, v in params["params"].items()
                       if k not in ("layers_1", "post_layernorm", "head")}}
  out = apply(pruned, _images(1), feature_layer=-2)
  assert out.pooled is None and out.grid == (8, 8)
  np.testing.assert_allclose(out.tokens, inter["layers_0"]["__call__"][0],
                             rtol=1e-5, atol=1e-5)


def test_clip_forward_semantics():
  cfg, params, out, inter = _run_full("clip")
  assert out.tokens.shape == (B, 64, 64) and out.pooled.shape == (B, 64)
  final = np.asarray(inter["layers_1"]["__call__"][0])
  assert final.shape == (B, 65, 64)  # CLS + 64 patches inside the tower.
  # HF CLIP last_hidden_state is not post-LN'd; tokens drop the CLS.
  np.testing.assert_allclose(out.tokens, final[:, 1:], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
      out.pooled,
      _np_layer_norm(final[:, 0], params["params"]["post_layernorm"],
                     cfg.norm_eps), rtol=1e-4, atol=1e-4)


def test_clip_feature_layer_zero_is_pre_layernorm_output():
  _, apply, params = _setup("clip")
  _, _, _, inter = _run_full("clip")
  pruned = {"params": {k: v for k, v in params["params"].items()
                       if not k.startswith("layers_")}}
  out = apply(pruned, _images(1), feature_layer=0)
  pre = np.asarray(inter["pre_layernorm"]["__call__"][0])
  np.testing.assert_allclose(out.tokens, pre[:, 1:], rtol=1e-6, atol=1e-6)


def test_non_square_image_resizes_posemb():
  _, apply, params = _setup("siglip")
  out = apply(params, _images(2, 48, 64))
  assert out.tokens.shape == (B, 48, 64) and out.grid == (6, 8)
  assert np.all(np.isfinite(out.tokens))


def test_bad_inputs_raise():
  _, apply, params = _setup("siglip")
  with pytest.raises(ValueError, match="60x64 .* patch size 8"):
    apply(params, _images(0, 60, 64))
  with pytest.raises(ValueError, match="feature_layer=3 is out of range"):
    apply(params, _images(0), feature_layer=3)
  with pytest.raises(ValueError, match="feature_layer=-4 is out of range"):
    apply(params, _images(0), feature_layer=-4)
  with pytest.raises(ValueError, match="4 channels"):
    apply(params, jnp.zeros((1, 64, 64, 4)))


def test_native_size_not_divisible_by_patch_is_cropped():
  # Like So400m/14 at 384: the valid conv ignores the trailing pixels.
  cfg = vision.VisionConfig(image_size=68, patch_size=8)
  model = vision.VisionEncoder(cfg)
  shapes = jax.eval_shape(model.init, jax.random.key(0), _images(0, 68, 68))
  out = jax.eval_shape(model.apply, shapes, _images(0, 68, 68))
  assert out.tokens.shape == (B, 64, 64) and out.grid == (8, 8)
  with pytest.raises(ValueError, match="66x66"):
    jax.eval_shape(model.apply, shapes, _images(0, 66, 66))


def test_conv_stem_tokens_grid_and_refusals():
  VisionConfig, VisionEncoder = vision.VisionConfig, vision.VisionEncoder
  """stem='conv': log2(p) stride-2 convs give the patch grid's tokens, at
  the native size and at another multiple of the patch."""
  cfg = VisionConfig(width=32, depth=1, mlp_dim=64, n_heads=2, image_size=32,
                     patch_size=8, stem="conv", pool="none")
  model = VisionEncoder(cfg)
  images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  params = model.init(jax.random.key(1), images)["params"]
  assert "conv_stem" in params and "patch_embedding" not in params
  assert sorted(params["conv_stem"]) == ["conv_0", "conv_1", "conv_2",
                                         "project"]
  out = model.apply({"params": params}, images)
  assert out.tokens.shape == (2, 16, 32) and out.grid == (4, 4)
  wide = model.apply({"params": params}, jnp.zeros((1, 32, 48, 3)))
  assert wide.grid == (4, 6) and wide.tokens.shape == (1, 24, 32)
  # A token sees only its neighbourhood: changing the far corner leaves the
  # first token alone.
  moved = images.at[:, 24:, 24:].set(0.0)
  first = lambda x: model.apply({"params": params}, x, feature_layer=0).tokens
  np.testing.assert_allclose(first(images)[:, 0], first(moved)[:, 0],
                             atol=1e-6)
  with pytest.raises(ValueError, match="not a power of 2"):
    VisionConfig(patch_size=6, image_size=36, stem="conv")
  with pytest.raises(ValueError, match="stem='conv' is for SigLIP"):
    VisionConfig(kind="clip", stem="conv")
  with pytest.raises(ValueError, match="allowed"):
    VisionConfig(stem="resnet")
