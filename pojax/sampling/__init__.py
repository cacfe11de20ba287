"""Sampling from pojax models: autoregressive decoding with the KV cache (``generate``) and
masked-diffusion (LLaDA) reverse-process sampling (``diffusion.generate``)."""
from pojax.sampling import diffusion
from pojax.sampling.autoregressive import generate

__all__ = ["diffusion", "generate"]
