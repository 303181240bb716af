"""The hand-written LLaMA / Qwen2 model.

`minillama.model.config` (and `layout`, `rope`) are plain Python and NumPy: the NumPy engine
imports them without torch. The torch modules load on first use of their names.
"""

from minillama.lazy import lazy_attributes
from minillama.model.config import PRESETS, ModelConfig, load_config

_TORCH_NAMES = {
    "KVCache": "minillama.model.cache",
    "CausalLMOutput": "minillama.model.llama",
    "LlamaModel": "minillama.model.llama",
    "MiniLlama": "minillama.model.llama",
    "MiniLlamaForSequenceClassification": "minillama.model.classification",
    "causal_lm_loss": "minillama.model.loss",
    "token_cross_entropy": "minillama.model.loss",
}

__all__ = ["PRESETS", "ModelConfig", "load_config", *_TORCH_NAMES]
__getattr__ = lazy_attributes(__name__, _TORCH_NAMES)
