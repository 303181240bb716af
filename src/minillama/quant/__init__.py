"""Weight quantization (int8 per channel, int4 groups, GPTQ), quantization-aware training and
pruning. See docs/quantization.md.

    from minillama.quant import quantize_model, save_quantized
"""

from __future__ import annotations

from minillama.lazy import lazy_attributes

__getattr__ = lazy_attributes(__name__, {
    "QuantLinear": "minillama.quant.linear",
    "quantize_model": "minillama.quant.model",
    "save_quantized": "minillama.quant.model",
    "METHODS": "minillama.quant.model",
})
__all__ = ["QuantLinear", "quantize_model", "save_quantized", "METHODS"]
