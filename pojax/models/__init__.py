"""pojax.models: Flax NNX ports of Hugging Face decoders and their checkpoint I/O."""
from pojax.models.config import ModelConfig
from pojax.models.hf_io import CheckpointError, from_pretrained, save_pretrained
from pojax.models.transformer import CausalLM

__all__ = ["CausalLM", "CheckpointError", "ModelConfig", "from_pretrained", "save_pretrained"]
