"""pojax.models: Flax NNX ports of Hugging Face decoders and of the masked-diffusion LMs LLaDA and
Dream, and their checkpoint I/O."""
from pojax.models.config import ModelConfig
from pojax.models.dream import Dream
from pojax.models.hf_io import CheckpointError, from_pretrained, network_class, save_pretrained
from pojax.models.llada import LLaDA
from pojax.models.transformer import CausalLM

__all__ = ["CausalLM", "CheckpointError", "Dream", "LLaDA", "ModelConfig", "from_pretrained", "network_class",
           "save_pretrained"]
