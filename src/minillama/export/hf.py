"""Hugging Face interop: our checkpoint directories *are* transformers model directories.

Parameter names equal `LlamaForCausalLM`'s, and config fields equal `LlamaConfig`'s, so export is
a key copy (the config translation lives beside `ModelConfig`, importable without torch).
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
from minillama.model.config import ModelConfig, config_to_hf_dict, load_config
from minillama.model.llama import MiniLlama

WEIGHTS = "model.safetensors"
SHARDED_INDEX = "model.safetensors.index.json"
# Buffers that some older exports saved; they are recomputed from the config.
IGNORED_KEYS_SUFFIXES = ("rotary_emb.inv_freq",)


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
        json.dump(config_to_hf_dict(config, str(dtype).removeprefix("torch.")), f, indent=2)
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
    config = load_config(directory)
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


def save_hf(model: MiniLlama, out_dir: str | os.PathLike, tokenizer: Any = None, *, overwrite: bool = False,
            inputs: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Export a directory that `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads
    with no extra code; with a tokenizer, `AutoTokenizer.from_pretrained(out_dir)` works too.

    `tokenizer` is anything with `save_pretrained(directory)` (ours, or a transformers tokenizer).
    `out_dir` must be new, empty or an earlier export (see `files.check_output`; `overwrite`
    replaces anything but one of `inputs`).
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, "model", overwrite=overwrite, inputs=inputs) as tmp:
        write_model_dir(model.config, model.state_dict(), tmp)
        with open(tmp / "generation_config.json", "w", encoding="utf-8") as f:
            json.dump(generation_config_dict(model.config), f, indent=2)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir


def load_hf(path: str | os.PathLike) -> MiniLlama:
    """Load a local transformers Llama / Qwen2 directory (or one of ours) strictly."""
    return read_model_dir(Path(path))
