"""My own LLaVA from pretrained backbones, end to end and offline (issue 21):
tiny random Hugging Face models saved to disk stand in for real checkpoints.

  SigLIP tower + Qwen2 LM (tokenizer.json, chatml)       configs/llava.py:
  CLIP tower + LLaMA LM (tokenizer.model, vicuna_v1)     *_tiny twins

Each: convert the backbones with `python -m mmjax.convert`, compose them with
`config.init_from.vision` / `.llm`, run LLaVA's two stages (projector only,
then projector + LLM) on a small LLaVA-format folder of PNGs, answer with
`python -m mmjax.generate`, export with `--to=llava`, load the export in
transformers and compare logits and greedy tokens.
"""
import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import hf_testing
from mmjax import config as config_lib
from mmjax import inference
from mmjax.data import hf_tokenizer
from mmjax.train import groups
from tests import helpers
from tests.data import hf_tokenizers

_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60),
            "blue": (40, 60, 220), "yellow": (230, 220, 40)}


def _lm(kind, lm, vocab):
  """A tiny HF decoder LM with the twin's widths."""
  common = dict(vocab_size=vocab, hidden_size=lm.d_model,
                intermediate_size=lm.mlp_dim,
                num_hidden_layers=lm.n_layers,
                num_attention_heads=lm.n_heads,
                num_key_value_heads=lm.n_kv_heads, rope_theta=lm.rope_theta,
                rms_norm_eps=lm.norm_eps,
                tie_word_embeddings=lm.tie_embeddings)
  if kind == "qwen2":
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
  return transformers.LlamaForCausalLM(transformers.LlamaConfig(
      bos_token_id=1, eos_token_id=2, **common))


def _tower(kind, v):
  """A tiny HF vision tower with the twin's widths."""
  common = dict(hidden_size=v.width, intermediate_size=v.mlp_dim,
                num_hidden_layers=v.depth, num_attention_heads=v.n_heads,
                image_size=v.image_size, patch_size=v.patch_size)
  if kind == "siglip":
    return transformers.SiglipVisionModel(
        transformers.SiglipVisionConfig(**common))
  return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**common))


def _folder(root):
  """Eight PNGs; a captioning JSON (pretrain) and a Q&A JSON (sft)."""
  images = root / "images"
  images.mkdir()
  pretrain, sft = [], []
  for i, (name, rgb) in enumerate(list(_COLOURS.items()) * 2):
    pixels = np.full((40, 56, 3), rgb, np.uint8)  # not square
    pixels[i * 3:i * 3 + 10, 5:20] = 255
    Image.fromarray(pixels).save(images / f"{i}.png")
    pretrain.append({"id": f"p{i}", "image": f"{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image."},
        {"from": "gpt", "value": f"a {name} picture."}]})
    sft.append({"id": f"s{i}", "image": f"{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat colour is it?"},
        {"from": "gpt", "value": f"it is {name}."},
        {"from": "human", "value": "is it bright?"},
        {"from": "gpt", "value": "yes."}]})
  (root / "pretrain.json").write_text(json.dumps(pretrain))
  (root / "sft.json").write_text(json.dumps(sft))
  return root


def _convert(hf_dir, out):
  proc = helpers.run_cli("mmjax.convert", f"--hf_dir={hf_dir}",
                         f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return str(out)


_CASES = {
    # variant twin, tower, LM, tokenizer dir builder
    "siglip_qwen2": ("siglip_qwen2_1_5b_tiny", "siglip", "qwen2",
                     hf_tokenizers.qwen_dir),
    "clip_llama": ("llava15_7b_tiny", "clip", "llama",
                   hf_tokenizers.llama_dir),
}


@pytest.fixture(scope="module", params=sorted(_CASES))
def composed(request, tmp_path_factory):
  """(case, workdir, tokenizer, converted vision dir, exported dir)."""
  variant, tower_kind, lm_kind, make_tokenizer = _CASES[request.param]
  root = tmp_path_factory.mktemp(request.param)
  spec = f"configs/llava.py:{variant},steps=3"
  config = config_lib.load_config(spec)
  tok_dir = make_tokenizer(root / "llm")
  tok = hf_tokenizer.HFTokenizer.load(tok_dir, config.chat_template)
  torch.manual_seed(0)
  # The LLM's own directory holds its tokenizer, as on the Hub; its vocab
  # has no <image> (mmjax adds one when the tokenizer lacks it).
  hf_testing.perturb(_lm(lm_kind, config.model.lm, tok.base_vocab_size),
                     seed=1).save_pretrained(tok_dir, safe_serialization=True)
  hf_testing.perturb(_tower(tower_kind, config.model.vision),
                     seed=2).save_pretrained(root / "tower",
                                             safe_serialization=True)
  vision = _convert(root / "tower", root / "vision_mmjax")
  llm = _convert(tok_dir, root / "llm_mmjax")
  data = _folder(root)
  workdir = root / "run"
  proc = helpers.run_cli(
      "mmjax.main", f"--config={spec}", f"--workdir={workdir}",
      f"--config.init_from.vision={vision}", f"--config.init_from.llm={llm}",
      f"--config.tokenizer={tok_dir}",
      f"--config.model.lm.vocab_size={tok.vocab_size}",
      f"--config.data.data_dir={root / 'tfds'}",
      *(f"--config.stages.{stage}.{key}={value}"
        for stage in ("pretrain", "sft")
        for key, value in (("folder_json", data / f"{stage}.json"),
                           ("folder_images", data / "images"))))
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = helpers.run_cli("mmjax.convert", f"--mmjax_dir={workdir}",
                         "--to=llava", f"--out={root / 'llava'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return request.param, workdir, tok, vision, root


@pytest.mark.slow
def test_stages_froze_the_tower_and_composed_the_groups(composed):
  _, workdir, _, vision, _ = composed
  run = inference.load(str(workdir))
  trained = groups.flatten(run.params)
  from mmjax import hf  # pylint: disable=g-import-not-at-top
  tower = groups.flatten(hf.load_converted(vision).params)
  used = [p for p in trained if p.startswith("vision/")]
  assert used
  for path in used:  # neither stage trains the tower
    np.testing.assert_array_equal(np.asarray(trained[path]),
                                  np.asarray(tower[path]), err_msg=path)
  records = [json.loads(line) for line in
             (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {r["stage"] for r in records} >= {"pretrain", "sft"}


@pytest.mark.slow
def test_generate_answers_from_the_command_line(composed):
  _, workdir, _, _, root = composed
  proc = helpers.run_cli("mmjax.generate", f"--workdir={workdir}",
                         f"--image={root / 'images' / '0.png'}",
                         "--prompt=what colour is it?", "--max_new_tokens=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip()


@pytest.mark.slow
def test_export_loads_in_transformers_with_equal_logits_and_tokens(composed):
  _, workdir, tok, _, root = composed
  run = inference.load(str(workdir))
  model = transformers.LlavaForConditionalGeneration.from_pretrained(
      str(root / "llava")).eval()
  image_id = model.config.image_token_index
  assert image_id == tok.image_id
  exported_tok = transformers.AutoTokenizer.from_pretrained(
      str(root / "llava"))
  assert exported_tok.convert_tokens_to_ids("<image>") == image_id
  picture = str(root / "images" / "1.png")
  media = run.prepare_media(picture)  # f32[1, S, S, 3]
  processed = transformers.AutoImageProcessor.from_pretrained(
      str(root / "llava"))(Image.open(picture), return_tensors="np")
  np.testing.assert_allclose(processed["pixel_values"][0].transpose(1, 2, 0),
                             media[0], atol=2e-2)  # PIL vs mmjax resampling
  turns = [{"role": "user", "content": "<image>\nwhat colour is it?"}]
  prompt = tok.prompt_ids(turns)
  n_visual = model.config.image_seq_length
  tokens = np.asarray([sum(([t] * n_visual if t == image_id else [t]
                            for t in prompt), [])])
  ours, _ = run.model.apply({"params": run.params}, tokens,
                            images=media[None],
                            image_token_mask=tokens == image_id)
  with torch.no_grad():
    theirs = model(input_ids=torch.tensor(tokens), pixel_values=torch.tensor(
        media.transpose(0, 3, 1, 2))).logits.numpy()
  hf_testing.assert_parity("composed llava logits", np.asarray(ours), theirs)
  n = 6
  want = run.generate([prompt], [picture], max_new_tokens=n,
                      stop_ids=()).tokens[0]
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(tokens),
                         pixel_values=torch.tensor(
                             media.transpose(0, 3, 1, 2)),
                         attention_mask=torch.ones(tokens.shape,
                                                   dtype=torch.long),
                         max_new_tokens=n, do_sample=False)
  assert out[0, tokens.shape[1]:].tolist() == list(want)
