"""mmjax: multimodal LLMs in JAX/Flax (Linen)."""

__version__ = "0.1.0"
