"""Quantize a whole model, save it as a model directory, and describe it in config.json.

    model = MiniLlama.from_pretrained("runs/pipeline/hf")
    quantization = quantize_model(model, "gptq-int4", group_size=32, calibration=windows)
    save_quantized(model, quantization, "runs/pipeline/int4")
    MiniLlama.from_pretrained("runs/pipeline/int4")   # QuantLinear layers again, checksums verified

The directory is an ordinary minillama model directory (config.json, model.safetensors, the
tokenizer, checksums.sha256). config.json carries `quantization_config`, the key transformers
uses for quantized models, so every command that loads a model (`sample`, `serve`, `eval`) builds
the `QuantLinear` layers it names before loading the integer tensors strictly.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minillama.errors import MiniLlamaError
from minillama.quant.linear import QuantLinear, quantizable_linears, replace_module

METHODS = {"int8": 8, "int4": 4, "gptq-int4": 4}  # method -> bits
GROUP_SIZES = (32, 64, 128)
QUANT_METHOD = "minillama"  # config.json's quantization_config.quant_method
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


class QuantizationError(MiniLlamaError):
    """A quantization request that cannot be carried out as given."""


def check_quantizable(model: nn.Module, method: str, group_size: int, head: bool = False) -> dict[str, nn.Linear]:
    """The Linears `quantize_model` would replace, after checking the request makes sense."""
    if method not in METHODS:
        raise QuantizationError(f"unknown quantization method {method!r}; choose one of {', '.join(METHODS)}")
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise QuantizationError("the model is already quantized; quantize its float checkpoint instead")
    linears = quantizable_linears(model, head)
    if METHODS[method] == 4:
        if group_size not in GROUP_SIZES:
            raise QuantizationError(f"group size {group_size} is not one of {', '.join(map(str, GROUP_SIZES))}")
        for name, linear in linears.items():
            if linear.in_features % group_size:
                raise QuantizationError(f"group size {group_size} does not divide the {linear.in_features} input "
                                        f"features of {name}; choose a group size that does (e.g. 32)")
    return linears


@torch.no_grad()
def quantize_model(model: nn.Module, method: str, group_size: int = 32, head: bool = False,
                   calibration: torch.Tensor | None = None, damp: float = 0.01) -> dict[str, Any]:
    """Replace every block's Linear (and the LM head if `head`) by a `QuantLinear`, in place.

    method: int8 (per output channel), int4 (groups of `group_size`, round to nearest), or
    gptq-int4 (GPTQ on `calibration`, (n, T) token ids, `damp` its Hessian dampening).
    Returns the `quantization_config` that describes the result (saved in config.json).
    """
    linears = check_quantizable(model, method, group_size, head)
    bits = METHODS[method]
    if method == "gptq-int4":
        if calibration is None:
            raise QuantizationError("gptq-int4 needs calibration sequences")
        from minillama.quant.gptq import gptq_quantize_model

        gptq_quantize_model(model, list(linears), calibration, group_size, damp)
    else:
        for name, linear in linears.items():
            replace_module(model, name, QuantLinear.from_linear(linear, bits, group_size))
    config: dict[str, Any] = {"quant_method": QUANT_METHOD, "method": method, "bits": bits,
                              "group_size": group_size if bits == 4 else None, "sym": bits == 8,
                              "modules": list(linears)}
    if method == "gptq-int4":
        config.update(damp_percent=damp, calibration_sequences=int(calibration.shape[0]),
                      calibration_seq_len=int(calibration.shape[1]))
    return config


def save_quantized(model: nn.Module, quantization: dict[str, Any], directory: str | os.PathLike,
                   tokenizer_dir: str | os.PathLike | None = None, overwrite: bool = False,
                   inputs: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Write a quantized model directory atomically: config.json with `quantization_config`,
    model.safetensors (integer codes, scales, zeros; float norms and embedding), the tokenizer of
    `tokenizer_dir` if given, and the checksum manifest. Same `--out` rules as every model directory."""
    from minillama.files import atomic_directory
    from minillama.model import io
    from minillama.model.config import config_to_hf_dict

    config = model.config
    data = config_to_hf_dict(config, "float32")
    data["quantization_config"] = quantization
    state = model.state_dict()
    # A tied head that stayed float is the embedding: stored once, as transformers does.
    drop = ("lm_head.weight",) if config.tie_word_embeddings and "lm_head.weight" in state else ()
    with atomic_directory(directory, "model", overwrite=overwrite, inputs=inputs) as tmp:
        io.write_weights(state, tmp, data, drop)
        for name in TOKENIZER_FILES if tokenizer_dir else ():
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(tokenizer_dir) / name, tmp / name)
    return Path(directory)


def model_file_bytes(model: nn.Module) -> int:
    """Bytes of the model's tensors as saved (a tied weight counted once)."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) not in seen and tensor.device.type != "meta":
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total
