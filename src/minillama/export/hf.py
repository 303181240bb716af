"""Hugging Face interop: our checkpoint directories *are* transformers model directories.

Parameter names equal `LlamaForCausalLM`'s, and config fields equal `LlamaConfig`'s, so export is
a key copy plus a few identity fields (`architectures`, `model_type`, `rope_parameters`).
`config.json` carries both the 4.x spelling (`rope_theta`, `rope_scaling`) and the 5.x one
(`rope_parameters`) so either major version reads the same RoPE.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from minillama.errors import CheckpointError
from minillama.files import atomic_directory, verify_manifest
from minillama.model.config import ModelConfig
from minillama.model.llama import MiniLlama

WEIGHTS = "model.safetensors"
SHARDED_INDEX = "model.safetensors.index.json"
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# Buffers that some older exports saved; they are recomputed from the config.
IGNORED_KEYS_SUFFIXES = ("rotary_emb.inv_freq",)


def config_to_hf_dict(config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """A `config.json` that transformers 4.x and 5.x load as `LlamaConfig` / `Qwen2Config`."""
    model_type = "qwen2" if config.attention_bias else "llama"
    rope_parameters = {"rope_type": "default", "rope_theta": config.rope_theta}
    rope_parameters.update(config.rope_scaling or {})
    data = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        **config.to_dict(),
        "rope_parameters": rope_parameters,
        "hidden_act": "silu",
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if model_type == "qwen2":
        # Qwen2 puts bias on q/k/v always and never on o_proj; it has no attention_bias field.
        data.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.num_hidden_layers)
        del data["attention_bias"]
    return data


def config_from_hf_dict(data: dict[str, Any]) -> ModelConfig:
    """Read our own config.json or a transformers Llama / Qwen2 one (4.x or 5.x)."""
    model_type = data.get("model_type")
    if model_type is not None and model_type not in ARCHITECTURES:
        raise CheckpointError(f"model_type {model_type!r} is not supported; minillama reads "
                              f"{' and '.join(ARCHITECTURES)} models")
    if data.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"hidden_act {data['hidden_act']!r} is not supported (only silu / SwiGLU)")
    if data.get("mlp_bias"):
        raise CheckpointError("mlp_bias=True is not supported: minillama's MLP has no biases")
    if model_type == "llama" and data.get("attention_bias"):
        raise CheckpointError("Llama attention_bias=True (bias on o_proj too) is not supported; "
                              "minillama supports the Qwen2 layout (q/k/v bias only)")
    if model_type == "qwen2" and data.get("use_sliding_window"):
        raise CheckpointError("Qwen2 sliding-window attention is not supported")
    fields = dict(data)
    if model_type == "qwen2":
        fields["attention_bias"] = True
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(fields.get(key), list):  # several stop tokens: keep the first
            fields[key] = fields[key][0] if fields[key] else None
    rope = fields.pop("rope_parameters", None)
    if fields.get("rope_scaling") is None and rope:
        rope = dict(rope)
        fields["rope_theta"] = rope.pop("rope_theta", fields.get("rope_theta", 10000.0))
        rope.pop("partial_rotary_factor", None)
        fields["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    return ModelConfig.from_dict(fields)


def write_model_dir(config: ModelConfig, state: dict[str, torch.Tensor], directory: str | os.PathLike) -> None:
    """config.json + model.safetensors from a full state dict (a tied head is stored once, as
    transformers does)."""
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    dtype = next(iter(state.values())).dtype
    save_file(state, directory / WEIGHTS, metadata={"format": "pt"})
    with open(directory / "config.json", "w", encoding="utf-8") as f:
        json.dump(config_to_hf_dict(config, dtype), f, indent=2)
        f.write("\n")


def _read_state(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / WEIGHTS).exists():
        files = [directory / WEIGHTS]
    elif (directory / SHARDED_INDEX).exists():
        index = json.loads((directory / SHARDED_INDEX).read_text())
        files = [directory / name for name in sorted(set(index["weight_map"].values()))]
    else:
        raise CheckpointError(f"{directory} has no {WEIGHTS}; minillama loads safetensors weights "
                              "(convert a pytorch_model.bin with transformers' save_pretrained first)")
    state = {}
    for path in files:
        try:
            with safe_open(path, framework="pt") as f:
                state.update({key: f.get_tensor(key) for key in f.keys()})
        except Exception as exc:  # safetensors raises its own error types for truncated headers
            raise CheckpointError(f"cannot read {path}: {exc}; the file is truncated or corrupted") from exc
    return state


def read_model_dir(directory: Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype | None = None) -> MiniLlama:
    """Strictly load a checkpoint or transformers directory into `MiniLlama`."""
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} is not a model directory (no config.json)")
    verify_manifest(directory)
    config = config_from_hf_dict(json.loads((directory / "config.json").read_text()))
    state = {k: v for k, v in _read_state(directory).items() if not k.endswith(IGNORED_KEYS_SUFFIXES)}
    with torch.device("meta"):
        model = MiniLlama(config, init=False)
    expected = set(model.state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
        tied_head = state.pop("lm_head.weight", None)
        if tied_head is not None and not torch.equal(tied_head, state.get("model.embed_tokens.weight")):
            raise CheckpointError("tie_word_embeddings is true but lm_head.weight differs from the embedding")
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"weights in {directory} do not match the config: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{'...' if len(unexpected) > 5 else ''}")
    for key, tensor in model.state_dict().items():
        if key in state and state[key].shape != tensor.shape:
            raise CheckpointError(f"{key} has shape {tuple(state[key].shape)} in {directory}, the config "
                                  f"implies {tuple(tensor.shape)}")
    model.load_state_dict(state, strict=not config.tie_word_embeddings, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb.reset_inv_freq()  # a buffer, not stored: computed from the config
    return model.to(device=device, dtype=dtype) if dtype else model.to(device)


def generation_config_dict(config: ModelConfig) -> dict[str, Any]:
    return {key: getattr(config, key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")
            if getattr(config, key) is not None} | {"do_sample": False}


def save_hf(model: MiniLlama, out_dir: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Export a directory that `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads
    with no extra code; with a tokenizer, `AutoTokenizer.from_pretrained(out_dir)` works too.

    `tokenizer` is anything with `save_pretrained(directory)` (ours, or a transformers tokenizer).
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        write_model_dir(model.config, model.state_dict(), tmp)
        with open(tmp / "generation_config.json", "w", encoding="utf-8") as f:
            json.dump(generation_config_dict(model.config), f, indent=2)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir


def load_hf(path: str | os.PathLike) -> MiniLlama:
    """Load a local transformers Llama / Qwen2 directory (or one of ours) strictly."""
    return read_model_dir(Path(path))
