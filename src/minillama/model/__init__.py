"""The hand-written LLaMA / Qwen2 model.

`minillama.model.config` is plain Python (the NumPy engine imports it without torch); the torch
modules load on first use of their names.
"""

from minillama.model.config import PRESETS, ModelConfig, load_config

_TORCH_NAMES = {
    "KVCache": "minillama.model.cache",
    "CausalLMOutput": "minillama.model.llama",
    "MiniLlama": "minillama.model.llama",
    "MiniLlamaForSequenceClassification": "minillama.model.classification",
    "causal_lm_loss": "minillama.model.llama",
    "token_cross_entropy": "minillama.model.llama",
}

__all__ = ["PRESETS", "ModelConfig", "load_config", *_TORCH_NAMES]


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        import importlib

        return getattr(importlib.import_module(_TORCH_NAMES[name]), name)
    raise AttributeError(f"module 'minillama.model' has no attribute {name!r}")
