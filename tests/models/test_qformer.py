"""Tests for mmjax.models.qformer."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import qformer
from tests import helpers

jax.config.update("jax_default_matmul_precision", "highest")

_ALLOWED_NAMES = {"embed", "heads", "kv_heads", "head_dim", "mlp", "vocab",
                  None}
B, N, LT = 2, 6, 5
# depth 2 keeps compiles short; the cross-attention layout is checked at
# depth 5 on shapes only.
CFG = qformer.QFormerConfig(n_queries=4, width=32, depth=2, n_heads=4,
                            mlp_dim=48, cross_attention_freq=2,
                            vision_width=24, vocab_size=50, max_text_len=8,
                            proj_dim=16)


def _assert_all_boxed(variables):
  helpers.assert_all_boxed(variables, _ALLOWED_NAMES)


def _noise(variables, seed=1):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda v: jnp.asarray(0.5 * rng.normal(size=v.shape), v.dtype),
      nn.unbox(variables))


@functools.lru_cache(maxsize=None)
def _setup():
  """(boxed abstract variables from a query-only init, noisy params, apply)."""
  mod = qformer.QFormer(CFG)
  vision = jnp.zeros((B, N, CFG.vision_width))
  # A query-only init must still create the text path (init uses dummies).
  variables = jax.eval_shape(
      lambda k, v: mod.init(k, v, mode="query"), jax.random.key(0), vision)
  apply = jax.jit(mod.apply, static_argnames="mode")
  return variables, _noise(variables), apply


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  vision = jnp.asarray(rng.normal(size=(B, N, CFG.vision_width)), jnp.float32)
  text = jnp.asarray(rng.integers(0, CFG.vocab_size, (B, LT)), jnp.int32)
  pad = np.ones((B, LT), bool)
  pad[1, 3:] = False
  return vision, text, jnp.asarray(pad)


def _close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def _changed(a, b):
  return float(jnp.abs(a - b).max()) > 1e-5


@pytest.mark.parametrize("freq", [2, 3])
def test_param_tree(freq):
  cfg = dataclasses.replace(CFG, depth=5, cross_attention_freq=freq)
  mod = qformer.QFormer(cfg)
  variables = jax.eval_shape(
      lambda k, v: mod.init(k, v, mode="query"), jax.random.key(0),
      jnp.zeros((B, N, CFG.vision_width)))
  _assert_all_boxed(variables)
  p = nn.unbox(variables)["params"]
  assert p["query_tokens"].shape == (1, 4, 32)
  assert {"word_embeddings", "position_embeddings", "layernorm"} <= set(p)
  for i in range(cfg.depth):
    layer = p[f"layer_{i}"]
    assert ("crossattention" in layer) == (i % freq == 0), (i, set(layer))
    assert {"attention", "intermediate", "output", "intermediate_query",
            "output_query"} <= set(layer)
    assert set(layer["output_query"]) == {"dense", "LayerNorm"}
    assert set(layer["attention"]) == {"attention", "LayerNorm"}
  cross = p["layer_0"]["crossattention"]["attention"]
  assert cross["k"]["kernel"].shape == (24, 4, 8)  # Reads vision_width.
  assert cross["q"]["kernel"].shape == (32, 4, 8)
  assert "bias" in cross["o"]


def test_no_text_path_without_vocab():
  cfg = qformer.QFormerConfig(n_queries=2, width=16, depth=2, n_heads=2,
                              mlp_dim=8, vision_width=8)
  mod = qformer.QFormer(cfg)
  vision = jnp.zeros((1, 3, 8))
  variables = jax.eval_shape(
      lambda k, v: mod.init(k, v, mode="query"), jax.random.key(0), vision)
  p = nn.unbox(variables)["params"]
  assert "word_embeddings" not in p and "intermediate" not in p["layer_0"]
  assert "intermediate_query" in p["layer_1"]
  out = jax.eval_shape(lambda p, v: mod.apply(p, v, mode="query"),
                       variables, vision)
  assert out["query"].shape == (1, 2, 16) and out["text"] is None
  with pytest.raises(ValueError, match="vocab_size"):
    mod.apply(nn.unbox(variables), vision, jnp.zeros((1, 2), jnp.int32),
              mode="itm")


def test_query_ffn_separate_from_text_ffn():
  _, params, apply = _setup()
  vision, text, pad = _inputs()
  kw = dict(mode="itm", text_pad_mask=pad)
  out = apply(params, vision, text, **kw)
  p = jax.tree.map(lambda x: x, params)
  p["params"]["layer_1"]["intermediate"]["kernel"] *= 2.0
  out2 = apply(p, vision, text, **kw)
  # The last layer's text FFN only touches text positions.
  _close(out["query"], out2["query"])
  assert _changed(out["text"], out2["text"])
  p = jax.tree.map(lambda x: x, params)
  p["params"]["layer_1"]["intermediate_query"]["kernel"] *= 2.0
  out3 = apply(p, vision, text, **kw)
  _close(out["text"], out3["text"])
  assert _changed(out["query"], out3["query"])


def test_query_mode_shapes_and_vision_dependence():
  _, params, apply = _setup()
  vision, _, _ = _inputs()
  out = apply(params, vision, mode="query")
  assert out["query"].shape == (B, 4, 32) and out["text"] is None
  out2 = apply(params, vision.at[0, 2].add(1.0), mode="query")
  assert _changed(out["query"][0], out2["query"][0])
  _close(out["query"][1], out2["query"][1])


def test_mask_modes():
  pad = jnp.asarray([[True, True, False]])
  itc = np.asarray(qformer.qformer_attention_mask(2, 3, "itc", pad))[0]
  np.testing.assert_array_equal(itc, [[1, 1, 0, 0, 0],
                                      [1, 1, 0, 0, 0],
                                      [0, 0, 1, 1, 0],
                                      [0, 0, 1, 1, 0],
                                      [0, 0, 1, 1, 0]])
  itm = np.asarray(qformer.qformer_attention_mask(2, 3, "itm", pad))[0]
  np.testing.assert_array_equal(itm, np.tile([1, 1, 1, 1, 0], (5, 1)))
  itg = np.asarray(qformer.qformer_attention_mask(2, 3, "itg"))[0]
  np.testing.assert_array_equal(itg, [[1, 1, 0, 0, 0],
                                      [1, 1, 0, 0, 0],
                                      [1, 1, 1, 0, 0],
                                      [1, 1, 1, 1, 0],
                                      [1, 1, 1, 1, 1]])
  assert qformer.qformer_attention_mask(3, 0, "query").shape == (1, 3, 3)
  with pytest.raises(ValueError, match="itc, itm, itg"):
    qformer.qformer_attention_mask(2, 3, "causal")


def test_itc_text_ignores_image_and_queries_ignore_text():
  _, params, apply = _setup()
  vision, text, pad = _inputs()
  out = apply(params, vision, text, mode="itc", text_pad_mask=pad)
  out_img = apply(params, vision + 1.0, text, mode="itc", text_pad_mask=pad)
  _close(out["text"], out_img["text"])
  assert _changed(out["query"], out_img["query"])
  # Uni-modal: the joint pass equals the separate text-only / query passes.
  text_only = apply(params, None, text, mode="itc", text_pad_mask=pad)
  assert text_only["query"] is None
  _close(out["text"], text_only["text"])
  _close(out["query"], apply(params, vision, mode="query")["query"])


def test_itg_is_causal_over_text():
  _, params, apply = _setup()
  vision, text, _ = _inputs()
  kw = dict(mode="itg", text_pad_mask=jnp.ones((B, LT), bool))
  out = apply(params, vision, text, **kw)
  text2 = text.at[:, 3].set((text[:, 3] + 1) % CFG.vocab_size)
  out2 = apply(params, vision, text2, **kw)
  _close(out["text"][:, :3], out2["text"][:, :3])
  assert _changed(out["text"][:, 3:], out2["text"][:, 3:])
  _close(out["query"], out2["query"])
  # Text reads the image through the queries.
  out3 = apply(params, vision + 1.0, text, **kw)
  assert _changed(out["text"][:, 0], out3["text"][:, 0])


def test_itm_masks_pads_only():
  _, params, apply = _setup()
  vision, text, pad = _inputs()
  out = apply(params, vision, text, mode="itm", text_pad_mask=pad)
  text2 = text.at[1, 4].set((text[1, 4] + 1) % CFG.vocab_size)  # A pad.
  out2 = apply(params, vision, text2, mode="itm", text_pad_mask=pad)
  _close(out["query"], out2["query"])
  _close(out["text"][:, :4], out2["text"][:, :4])
  text3 = text.at[1, 2].set((text[1, 2] + 1) % CFG.vocab_size)  # Real.
  out3 = apply(params, vision, text3, mode="itm", text_pad_mask=pad)
  assert _changed(out["query"][1], out3["query"][1])  # Bidirectional.
  assert _changed(out["text"][1, 0], out3["text"][1, 0])


def test_mode_validation():
  _, params, apply = _setup()
  vision, text, _ = _inputs()
  with pytest.raises(ValueError, match="both"):
    apply(params, None, text, mode="itm")
  with pytest.raises(ValueError, match="query"):
    apply(params, vision, text, mode="query")
  with pytest.raises(ValueError, match="max_text_len"):
    apply(params, vision, jnp.zeros((B, 9), jnp.int32), mode="itg")
  with pytest.raises(ValueError, match="allowed keys"):
    qformer.QFormerConfig.from_dict({"num_queries": 3})


def test_pretrain_heads():
  heads = qformer.QFormerPretrainHeads(CFG)
  query = jnp.ones((B, 4, 32))
  text = jnp.ones((B, LT, 32))
  variables = jax.eval_shape(heads.init, jax.random.key(0), query, text)
  _assert_all_boxed(variables)
  params = _noise(variables, seed=2)
  assert set(params["params"]) == {
      "vision_projection", "text_projection", "itm_head", "temp",
      "lm_transform", "lm_transform_norm", "lm_decoder"}
  query = jnp.asarray(np.random.default_rng(3).normal(size=(B, 4, 32)),
                      jnp.float32)
  out = jax.jit(heads.apply)(params, query, text)
  assert out["itm_logits"].shape == (B, 2)
  assert out["image_feats"].shape == (B, 4, 16)
  assert out["text_feat"].shape == (B, 16)
  _close(jnp.linalg.norm(out["image_feats"], axis=-1), np.ones((B, 4)))
  assert out["lm_logits"].shape == (B, LT, CFG.vocab_size)
  itm = heads.apply(params, query, method="itm_logits")
  _close(itm, out["itm_logits"])


def test_connector_projects_queries_to_lm_width():
  mod = qformer.QFormerConnector(CFG, 40)
  vision = jnp.zeros((B, N, CFG.vision_width))
  variables = jax.eval_shape(mod.init, jax.random.key(0), vision)
  _assert_all_boxed(variables)
  p = nn.unbox(variables)["params"]
  assert set(p) == {"qformer", "language_projection"}
  assert p["language_projection"]["kernel"].shape == (32, 40)
  out = jax.eval_shape(mod.apply, variables, vision)
  assert out.shape == (B, CFG.n_queries, 40)
