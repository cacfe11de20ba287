"""Sampling from pojax models: autoregressive decoding with the KV cache."""
from pojax.sampling.autoregressive import generate

__all__ = ["generate"]
