"""Multimodal LM on the synthetic shapes benchmark, in any fusion paradigm.

  python -m mmjax.main --config=configs/shapes.py:size=tiny,fusion=resampler --workdir=W

Args (comma-separated key=value after the colon, big_vision style):
  size=tiny|small        model size (default small); a bare word means size
  fusion=projection|resampler|qformer|cross_attention|one_backbone
                         how vision enters the LM (default projection)
  positions=rope|mrope|v2pe
                         position scheme of the LM (default rope)
  steps=N                cap every stage at N steps (0 = the recipe's own)
  batch=N                global batch size (0 = the size's default)
Any key can also be overridden with --config.KEY=VALUE, e.g.
  --config.model.projector=pixel_shuffle --config.model.image_attention=bidirectional
"""
import ml_collections

from mmjax import config as config_lib

FUSIONS = ("projection", "resampler", "qformer", "cross_attention",
           "one_backbone")
POSITIONS = ("rope", "mrope", "v2pe")

_SIZES = {
    "tiny": dict(
        vision=dict(width=64, depth=2, mlp_dim=256, n_heads=2),
        lm=dict(d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
                mlp_dim=256),
        latents=16, resampler_depth=2, qformer_depth=2, batch=16),
    "small": dict(
        vision=dict(width=192, depth=4, mlp_dim=768, n_heads=3),
        lm=dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2,
                mlp_dim=768),
        latents=32, resampler_depth=2, qformer_depth=4, batch=32),
}


def _mrope_sections(head_dim):
  """Qwen2-VL's 16:24:24 split of head_dim // 2 frequencies, scaled down."""
  half = head_dim // 2
  t = half // 4
  h = (half - t) // 2
  return (t, h, half - t - h)


def model_config(size: str, fusion: str, positions: str
                 ) -> ml_collections.ConfigDict:
  """The `config.model` block: an MLLMConfig as nested dicts."""
  s = _SIZES[size]
  lm = dict(vocab_size=512, rope_theta=10000.0, norm_eps=1e-6,
            qkv_bias=False, tie_embeddings=False, embed_scale=False,
            norm_offset_one=False, mlp_activation="silu", logit_softcap=0.0,
            dtype="float32", param_dtype="float32", xattn_media="last",
            xattn_every=1 if fusion == "cross_attention" else 0,
            mrope_sections=None, **s["lm"])
  if positions == "mrope":
    lm["mrope_sections"] = _mrope_sections(lm["d_model"] // lm["n_heads"])
  vision = dict(kind="siglip", image_size=64, patch_size=8, channels=3,
                pool="none", dtype="float32", param_dtype="float32",
                **s["vision"])
  width = s["vision"]["width"]
  resampler = dict(
      style="flamingo", n_latents=s["latents"], depth=s["resampler_depth"],
      n_heads=s["vision"]["n_heads"], head_dim=32, ff_mult=4, max_frames=4,
      max_media=4,
      # Early fusion needs latents in LM width; cross-attention reads them
      # in the vision width through its own key/value projections.
      out_dim=s["lm"]["d_model"] if fusion == "resampler" else None)
  qformer = dict(n_queries=s["latents"], width=width,
                 depth=s["qformer_depth"], n_heads=s["vision"]["n_heads"],
                 mlp_dim=4 * width, cross_attention_freq=2,
                 vision_width=width, vocab_size=512, max_text_len=32)
  return ml_collections.ConfigDict(dict(
      fusion=fusion, positions=positions, projector="mlp", feature_layer=-2,
      image_attention="causal", patch_size=8, image_size=64, channels=3,
      frames=1, lm=lm, vision=vision, resampler=resampler, qformer=qformer))


def get_config(arg=None):
  """Returns the shapes recipe; see the module docstring for the args."""
  args = config_lib.parse_arg(arg, size="small", fusion="projection",
                              positions="rope", steps=0, batch=0)
  for key, allowed in (("size", tuple(_SIZES)), ("fusion", FUSIONS),
                       ("positions", POSITIONS)):
    if args[key] not in allowed:
      raise config_lib.ConfigError(
          f"config arg {key}={args[key]!r} is not allowed; allowed values: "
          f"{', '.join(allowed)}")
  config = ml_collections.ConfigDict()
  config.family = "mllm"
  config.seed = 0
  config.model = model_config(args.size, args.fusion, args.positions)
  config.batch_size = args.batch or _SIZES[args.size]["batch"]
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.matmul_precision = "default"
  return config
