"""The hand-written LLaMA / Qwen2 model."""

from minillama.model.cache import KVCache
from minillama.model.config import PRESETS, ModelConfig
from minillama.model.llama import CausalLMOutput, MiniLlama, causal_lm_loss, load_config, token_cross_entropy

__all__ = ["PRESETS", "CausalLMOutput", "KVCache", "MiniLlama", "ModelConfig", "causal_lm_loss", "load_config",
           "token_cross_entropy"]
