"""Decoder LMs: LLaMA, Mistral, Qwen2, Gemma, Gemma 2, Qwen2-VL's text model.

Hugging Face names (P = the decoder prefix, e.g. `model.`,
`language_model.model.` or `model.language_model.`) -> `DecoderLM` params:

  P.embed_tokens.weight [V, D]            embed/embedding
  P.layers.{i}.input_layernorm            layers_{i}/attn_norm/scale
  P.layers.{i}.self_attn.{q,k,v}_proj     layers_{i}/attn/{q,k,v} ([D, H, Dh];
                                          Qwen2 biases [H, Dh])
  P.layers.{i}.self_attn.o_proj           layers_{i}/attn/o ([H, Dh, D])
  P.layers.{i}.post_attention_layernorm   layers_{i}/mlp_norm/scale
  P.layers.{i}.mlp.{gate,up,down}_proj    layers_{i}/mlp/{gate,up,down}
  P.norm.weight                           final_norm/scale
  lm_head.weight [V, D]                   lm_head/kernel [D, V] (absent when
                                          tie_word_embeddings)

RoPE needs no permutation: mmjax rotates halves (rotate_half), as HF does.
Gemma's RMSNorm stores `weight` and multiplies by (1 + weight): it imports
as is with `norm_offset_one=True`.

Gemma 2 has four norms per layer and names them differently:
  P.layers.{i}.input_layernorm            layers_{i}/attn_norm
  P.layers.{i}.post_attention_layernorm   layers_{i}/post_attn_norm (on the
                                          attention output)
  P.layers.{i}.pre_feedforward_layernorm  layers_{i}/mlp_norm
  P.layers.{i}.post_feedforward_layernorm layers_{i}/post_mlp_norm
and sets attn_logit_softcap, logit_softcap (final_logit_softcapping),
query_pre_attn_scalar, sliding_window with sliding_layers (the
'sliding_attention' entries of layer_types).

Activations follow transformers 4.57.1: Gemma-1 reads `hidden_act` only
(`hidden_activation` is stored but unused), so hidden_act='gelu' (the
original Gemma configs) is the exact erf GELU; Gemma 2 reads
`hidden_activation`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from mmjax.hf import plan as P
from mmjax.hf.safetensors_io import HFImportError
from mmjax.models.decoder import DecoderConfig

# Class defaults of transformers 4.57.1 for keys a config.json may omit
# (save_pretrained drops keys equal to the class default, e.g. Gemma's
# tie_word_embeddings=True).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu",
                  tie_word_embeddings=False),
    "mistral": dict(rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu",
                    tie_word_embeddings=False, sliding_window=4096),
    "qwen2": dict(rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu",
                  tie_word_embeddings=False),
    "gemma": dict(rms_norm_eps=1e-6, rope_theta=10000.0,
                  hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True,
                  head_dim=256),
    "gemma2": dict(rms_norm_eps=1e-6, rope_theta=10000.0,
                   hidden_activation="gelu_pytorch_tanh",
                   tie_word_embeddings=True, head_dim=256,
                   query_pre_attn_scalar=256, sliding_window=4096,
                   final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                   vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                   num_hidden_layers=26, num_attention_heads=8,
                   num_key_value_heads=4),
    "qwen2_vl_text": dict(rms_norm_eps=1e-5, rope_theta=1e6,
                          hidden_act="silu", tie_word_embeddings=False),
}
# The Qwen2-VL config.json of the hub is flat and says model_type 'qwen2_vl'.
_DEFAULTS["qwen2_vl"] = _DEFAULTS["qwen2_vl_text"]
LM_TYPES = tuple(_DEFAULTS)
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh":
                "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
                "gelu": "gelu"}
# The config key whose activation the 4.57.1 modeling code reads.
_ACT_KEY = {"gemma2": "hidden_activation"}


def _get(tc: Mapping[str, Any], key: str, model_type: str) -> Any:
  if key in tc and tc[key] is not None:
    return tc[key]
  if key in _DEFAULTS[model_type]:
    return _DEFAULTS[model_type][key]
  raise HFImportError(f"config.json ({model_type}) lacks {key!r}; a "
                      f"{model_type} config needs it.")


def decoder_config(tc: Mapping[str, Any], model_type: str | None = None,
                   notes: list[str] | None = None) -> DecoderConfig:
  """DecoderConfig of a Hugging Face text config (a config.json dict).

  Args:
    tc: the text config (top level of an LLM's config.json, or an MLLM's
      `text_config`).
    model_type: overrides tc['model_type'].
    notes: approximations are appended here (e.g. Mistral's sliding window).

  Raises:
    HFImportError: a feature DecoderLM does not express.
  """
  model_type = model_type or tc.get("model_type", "llama")
  if model_type not in _DEFAULTS:
    raise HFImportError(f"decoder model_type {model_type!r} is not supported;"
                        f" supported: {list(LM_TYPES)}.")
  get = lambda key: _get(tc, key, model_type)
  act_key = _ACT_KEY.get(model_type, "hidden_act")
  act = get(act_key)
  if act not in _ACTIVATIONS:
    raise HFImportError(f"{model_type} {act_key}={act!r}: DecoderLM supports "
                        f"{sorted(_ACTIVATIONS)}.")
  if (model_type == "gemma" and tc.get("hidden_activation") not in (None, act)
      and notes is not None):
    notes.append(f"Gemma: hidden_act={act!r} used, hidden_activation="
                 f"{tc['hidden_activation']!r} ignored, as transformers "
                 f"4.57.1 does.")
  for flag in ("attention_bias", "mlp_bias"):
    if tc.get(flag):
      raise HFImportError(f"{model_type} with {flag}=true is not supported "
                          f"(DecoderLM has no output/MLP biases).")
  rope = tc.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  mrope = rope.get("mrope_section")
  if rope_type not in ("default", "mrope"):
    raise HFImportError(f"rope_scaling {dict(rope)} is not supported; only "
                        f"plain RoPE and Qwen2-VL's M-RoPE are.")
  if model_type.startswith("qwen2_vl") and not mrope:
    raise HFImportError("a Qwen2-VL config needs rope_scaling.mrope_section.")
  if tc.get("use_sliding_window"):
    raise HFImportError(f"{model_type} with use_sliding_window=true is not "
                        f"supported (DecoderLM attends over the full prefix).")
  window = tc.get("sliding_window") if model_type == "mistral" else None
  if window and notes is not None:
    notes.append(f"Mistral sliding_window={window} is ignored: exact for "
                 f"sequences up to {window} tokens.")
  heads = int(get("num_attention_heads"))
  d_model = int(get("hidden_size"))
  head_dim = tc.get("head_dim") or _DEFAULTS[model_type].get("head_dim")
  head_dim = int(head_dim) if head_dim else d_model // heads
  gemma = model_type in ("gemma", "gemma2")
  gemma2 = _gemma2_fields(tc, get) if model_type == "gemma2" else {}
  return DecoderConfig(
      vocab_size=int(get("vocab_size")), d_model=d_model,
      n_layers=int(get("num_hidden_layers")), n_heads=heads,
      n_kv_heads=int(tc.get("num_key_value_heads") or _DEFAULTS[model_type]
                     .get("num_key_value_heads") or heads),
      head_dim=None if head_dim * heads == d_model else head_dim,
      mlp_dim=int(get("intermediate_size")),
      rope_theta=float(get("rope_theta")), norm_eps=float(get("rms_norm_eps")),
      qkv_bias=model_type in ("qwen2", "qwen2_vl", "qwen2_vl_text"),
      tie_embeddings=bool(get("tie_word_embeddings")), embed_scale=gemma,
      norm_offset_one=gemma, mlp_activation=_ACTIVATIONS[act],
      mrope_sections=tuple(int(s) for s in mrope) if mrope else None,
      **gemma2)


def _gemma2_fields(tc: Mapping[str, Any], get) -> dict[str, Any]:
  """DecoderConfig fields of a Gemma 2 config beyond Gemma's."""
  n_layers = int(get("num_hidden_layers"))
  # transformers' default: layer i slides when (i + 1) is odd.
  types = tc.get("layer_types") or [
      "sliding_attention" if (i + 1) % 2 else "full_attention"
      for i in range(n_layers)]
  unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
  if unknown or len(types) != n_layers:
    raise HFImportError(f"gemma2 layer_types {types} must list "
                        f"{n_layers} of 'sliding_attention' / "
                        f"'full_attention'.")
  window = get("sliding_window")

  def cap(key):  # null in config.json turns soft-capping off
    value = tc[key] if key in tc else _DEFAULTS["gemma2"][key]
    return float(value) if value else 0.0

  return dict(
      attn_logit_softcap=cap("attn_logit_softcapping"),
      logit_softcap=cap("final_logit_softcapping"),
      query_pre_attn_scalar=float(get("query_pre_attn_scalar")),
      post_norms=True, sliding_window=int(window) if window else 0,
      sliding_layers=tuple(i for i, t in enumerate(types)
                           if t == "sliding_attention") if window else None)


def decoder_plan(cfg: DecoderConfig, prefix: str, lm_head: str | None,
                 path: str = "") -> P.Plan:
  """Plan for a DecoderLM (without cross-attention blocks).

  Args:
    cfg: the decoder config.
    prefix: HF prefix of the decoder body, e.g. 'model.'.
    lm_head: HF name of the LM head weight; ignored with tied embeddings.
    path: mmjax path prefix ('' for a bare LM, 'llm/' in an MLLM).
  """
  d, hd = cfg.d_model, cfg.resolved_head_dim
  plan: P.Plan = {
      f"{path}embed/embedding": P.raw(f"{prefix}embed_tokens.weight",
                                      (cfg.vocab_size, d)),
      f"{path}final_norm/scale": P.raw(f"{prefix}norm.weight", (d,)),
  }
  if not cfg.tie_embeddings:
    plan[f"{path}lm_head/kernel"] = P.dense(lm_head, d, cfg.vocab_size)
  # Gemma 2's post_attention_layernorm norms the attention output; without
  # post_norms the same HF name is the pre-MLP norm.
  norms = ((("attn_norm", "input_layernorm"),
            ("post_attn_norm", "post_attention_layernorm"),
            ("mlp_norm", "pre_feedforward_layernorm"),
            ("post_mlp_norm", "post_feedforward_layernorm"))
           if cfg.post_norms else
           (("attn_norm", "input_layernorm"),
            ("mlp_norm", "post_attention_layernorm")))
  for i in range(cfg.n_layers):
    hf, mj = f"{prefix}layers.{i}.", f"{path}layers_{i}/"
    for ours, theirs in norms:
      P.add_norm(plan, mj + ours, hf + theirs, d, bias=False)
    P.add_attention(
        plan, mj + "attn", {n: f"{hf}self_attn.{n}_proj" for n in "qkvo"},
        d_q=d, d_kv=d, heads=cfg.n_heads, kv_heads=cfg.n_kv_heads,
        head_dim=hd, d_out=d, qkv_bias=cfg.qkv_bias, o_bias=False)
    for name, (a, b) in (("gate", (d, cfg.mlp_dim)), ("up", (d, cfg.mlp_dim)),
                         ("down", (cfg.mlp_dim, d))):
      P.add_dense(plan, f"{mj}mlp/{name}", f"{hf}mlp.{name}_proj", a, b,
                  bias=False)
  return plan


# Buffers some checkpoints carry that hold no parameters.
DECODER_IGNORE = ("*rotary_emb.inv_freq",)


def text_config_of(config: Mapping[str, Any]) -> dict[str, Any]:
  """The text config of a config.json: `text_config` if present, else it."""
  tc = config.get("text_config")
  return dict(tc) if tc else dict(config)


def lm_import(ckpt, config: Mapping[str, Any], notes: list[str]
              ) -> tuple[dict[str, Any], P.Plan, list[str]]:
  """Plan for a bare decoder LM checkpoint (`*ForCausalLM`).

  Returns:
    (DecoderConfig as a dict, plan, ignore patterns).
  """
  model_type = config.get("model_type")
  cfg = decoder_config(text_config_of(config), {"qwen2_vl": "qwen2_vl_text"}
                       .get(model_type, model_type), notes)
  prefix = ckpt.resolve_prefix(
      ["model.language_model.", "model.", "language_model.model.", ""],
      "embed_tokens.weight", "decoder embeddings")
  ignore = list(DECODER_IGNORE)
  if cfg.tie_embeddings:
    ignore.append("lm_head.weight")  # a tied copy, when saved at all
  plan = decoder_plan(cfg, prefix, "lm_head.weight")
  return dataclasses.asdict(cfg), plan, ignore
