"""Parity of imported LLaVA, Idefics2, BLIP-2 Q-Former and Fuyu layout."""
import numpy as np
import pytest
import torch
import transformers

import hf_testing
from mmjax import hf
from mmjax.models import layout as layout_lib
from mmjax.models import mllm as mllm_lib
from mmjax.models.decoder import DecoderConfig

_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
               num_attention_heads=4, image_size=32, patch_size=8)
_TEXT = dict(vocab_size=96, hidden_size=32, intermediate_size=64,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
_IMAGE_ID = 95


def _stream(n_visual, prefix, suffix):
  """Text ids (< 90) around a run of n_visual image placeholders."""
  rng = np.random.default_rng(prefix)
  return np.concatenate([rng.integers(1, 90, prefix),
                         np.full(n_visual, _IMAGE_ID),
                         rng.integers(1, 90, suffix)])


def _mllm_logits(conv, tokens, images):
  """images: [B, H, W, C] (one per example) -> logits."""
  logits, _ = conv.module().apply(
      {"params": conv.params}, tokens, images=images[:, None],
      image_token_mask=tokens == _IMAGE_ID)
  return logits


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
  config = transformers.LlavaConfig(
      vision_config=transformers.CLIPVisionConfig(**_VISION),
      text_config=transformers.LlamaConfig(**_TEXT),
      image_token_index=_IMAGE_ID, vision_feature_layer=-2)
  model = hf_testing.perturb(
      transformers.LlavaForConditionalGeneration(config), seed=2)
  return model, hf.import_checkpoint(hf_testing.save(
      model, tmp_path_factory.mktemp("llava")))


def test_llava_logits(llava):
  model, conv = llava
  assert conv.family == "mllm" and conv.model["feature_layer"] == -2
  assert conv.hf["image_token_index"] == _IMAGE_ID
  tokens = np.stack([_stream(16, 3, 6), _stream(16, 7, 2)])
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(
      np.float32)
  ref = model(input_ids=torch.tensor(tokens),
              pixel_values=torch.tensor(images.transpose(0, 3, 1, 2))).logits
  hf_testing.assert_parity("llava logits", _mllm_logits(conv, tokens, images),
                           ref.numpy())


def _original_idefics2_positions(embeddings):
  """Restores Idefics2's vision position ids as the weights were trained.

  transformers 4.55 to 4.57 compute them with a float32 rounding that shifts
  a full-size grid to [0, 0, 1, ..., n-2] (huggingface/transformers#41190);
  the original formula (kept here) gives [0, 1, ..., n-1] at these sizes,
  as mmjax's learned position embedding does.
  """
  def forward(pixel_values, patch_attention_mask):
    del patch_attention_mask  # full-size images only
    x = embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
    n = embeddings.num_patches_per_side
    rows = torch.bucketize(torch.arange(0, 1 - 1e-6, 1 / n),
                           torch.arange(1 / n, 1.0, 1 / n), right=True)
    assert rows.tolist() == list(range(n))
    return x + embeddings.position_embedding((rows[:, None] * n + rows)
                                             .flatten())[None]
  embeddings.forward = forward


@pytest.fixture(scope="module")
def idefics2(tmp_path_factory):
  config = transformers.Idefics2Config(
      vision_config=_VISION,
      perceiver_config=dict(
          hidden_act="silu", hidden_size=32, resampler_n_latents=5,
          resampler_depth=2, resampler_n_heads=4, resampler_head_dim=8,
          num_key_value_heads=2, rms_norm_eps=1e-5),
      text_config=dict(model_type="mistral", rms_norm_eps=1e-6, **_TEXT),
      image_token_id=_IMAGE_ID)
  model = hf_testing.perturb(
      transformers.Idefics2ForConditionalGeneration(config), seed=3)
  _original_idefics2_positions(model.model.vision_model.embeddings)
  return model, hf.import_checkpoint(hf_testing.save(
      model, tmp_path_factory.mktemp("idefics2")))


def test_idefics2_logits(idefics2):
  model, conv = idefics2
  assert conv.model["fusion"] == "resampler"
  assert conv.model["resampler"]["style"] == "idefics2"
  tokens = np.stack([_stream(5, 4, 5), _stream(5, 2, 7)])
  images = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(
      np.float32)
  pixels = torch.tensor(images.transpose(0, 3, 1, 2))[:, None]
  ref = model(input_ids=torch.tensor(tokens), pixel_values=pixels)
  hf_testing.assert_parity("idefics2 logits",
                           _mllm_logits(conv, tokens, images),
                           ref.logits.numpy())
  # The connector alone (Idefics2 perceiver resampler) on vision features.
  feats = model.model.vision_model(pixel_values=pixels[:, 0]).last_hidden_state
  ref_latents = model.model.connector(
      feats, attention_mask=torch.ones(feats.shape[:2], dtype=torch.bool))
  latents = conv.module().apply(
      {"params": conv.params}, feats.numpy(),
      method=lambda m, x: m.connector(x))
  hf_testing.assert_parity("idefics2 connector", latents,
                           ref_latents.numpy())


@pytest.fixture(scope="module")
def blip2(tmp_path_factory):
  config = transformers.Blip2Config(
      vision_config={**_VISION, "hidden_size": 48},
      qformer_config=dict(vocab_size=50, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=3, num_attention_heads=4,
                          cross_attention_frequency=2),
      text_config=dict(model_type="opt", vocab_size=64, hidden_size=40,
                       ffn_dim=64, num_hidden_layers=1, num_attention_heads=2,
                       word_embed_proj_dim=40),
      num_query_tokens=6)
  model = hf_testing.perturb(
      transformers.Blip2ForConditionalGeneration(config), seed=4)
  return model, hf.import_checkpoint(hf_testing.save(
      model, tmp_path_factory.mktemp("blip2")))


def test_blip2_qformer(blip2):
  model, conv = blip2
  assert conv.family == "connector" and conv.model["kind"] == "qformer"
  feats = np.random.default_rng(2).normal(size=(2, 17, 48)).astype(np.float32)
  query = model.query_tokens.expand(2, -1, -1)
  hidden = model.qformer(query_embeds=query,
                         encoder_hidden_states=torch.tensor(feats))
  ref = model.language_projection(hidden.last_hidden_state)
  out = conv.module().apply({"params": conv.module_params()}, feats)
  hf_testing.assert_parity("blip2 qformer + projection", out, ref.numpy())


def test_fuyu_patches_and_layout(tmp_path):
  placeholder, newline, patch = 90, 91, 4
  config = transformers.FuyuConfig(
      vocab_size=96, hidden_size=32, intermediate_size=64,
      num_hidden_layers=1, num_attention_heads=2, patch_size=patch,
      image_token_id=placeholder)
  model = hf_testing.perturb(transformers.FuyuForCausalLM(config), seed=5)
  conv = hf.import_checkpoint(hf_testing.save(model, tmp_path),
                              newline_token_id=newline)
  assert conv.model["kind"] == "one_backbone"
  image = np.random.default_rng(3).normal(size=(1, 8, 12, 3)).astype(
      np.float32)  # 2 rows x 3 columns of 4x4 patches
  processor = transformers.FuyuImageProcessor(
      patch_size={"height": patch, "width": patch})
  processed = processor.preprocess_with_tokenizer_info(
      image_input=torch.tensor(image.transpose(0, 3, 1, 2))[:, None],
      image_present=torch.ones(1, 1), image_unpadded_h=torch.tensor([[8]]),
      image_unpadded_w=torch.tensor([[12]]), image_placeholder_id=placeholder,
      image_newline_id=newline, variable_sized=True,
      patch_size={"height": patch, "width": patch})
  image_ids = processed["image_input_ids"][0][0].numpy()
  text_a, text_b = [1, 5, 7], [9, 3]
  hf_ids = np.concatenate([text_a, image_ids, text_b])[None]
  captured = {}
  model.model.language_model.register_forward_pre_hook(
      lambda mod, args, kwargs: captured.update(kwargs), with_kwargs=True)
  model(input_ids=torch.tensor(hf_ids),
        image_patches=processed["image_patches"][0][0][None])

  cfg = mllm_lib.MLLMConfig(fusion="one_backbone", patch_size=patch,
                            lm=DecoderConfig(vocab_size=96, d_model=32))
  ours = layout_lib.assemble(cfg, [text_a, layout_lib.Media(8, 12), text_b],
                             image_token_id=placeholder)
  np.testing.assert_array_equal(
      ours["image_token_mask"], np.isin(hf_ids[0], [placeholder, newline]))
  visual = conv.module().apply({"params": conv.module_params()}, image)
  table = model.get_input_embeddings().weight.numpy()
  stream = mllm_lib.scatter_visual(table[ours["tokens"]][None], visual,
                                   ours["image_token_mask"][None])
  hf_testing.assert_parity("fuyu input embeddings", stream,
                           captured["inputs_embeds"].numpy())


def test_idefics_gated_cross_attention(tmp_path):
  config = transformers.IdeficsConfig(
      vocab_size=96, hidden_size=32, intermediate_size=64,
      num_hidden_layers=2, num_attention_heads=4, cross_layer_interval=1,
      vision_config=dict(embed_dim=24, image_size=16, patch_size=8,
                         num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32),
      perceiver_config=dict(use_resampler=False))
  model = hf_testing.perturb(
      transformers.IdeficsForVisionText2Text(config), seed=8)
  for i, layer in enumerate(model.model.gated_cross_attn_layers):
    layer.alpha_cross_attn.fill_(0.8 - 0.3 * i)  # open the gates
    layer.alpha_dense.fill_(0.5 + 0.2 * i)
  conv = hf.import_checkpoint(hf_testing.save(model, tmp_path))
  assert conv.family == "lm" and conv.model["xattn_every"] == 1
  assert conv.hf["media_width"] == 24
  # Two images per example; the <image> markers sit at different places, and
  # tokens before the first marker see no image at all.
  tokens = np.random.default_rng(4).integers(1, 90, (2, 12))
  markers = np.zeros((2, 12), bool)
  markers[0, [2, 7]] = markers[1, [4, 5]] = True
  tokens[markers] = _IMAGE_ID
  times = np.cumsum(markers, axis=1)
  media = np.random.default_rng(5).normal(size=(2, 2, 3, 24)).astype(
      np.float32)
  # HF's image_attention_mask: token l reads image m iff it is the latest.
  mask = times[..., None] == np.arange(1, 3)
  ref = model(input_ids=torch.tensor(tokens),
              image_encoder_embeddings=torch.tensor(media),
              image_attention_mask=torch.tensor(mask.astype(np.int64))).logits
  ours, _ = conv.module().apply({"params": conv.params}, tokens, media=media,
                                media_times=times)
  hf_testing.assert_parity("idefics logits (gated xattn)", ours, ref.numpy())
  plain, _ = conv.module().apply({"params": conv.params}, tokens)
  assert np.abs(np.asarray(plain) - ref.numpy()).max() > 1e-2
