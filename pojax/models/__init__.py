"""pojax.models: Flax NNX ports of Hugging Face decoders and of LLaDA, and their checkpoint I/O."""
from pojax.models.config import ModelConfig
from pojax.models.hf_io import CheckpointError, from_pretrained, save_pretrained
from pojax.models.llada import LLaDA
from pojax.models.transformer import CausalLM

__all__ = ["CausalLM", "CheckpointError", "LLaDA", "ModelConfig", "from_pretrained", "save_pretrained"]
