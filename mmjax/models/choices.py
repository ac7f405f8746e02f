"""The allowed values of MLLMConfig's switches, in one place.

Recipes, benchmarks, sweeps and tests read these (mmjax/models/mllm.py
validates against them); this module imports nothing, so processes that
never build a JAX model (the benchmarks' torch runs) can use it too.
"""

# How vision enters the LM (mllm.py's module docstring describes each).
FUSIONS = ("projection", "resampler", "qformer", "cross_attention",
           "one_backbone")
# Position schemes of the LM: 1-D RoPE, M-RoPE (Qwen2-VL), V2PE (InternVL).
POSITIONS = ("rope", "mrope", "v2pe")
# Projectors of fusion 'projection'.
PROJECTORS = ("linear", "mlp", "pixel_shuffle", "patch_merger")
# Where each visual token sits, added to it after the projector
# (models/visual_positions.py): none (LLaVA) or a fixed 2-D sine-cosine table.
VISUAL_POSITIONS = ("none", "sincos2d")
# Attention among the tokens of one image.
IMAGE_ATTENTION = ("causal", "bidirectional")
# How one image becomes tiles of the tower's side (models/tiling.py,
# data/tiling.py): none (one resized image), LLaVA-NeXT AnyRes, InternVL.
TILINGS = ("none", "anyres", "internvl")
# Connectors of MLLMConfig.audio (models/audio_fusion.py): Qwen2-Audio's
# average pool (two encoder outputs per token in all) + Linear, and
# SALMONN's window-level Q-Former (one token per 17 encoder outputs).
AUDIO_PROJECTORS = ("qwen2_audio", "salmonn")
