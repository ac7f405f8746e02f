"""Whole MLLMs and connectors: LLaVA, Idefics2, BLIP-2's Q-Former, Fuyu.

Each importer returns (model config dict, plan, ignore patterns). Name
mappings (prefixes accepted in both the 4.x / hub spelling and the 5.x one):

LLaVA (`LlavaForConditionalGeneration`) -> `MLLM`, fusion 'projection':
  vision_tower.vision_model.*   vision/* (see hf/vision.py; only the blocks
                                up to vision_feature_layer are used; a SigLIP
                                MAP head, vision_use_head=true, is skipped:
                                LLaVA reads patch features, never the pooled
                                output). A SigLIP tower read at layer -1 is
                                feature_layer None: transformers 4.57.1 hands
                                over its post-layernorm output there.
  multi_modal_projector.linear_{1,2}   connector/linear_{1,2}
  language_model.model.*, language_model.lm_head   llm/* (see hf/llm.py)

Idefics2 (`Idefics2ForConditionalGeneration`) -> `MLLM`, fusion 'resampler':
  model.vision_model.*          vision/* (SigLIP layout, no head)
  model.connector.*             connector/* (resampler style 'idefics2', see
                                models/resampler.py)
  model.text_model.*, lm_head   llm/*

BLIP-2 (`Blip2ForConditionalGeneration` / `Blip2Model`) -> connector only,
`QFormerConnector` (the tree MLLM's fusion 'qformer' keeps under connector/):
  query_tokens                  connector/qformer/query_tokens
  qformer.layernorm             connector/qformer/layernorm
  qformer.encoder.layer.{i}.X   connector/qformer/layer_{i}/X' (see
                                models/qformer.py)
  language_projection           connector/language_projection
  Its EVA ViT (no pre-LN, fused qkv without k bias) and OPT/T5 LM are not
  mmjax modules and are skipped.

Idefics v1 (`IdeficsForVisionText2Text`) -> `DecoderLM` with gated
cross-attention blocks (`xattn_every=1`; HF cross_layer_interval must be 1:
Idefics puts a block before layers 0, n, 2n, ..., mmjax before n-1, 2n-1):
  model.* / lm_head             layers_{i}, embed, final_norm, lm_head
  model.gated_cross_attn_layers.{i}.X   xattn_{i}/X (alpha_cross_attn,
                                alpha_dense [1] -> scalars, input_layernorm,
                                cross_attn/{q,k,v,o}, post_attention_layernorm,
                                mlp/{gate,up,down})
  Its CLIP tower and perceiver are skipped; the blocks read media of width
  vision_config.embed_dim (recorded as hf.media_width).

Fuyu (`FuyuForCausalLM`) -> connector only, `OneBackbonePatches`:
  vision_embed_tokens           connector/patch_embed (patch vectors are
                                (ph, pw, C) in both, so kernel = weight.T)
  embed_tokens[newline id]      connector/image_newline
  Its Persimmon LM (LayerNorm, qk-norm, partial rotary) is skipped.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from mmjax.hf import families
from mmjax.hf import llm as llm_lib
from mmjax.hf import plan as P
from mmjax.hf import vision as vision_lib
from mmjax.hf.safetensors_io import Checkpoint, HFImportError
from mmjax.models.qformer import QFormerConfig
from mmjax.models.resampler import ResamplerConfig

Result = tuple[dict[str, Any], P.Plan, list[str]]


def _lm_head(ckpt: Checkpoint, candidates: tuple[str, ...]) -> str:
  for key in candidates:
    if key in ckpt:
      return key
  return candidates[0]  # reported as missing by the checkpoint check


def llava_import(ckpt: Checkpoint, config: Mapping[str, Any],
                 notes: list[str]) -> Result:
  vc = config.get("vision_config") or {}
  kind = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}.get(
      vc.get("model_type", "clip_vision_model"))
  if kind is None:
    raise HFImportError(f"LLaVA vision tower {vc.get('model_type')!r} is not "
                        f"supported; supported: clip_vision_model, "
                        f"siglip_vision_model.")
  vcfg = dataclasses.replace(vision_lib.vision_config(vc, kind), pool="none")
  layer = config.get("vision_feature_layer", -2)
  strategy = config.get("vision_feature_select_strategy", "default")
  if not isinstance(layer, int):
    raise HFImportError(f"vision_feature_layer={layer!r}: only one layer is "
                        f"supported (mmjax does not concatenate layers).")
  if (kind, strategy) not in (("clip", "default"), ("siglip", "full")):
    raise HFImportError(
        f"vision_feature_select_strategy={strategy!r} with a {kind} tower is "
        f"not supported: mmjax keeps every patch token and drops CLIP's CLS, "
        f"i.e. 'default' for CLIP and 'full' for SigLIP.")
  act = config.get("projector_hidden_act", "gelu")
  if act != "gelu" or not config.get("multimodal_projector_bias", True):
    raise HFImportError(f"LLaVA projector_hidden_act={act!r} / bias="
                        f"{config.get('multimodal_projector_bias')}: only the "
                        f"mlp2x_gelu projector with biases is supported.")
  lm = llm_lib.decoder_config(config.get("text_config") or {}, None, notes)
  vp = ckpt.resolve_prefix(
      ("vision_tower.vision_model.", "model.vision_tower.vision_model.",
       "model.vision_tower.", "vision_tower."),
      "embeddings.patch_embedding.weight", "LLaVA vision tower")
  lp = ckpt.resolve_prefix(
      ("language_model.model.", "model.language_model.", "model."),
      "embed_tokens.weight", "LLaVA language model")
  pp = ckpt.resolve_prefix(("multi_modal_projector.",
                            "model.multi_modal_projector."),
                           "linear_1.weight", "LLaVA projector")
  plan = vision_lib.vision_plan(vcfg, vp, "vision/")
  P.add_dense(plan, "connector/linear_1", pp + "linear_1", vcfg.width,
              lm.d_model)
  P.add_dense(plan, "connector/linear_2", pp + "linear_2", lm.d_model,
              lm.d_model)
  plan.update(llm_lib.decoder_plan(
      lm, lp, _lm_head(ckpt, ("language_model.lm_head.weight",
                              "lm_head.weight")), "llm/"))
  ignore = list(llm_lib.DECODER_IGNORE) + ["*position_ids"]
  if lm.tie_embeddings:
    ignore += ["language_model.lm_head.weight", "lm_head.weight"]
  vision_lib.skip_siglip_head(ckpt, vp, ignore, notes, "LLaVA")
  if kind == "siglip" and layer in (-1, vcfg.depth):
    # transformers 4.57.1 replaces a SigLIP tower's last hidden_states entry
    # by last_hidden_state, which is post-layernormed: that is mmjax's final
    # output (feature_layer=None), not the raw last block.
    layer = None
    notes.append("LLaVA: vision_feature_layer=-1 of a SigLIP tower is its "
                 "post-layernorm output in transformers 4.57.1 "
                 "(feature_layer=None).")
  cfg = families.mllm_model_dict("projection", vcfg, lm, feature_layer=layer)
  return cfg, plan, ignore


def idefics2_import(ckpt: Checkpoint, config: Mapping[str, Any],
                    notes: list[str]) -> Result:
  vc = config.get("vision_config") or {}
  tc = dict(config.get("text_config") or {})
  pc = config.get("perceiver_config") or {}
  vcfg = dataclasses.replace(vision_lib.vision_config(vc, "siglip"),
                             pool="none")
  lm = llm_lib.decoder_config(tc, tc.get("model_type", "mistral"), notes)
  for name, act in (("text_config", tc.get("hidden_act", "silu")),
                    ("perceiver_config", pc.get("hidden_act", "silu"))):
    if act != "silu":
      raise HFImportError(f"Idefics2 {name}.hidden_act={act!r}: the idefics2 "
                          f"resampler supports 'silu' only.")
  rcfg = ResamplerConfig(
      style="idefics2", n_latents=int(pc.get("resampler_n_latents", 64)),
      depth=int(pc.get("resampler_depth", 3)),
      n_heads=int(pc.get("resampler_n_heads", 16)),
      head_dim=int(pc.get("resampler_head_dim", 96)),
      n_kv_heads=int(pc.get("num_key_value_heads", 4)), ff_mult=4,
      norm_eps=float(pc.get("rms_norm_eps", 1e-6)), width=lm.d_model,
      projection_mlp_dim=lm.mlp_dim)
  root = ckpt.resolve_prefix(("model.", ""), "connector.perceiver_resampler."
                             "latents", "Idefics2 connector")
  plan = vision_lib.vision_plan(vcfg, root + "vision_model.", "vision/")
  plan.update(resampler_plan(rcfg, vcfg.width, root + "connector.",
                             "connector/"))
  plan.update(llm_lib.decoder_plan(lm, root + "text_model.", "lm_head.weight",
                                   "llm/"))
  notes.append("Idefics2: exact for images at the tower's native size "
               "(image splitting and padded patches are the data pipeline's); "
               "vision position ids are 0..N-1 as in training (transformers "
               "4.55-4.57 shift them by one in float32, their issue #41190).")
  ignore = list(llm_lib.DECODER_IGNORE) + ["*position_ids"]
  if lm.tie_embeddings:
    ignore.append("lm_head.weight")
  cfg = families.mllm_model_dict("resampler", vcfg, lm,
                   resampler=dataclasses.asdict(rcfg))
  return cfg, plan, ignore


def resampler_plan(cfg: ResamplerConfig, d_in: int, prefix: str,
                   path: str) -> P.Plan:
  """Idefics2 `Idefics2Connector` -> PerceiverResampler (style idefics2)."""
  d, pr = cfg.width, prefix + "perceiver_resampler."
  mlp = cfg.projection_mlp_dim or 4 * d
  plan: P.Plan = {f"{path}latents": P.raw(pr + "latents", (cfg.n_latents, d))}
  for name, (a, b) in (("gate", (d_in, mlp)), ("up", (d_in, mlp)),
                       ("down", (mlp, d))):
    P.add_dense(plan, f"{path}modality_projection/{name}",
                f"{prefix}modality_projection.{name}_proj", a, b, bias=False)
  for i in range(cfg.depth):
    hf, mj = f"{pr}layers.{i}.", f"{path}layers_{i}/"
    for norm in ("input_latents_norm", "input_context_norm",
                 "post_attention_layernorm"):
      P.add_norm(plan, mj + norm, hf + norm, d, bias=False)
    P.add_attention(
        plan, mj + "self_attn", {n: f"{hf}self_attn.{n}_proj" for n in "qkvo"},
        d_q=d, d_kv=d, heads=cfg.n_heads, kv_heads=cfg.resolved_kv_heads,
        head_dim=cfg.head_dim, d_out=d, qkv_bias=False, o_bias=False)
    for name, (a, b) in (("gate", (d, 4 * d)), ("up", (d, 4 * d)),
                         ("down", (4 * d, d))):
      P.add_dense(plan, f"{mj}mlp/{name}", f"{hf}mlp.{name}_proj", a, b,
                  bias=False)
  P.add_norm(plan, path + "norm", pr + "norm", d, bias=False)
  return plan


def _qformer_block(plan: P.Plan, path: str, key: str, w: int, d_kv: int,
                   heads: int) -> None:
  att = key + "attention."
  P.add_attention(plan, path + "attention",
                  {"q": att + "query", "k": att + "key", "v": att + "value",
                   "o": key + "output.dense"},
                  d_q=w, d_kv=d_kv, heads=heads, kv_heads=heads,
                  head_dim=w // heads, d_out=w, qkv_bias=True, o_bias=True)
  P.add_norm(plan, path + "LayerNorm", key + "output.LayerNorm", w)


def blip2_import(ckpt: Checkpoint, config: Mapping[str, Any],
                 notes: list[str]) -> Result:
  qc = config.get("qformer_config") or {}
  vc = config.get("vision_config") or {}
  tc = config.get("text_config") or {}
  if qc.get("hidden_act", "gelu") != "gelu":
    raise HFImportError(f"Q-Former hidden_act={qc.get('hidden_act')!r}: "
                        f"only 'gelu' is supported.")
  vision_width = int(qc.get("encoder_hidden_size") or vc.get("hidden_size",
                                                             1408))
  qcfg = QFormerConfig(
      n_queries=int(config.get("num_query_tokens", 32)),
      width=int(qc.get("hidden_size", 768)),
      depth=int(qc.get("num_hidden_layers", 12)),
      n_heads=int(qc.get("num_attention_heads", 12)),
      mlp_dim=int(qc.get("intermediate_size", 3072)),
      cross_attention_freq=int(qc.get("cross_attention_frequency", 2)),
      vision_width=vision_width, vocab_size=0,
      norm_eps=float(qc.get("layer_norm_eps", 1e-12)), activation="gelu")
  out_dim = int(tc.get("hidden_size", 2560))
  root = ckpt.resolve_prefix(("", "model."), "qformer.layernorm.weight",
                             "BLIP-2 Q-Former")
  w, q = qcfg.width, "connector/qformer/"
  plan: P.Plan = {q + "query_tokens": P.raw(root + "query_tokens",
                                            (1, qcfg.n_queries, w))}
  P.add_norm(plan, q + "layernorm", root + "qformer.layernorm", w)
  for i in range(qcfg.depth):
    hf, mj = f"{root}qformer.encoder.layer.{i}.", f"{q}layer_{i}/"
    _qformer_block(plan, mj + "attention/", hf + "attention.", w, w,
                   qcfg.n_heads)
    if i % qcfg.cross_attention_freq == 0:
      _qformer_block(plan, mj + "crossattention/", hf + "crossattention.", w,
                     vision_width, qcfg.n_heads)
    P.add_dense(plan, mj + "intermediate_query", hf + "intermediate_query."
                "dense", w, qcfg.mlp_dim)
    P.add_dense(plan, mj + "output_query/dense", hf + "output_query.dense",
                qcfg.mlp_dim, w)
    P.add_norm(plan, mj + "output_query/LayerNorm",
               hf + "output_query.LayerNorm", w)
  P.add_dense(plan, "connector/language_projection",
              root + "language_projection", w, out_dim)
  notes.append("BLIP-2: imported the Q-Former connector (queries, Q-Former, "
               "language_projection); its EVA ViT and OPT/T5 LM are not mmjax "
               "modules and were skipped.")
  ignore = [root + p for p in (
      "vision_model.*", "language_model.*", "qformer.embeddings.*",
      "qformer.encoder.layer.*.intermediate.*",
      "qformer.encoder.layer.*.output.*")]
  cfg = {"kind": "qformer", "qformer": dataclasses.asdict(qcfg),
         "out_dim": out_dim}
  return cfg, plan, ignore


def _newline_from_tokenizer(ckpt: Checkpoint) -> int | None:
  file = ckpt.path / "tokenizer.json"
  if not file.is_file():
    return None
  tok = json.loads(file.read_text())
  for added in tok.get("added_tokens", []):
    if added.get("content") == "|NEWLINE|":
      return int(added["id"])
  vocab = (tok.get("model") or {}).get("vocab") or {}
  return int(vocab["|NEWLINE|"]) if isinstance(vocab, dict) and (
      "|NEWLINE|" in vocab) else None


def fuyu_import(ckpt: Checkpoint, config: Mapping[str, Any],
                notes: list[str], newline_id: int | None = None) -> Result:
  tc = config.get("text_config") or config
  d = int(tc.get("hidden_size", config.get("hidden_size", 4096)))
  vocab = int(tc.get("vocab_size", config.get("vocab_size", 262144)))
  p = int(config.get("patch_size", 30))
  c = int(config.get("num_channels", 3))
  if newline_id is None:
    newline_id = _newline_from_tokenizer(ckpt)
  if newline_id is None:
    raise HFImportError(
        f"Fuyu needs the id of its '|NEWLINE|' token (the image newline): "
        f"none found in {ckpt.path}/tokenizer.json; pass newline_token_id "
        f"(CLI: --fuyu_newline_id=ID; 71019 for adept/fuyu-8b).")
  if not 0 <= newline_id < vocab:
    raise HFImportError(f"Fuyu newline token id {newline_id} is outside the "
                        f"vocabulary [0, {vocab}).")
  vp = ckpt.resolve_prefix(("vision_embed_tokens.",
                            "model.vision_embed_tokens."), "weight",
                           "Fuyu patch embedding")
  emb = ckpt.resolve_prefix(("language_model.model.", "model.language_model."),
                            "embed_tokens.weight", "Fuyu token embeddings")
  plan: P.Plan = {
      "connector/patch_embed/kernel": P.dense(vp + "weight", p * p * c, d),
      "connector/patch_embed/bias": P.raw(vp + "bias", (d,)),
      "connector/image_newline": P.Src(
          (emb + "embed_tokens.weight",), ((vocab, d),),
          lambda e: e[newline_id]),
  }
  notes.append("Fuyu: imported the patch embedding and the newline vector; "
               "its Persimmon LM is not an mmjax decoder and was skipped.")
  ignore = ["language_model.*", "model.language_model.*", "lm_head.weight"]
  cfg = {"kind": "one_backbone", "d_model": d, "patch_size": p,
         "channels": c, "image_token_id": config.get("image_token_id"),
         "newline_token_id": newline_id}
  return cfg, plan, ignore


def idefics_import(ckpt: Checkpoint, config: Mapping[str, Any],
                   notes: list[str]) -> tuple[Any, ...]:
  bad = {k: config.get(k) for k, ok in (
      ("cross_layer_interval", 1), ("alpha_type", "float"),
      ("qk_layer_norms", False), ("additional_vocab_size", 0),
      ("hidden_act", "silu")) if config.get(k, ok) != ok}
  if bad:
    raise HFImportError(
        f"Idefics with {bad} is not supported; mmjax imports "
        f"cross_layer_interval=1, alpha_type='float', qk_layer_norms=false, "
        f"additional_vocab_size=0, hidden_act='silu'.")
  lm = llm_lib.decoder_config(
      {**config, "model_type": "llama", "num_key_value_heads": None},
      "llama", notes)
  lm = dataclasses.replace(lm, xattn_every=1, xattn_media="last")
  media = int((config.get("vision_config") or {}).get("embed_dim", 768))
  plan = llm_lib.decoder_plan(lm, "model.", "lm_head.weight")
  d, hd = lm.d_model, lm.resolved_head_dim
  for i in range(lm.n_layers):
    hf, mj = f"model.gated_cross_attn_layers.{i}.", f"xattn_{i}/"
    for alpha in ("alpha_cross_attn", "alpha_dense"):
      plan[mj + alpha] = P.raw(hf + alpha, (1,), ())
    for norm in ("input_layernorm", "post_attention_layernorm"):
      P.add_norm(plan, mj + norm, hf + norm, d, bias=False)
    P.add_attention(
        plan, mj + "cross_attn",
        {n: f"{hf}cross_attn.{n}_proj" for n in "qkvo"},
        d_q=d, d_kv=media, heads=lm.n_heads, kv_heads=lm.n_heads, head_dim=hd,
        d_out=d, qkv_bias=False, o_bias=False)
    for name, (a, b) in (("gate", (d, lm.mlp_dim)), ("up", (d, lm.mlp_dim)),
                         ("down", (lm.mlp_dim, d))):
      P.add_dense(plan, f"{mj}mlp/{name}", f"{hf}mlp.{name}_proj", a, b,
                  bias=False)
  notes.append("Idefics: imported the decoder with its gated cross-attention "
               "blocks; the CLIP tower and perceiver were skipped (feed "
               "media [B, M, T, media_width] and media_times).")
  ignore = list(llm_lib.DECODER_IGNORE) + [
      "model.vision_model.*", "model.perceiver_resampler.*"]
  if lm.tie_embeddings:
    ignore.append("lm_head.weight")
  return dataclasses.asdict(lm), plan, ignore, {"media_width": media}
