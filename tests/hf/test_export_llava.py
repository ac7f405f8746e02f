"""Export to transformers' LLaVA: round trips from tiny HF LLaVAs, a shapes
run, and the refusals (exit 2, one line)."""
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import hf_testing
from mmjax import config as config_lib
from mmjax import hf
from mmjax import testing
from mmjax.data import images as images_lib
from mmjax.hf import export_tokenizer
from mmjax.hf import plan as P
from mmjax.hf.export_llava import invert
from mmjax.decoding import decode
from mmjax.inference import export as export_lib
from mmjax.inference import run as run_lib
from mmjax.models import build, layout
from mmjax.models import mllm as mllm_lib
from mmjax.models.decoder import DecoderLM
from mmjax.train import checkpoint as ckpt_lib
from mmjax.train import stages
from tests import helpers
from tests.conftest import REPO
from tests.helpers import make_workdir

_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
               num_attention_heads=4, image_size=32, patch_size=8)
_TEXT = dict(vocab_size=96, hidden_size=32, intermediate_size=64,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
_IMAGE_ID = 95
_N_VISUAL = 16  # (32 / 8)^2 patch tokens
_MODELS = {
    "clip_llama": lambda: transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**_VISION),
        text_config=transformers.LlamaConfig(**_TEXT),
        image_token_index=_IMAGE_ID, vision_feature_layer=-2),
    "siglip_qwen2": lambda: transformers.LlavaConfig(
        vision_config=transformers.SiglipVisionConfig(**_VISION),
        text_config=transformers.Qwen2Config(tie_word_embeddings=True,
                                             **_TEXT),
        image_token_index=_IMAGE_ID, vision_feature_layer=-1,
        vision_feature_select_strategy="full", tie_word_embeddings=True),
}


def _tensors(path):
  out = {}
  for file in sorted(path.glob("*.safetensors")):
    out.update(load_file(str(file)))
  return out


def _llava_logits(model, tokens, images):
  """HF logits; images [B, H, W, C] -> pixel_values [B, C, H, W]."""
  return model(input_ids=torch.tensor(tokens), pixel_values=torch.tensor(
      images.transpose(0, 3, 1, 2))).logits.numpy()


def _hf_greedy(model, tokens, images, n):
  """HF greedy tokens with no stop token (as mmjax's stop_ids=())."""
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  out = model.generate(
      input_ids=torch.tensor(tokens), pixel_values=torch.tensor(
          images.transpose(0, 3, 1, 2)), max_new_tokens=n, do_sample=False,
      attention_mask=torch.ones(tokens.shape, dtype=torch.long))
  return out[:, tokens.shape[1]:].tolist()


def _greedy(model, params, cfg, before, after, images, image_id, n):
  """mmjax greedy tokens of [before, <image>, after] prompts."""
  media = layout.Media(cfg.side, cfg.side, 1)
  out = decode.generate(model, params, [[b, media, a] for b, a in zip(
      before, after)], [im[None] for im in images], image_token_id=image_id,
                        max_new_tokens=n, batch_size=len(before))
  return out.tokens


@pytest.fixture(scope="module", params=sorted(_MODELS))
def round_trip(request, tmp_path_factory):
  """(HF original, conversion, exported dir) of one tiny HF LLaVA."""
  root = tmp_path_factory.mktemp(request.param)
  torch.manual_seed(0)  # the same model whichever tests ran before
  model = hf_testing.perturb(transformers.LlavaForConditionalGeneration(
      _MODELS[request.param]()), seed=3)
  conv = hf.import_checkpoint(hf_testing.save(model, root / "hf"))
  hf.save_converted(conv, root / "mmjax")
  if request.param == "clip_llama":  # the CLI once; the library otherwise
    proc = helpers.run_cli("mmjax.convert", f"--mmjax_dir={root / 'mmjax'}",
                           "--to=llava", f"--out={root / 'llava'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no tokenizer files" in proc.stdout
  else:
    export_lib.export_model(str(root / "mmjax"), str(root / "llava"),
                            to="llava")
  return model, conv, root


def test_round_trip_same_tensors_logits_and_greedy_tokens(round_trip):
  original, conv, root = round_trip
  exported = _tensors(root / "llava")
  source = _tensors(root / "hf")
  # Everything LLaVA reads is written back unchanged (blocks past the
  # feature layer, the unused post-LN and a SigLIP head are not).
  skipped = [k for k in source if k not in exported]
  assert all(".encoder.layers.2." in k or "post_layernorm" in k or
             ".head." in k for k in skipped), skipped
  for key, value in exported.items():
    if "post_layernorm" not in key:
      np.testing.assert_array_equal(value, source[key], err_msg=key)
  model = transformers.LlavaForConditionalGeneration.from_pretrained(
      str(root / "llava"))
  rng = np.random.default_rng(0)
  before = [rng.integers(1, 90, 3).tolist(), rng.integers(1, 90, 3).tolist()]
  after = [rng.integers(1, 90, 5).tolist(), rng.integers(1, 90, 5).tolist()]
  tokens = np.asarray([b + [_IMAGE_ID] * _N_VISUAL + a
                       for b, a in zip(before, after)])
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  ours, _ = conv.module().apply({"params": conv.params}, tokens,
                                images=images[:, None],
                                image_token_mask=tokens == _IMAGE_ID)
  hf_testing.assert_parity("exported llava logits", ours,
                           _llava_logits(model, tokens, images))
  want = _greedy(conv.module(), conv.params, conv.module().cfg, before,
                 after, images, _IMAGE_ID, 6)
  assert _hf_greedy(model, tokens, images, 6) == want


@pytest.fixture(scope="module")
def shapes_export(tmp_path_factory):
  """A shapes run as training leaves it, exported with the CLI."""
  root = tmp_path_factory.mktemp("shapes")
  run_dir = make_workdir(root / "run", root / "data")
  # make_workdir's weights are 3x random ones, which blows the 4-block ViT's
  # features up to ~1e4 and float32 sums apart by ~1e-3; a finished step 3
  # with 1x weights keeps the comparison at rounding level.
  params = jax.tree.map(lambda x: x / 3, run_lib.load_run(run_dir).params)
  ckpt = ckpt_lib.StageCheckpointer(f"{run_dir}/checkpoints/dpo",
                                    async_save=False)
  ckpt.save(3, {"step": np.int32(3), "params": params}, {},
            {"stage": "dpo", "finished": True})
  ckpt.close()
  proc = helpers.run_cli("mmjax.convert", f"--mmjax_dir={run_dir}",
                         "--to=llava", f"--out={root / 'llava'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return run_lib.load_run(run_dir), root / "llava"


def test_shapes_run_exports_with_tokenizer_and_processor(shapes_export):
  run, out = shapes_export
  assert run.checkpoint.endswith("dpo/3")
  config = json.loads((out / "config.json").read_text())
  assert config["image_token_index"] == run.tokenizer.image_id
  assert config["vision_config"]["model_type"] == "siglip_vision_model"
  tok = transformers.AutoTokenizer.from_pretrained(str(out), use_fast=False)
  for text in ("<image>\nwhat colour is the circle?", "  two  spaces\tü",
               "<|user|>hi<|end|><|assistant|>"):
    assert tok.encode(text) == run.tokenizer.encode(text, add_bos=True)
  pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
  processor = transformers.AutoImageProcessor.from_pretrained(
      str(out), use_fast=False)
  got = processor(pixels, return_tensors="np")["pixel_values"][0]
  np.testing.assert_allclose(got.transpose(1, 2, 0), images_lib.preprocess(
      pixels, 64, kind="siglip"), atol=1e-5)

  model = transformers.LlavaForConditionalGeneration.from_pretrained(str(out))
  prompt = run.tokenizer.prompt_ids(
      [{"role": "user", "content": "<image>\nwhat shape?"}])
  cut = prompt.index(run.tokenizer.image_id)
  before, after = [prompt[:cut]], [prompt[cut + 1:]]
  n_visual = run.cfg.vision.num_patches
  tokens = np.asarray([before[0] + [run.tokenizer.image_id] * n_visual +
                       after[0]])
  media = run.prepare_media(pixels)  # [1, 64, 64, 3]
  ours, _ = run.model.apply({"params": run.params}, tokens,
                            images=media[None],
                            image_token_mask=tokens == run.tokenizer.image_id)
  hf_testing.assert_parity("exported shapes run logits", ours,
                           _llava_logits(model, tokens, media))
  want = _greedy(run.model, run.params, run.cfg, before, after, media,
                 run.tokenizer.image_id, 5)
  assert _hf_greedy(model, tokens, media, 5) == want


def test_linear_projector_and_gemma_lm_of_an_mmjax_model(tmp_path):
  # Neither comes from a HF LLaVA: 'linear' exports with an identity
  # linear_2, Gemma with linear_2 divided by sqrt(d) (its LLaVA scales the
  # image features with the embeddings).
  cfg = testing.tiny_mllm_config(
      projector="linear", feature_layer=-2, vision=dict(kind="clip"),
      lm=dict(embed_scale=True, norm_offset_one=True,
              mlp_activation="gelu_tanh", tie_embeddings=True))
  model = mllm_lib.MLLM(cfg)
  rng = np.random.default_rng(2)
  params = jax.tree.map(  # non-trivial norms and biases
      lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32),
      testing.random_params(model, seed=1))
  hf.export_llava(cfg, params, tmp_path, image_token_id=4)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["text_config"]["model_type"] == "gemma"
  assert config["projector_hidden_act"] == "linear"
  exported = transformers.LlavaForConditionalGeneration.from_pretrained(
      str(tmp_path))
  n_visual = cfg.vision.num_patches
  tokens = np.asarray([[2, 7] + [4] * n_visual + [20, 30, 9, 8]])
  images = rng.normal(size=(1, 64, 64, 3)).astype(np.float32)
  ours, _ = model.apply({"params": params}, tokens, images=images[:, None],
                        image_token_mask=tokens == 4)
  hf_testing.assert_parity("linear projector + gemma logits", ours,
                           _llava_logits(exported, tokens, images))


def test_invert_undoes_rearrangements_and_refuses_arithmetic():
  w = np.random.default_rng(0).normal(size=(5, 3, 2, 2)).astype(np.float32)
  src = P.conv_patch("w", 5, 3, 2)
  np.testing.assert_array_equal(invert(src, src.fn(w)), w)
  for fn in (lambda x: x + 1, lambda x: x * 0.5, lambda x: x[:2]):
    with pytest.raises(hf.HFExportError, match="not a rearrangement"):
      invert(P.Src(("w",), ((4,),), fn), np.zeros(4))


def _hf_tokenizer_dir(path, with_image):
  """A tiny byte-level BPE tokenizer saved as transformers saves one."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel()
  tok.decoder = tokenizers.decoders.ByteLevel()
  special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + (
      ["<image>"] if with_image else [])
  tok.train_from_iterator(
      ["the red circle", "a blue square left of it"] * 20,
      tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=special))
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="<|endoftext|>")
  fast.save_pretrained(str(path))
  return path, len(fast)


@pytest.mark.parametrize("with_image", [False, True])
def test_hf_tokenizer_files_get_the_image_token(with_image, tmp_path):
  src, size = _hf_tokenizer_dir(tmp_path / "tok", with_image)
  want = export_tokenizer.image_token_id(src)
  # Its own id, else the next one after the vocabulary (as mmjax adds it).
  assert want == (transformers.AutoTokenizer.from_pretrained(str(
      src)).convert_tokens_to_ids("<image>") if with_image else size)
  with pytest.raises(hf.HFExportError, match=f"gives <image> the id {want}"):
    export_tokenizer.write_tokenizer(src, tmp_path, want + 1)
  out = tmp_path / "out"
  out.mkdir()
  export_tokenizer.write_tokenizer(src, out, want)
  tok = transformers.AutoTokenizer.from_pretrained(str(out))
  ids = tok.encode("the red<image>circle")
  assert ids.count(want) == 1 and tok.decode(ids) == "the red<image>circle"


def _fabricated_run(path, config, stage):
  """config.json and a finished `stage` checkpoint of random weights."""
  path.mkdir()
  (path / "config.json").write_text(json.dumps(config_lib.to_plain(config)))
  _, init, _ = stages.stage_model(config, stage)
  params = testing.random_params_like(
      nn.unbox(jax.eval_shape(init, jax.random.key(0))), seed=4)
  ckpt = ckpt_lib.StageCheckpointer(f"{path}/checkpoints/{stage}",
                                    async_save=False)
  ckpt.save(2, {"step": np.int32(2), "params": params}, {},
            {"stage": stage, "finished": True})
  ckpt.close()
  return str(path), params


def test_run_with_a_hf_tokenizer_exports_it_with_the_image_token(tmp_path):
  src, size = _hf_tokenizer_dir(tmp_path / "tok", with_image=False)
  config = testing.tiny_recipe()
  config.tokenizer, config.chat_template = str(src), "chatml"
  config.model.lm.vocab_size = size + 1  # mmjax adds <image> at `size`
  run_dir, _ = _fabricated_run(tmp_path / "run", config, "dpo")
  out, notes = export_lib.export_model(run_dir, str(tmp_path / "out"))
  assert not notes
  llava = json.loads((out / "config.json").read_text())
  assert llava["image_token_index"] == size
  tok = transformers.AutoTokenizer.from_pretrained(str(out))
  assert tok.convert_tokens_to_ids("<image>") == size
  # Generation stops at chatml's end of turn or at eos.
  assert json.loads((out / "generation_config.json").read_text())[
      "eos_token_id"] == tok.convert_tokens_to_ids(["<|im_end|>",
                                                    "<|endoftext|>"])


def test_text_lm_run_exports_as_a_decoder(tmp_path):
  # --to=auto on a text LM workdir: its final `llm` params as LLaMA.
  config = config_lib.load_config(f"{REPO}/configs/lm.py:tiny")
  run_dir, params = _fabricated_run(tmp_path / "run", config, "lm")
  out, _ = export_lib.export_model(run_dir, str(tmp_path / "hf"))
  tokens = np.random.default_rng(0).integers(0, 64, (1, 9))
  ours, _ = DecoderLM(build.decoder_config(config)).apply(
      {"params": params}, tokens)
  model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
  hf_testing.assert_parity("exported text LM run", ours,
                           model(torch.tensor(tokens)).logits.numpy())


def _config_only_run(path, fusion):
  """A workdir with just config.json: refusals come before any checkpoint
  is read."""
  path.mkdir()
  (path / "config.json").write_text(json.dumps(config_lib.to_plain(
      testing.tiny_recipe(fusion))))
  return str(path)


def test_cross_attention_run_to_llava_exits_2_with_one_line(tmp_path):
  run_dir = _config_only_run(tmp_path / "run", "cross_attention")
  line = helpers.one_error_line(helpers.run_cli(
      "mmjax.convert", f"--mmjax_dir={run_dir}", "--to=llava",
      f"--out={tmp_path / 'out'}"))
  assert "fusion='cross_attention'" in line and "--to=decoder" in line
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fusion,change,match", [
    ("resampler", {}, "fusion='resampler'"),
    ("projection", {"positions": "mrope"}, "positions='mrope'"),
    ("projection", {"projector": "pixel_shuffle"},
     "projector='pixel_shuffle'"),
    ("projection", {"image_attention": "bidirectional"},
     "image_attention='bidirectional'"),
    ("projection", {"lm.prefix_lm": True}, r"LM: .*\['prefix_lm'\]"),
])
def test_what_llava_cannot_express_is_refused(fusion, change, match,
                                              tmp_path):
  config = testing.tiny_recipe(fusion, change.pop("positions", "rope"))
  for key, value in change.items():
    node, *path = [config.model] + key.split(".")
    for name in path[:-1]:
      node = node[name]
    node[path[-1]] = value
  (tmp_path / "config.json").write_text(json.dumps(config_lib.to_plain(
      config)))
  with pytest.raises(hf.HFExportError, match=match):
    export_lib.export_model(str(tmp_path), str(tmp_path / "out"), "llava")
