"""Hugging Face interop: our model directories *are* transformers model directories (`model/io.py`),
so exporting adds only what is transformers' alone: `generation_config.json`, and the tokenizer
files beside the weights, so that `AutoModelForCausalLM` / `AutoModelForSequenceClassification` and
`AutoTokenizer` load the directory with no extra code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from minillama.errors import MiniLlamaError
from minillama.files import atomic_directory
from minillama.model import io
from minillama.model.classification import MiniLlamaForSequenceClassification
from minillama.model.config import ModelConfig
from minillama.model.llama import MiniLlama


def generation_config_dict(config: ModelConfig) -> dict[str, Any]:
    return {key: getattr(config, key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")
            if getattr(config, key) is not None} | {"do_sample": False}


def save_hf(model: nn.Module, out_dir: str | os.PathLike, tokenizer: Any = None, *, overwrite: bool = False,
            inputs: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Export `model` (a `MiniLlama`, or a `MiniLlamaForSequenceClassification`) to a directory that
    transformers' Auto classes load with no extra code; with a tokenizer (anything with
    `save_pretrained(directory)`: ours, or a transformers one), `AutoTokenizer` loads it too.

    `out_dir` must be new, empty or an earlier export of the same kind (see `files.check_output`;
    `overwrite` replaces anything but one of `inputs`).
    """
    if model.config.norm_placement != "pre":
        raise MiniLlamaError(f"a model with norm_placement {model.config.norm_placement!r} cannot be exported: "
                             "transformers' Llama and Qwen2 blocks are pre-norm; keep it as a minillama model "
                             "directory (its checkpoints load with minillama)")
    out_dir = Path(out_dir)
    classifier = isinstance(model, MiniLlamaForSequenceClassification)
    with atomic_directory(out_dir, "classifier" if classifier else "model", overwrite=overwrite,
                         inputs=inputs) as tmp:
        if classifier:
            io.write_classifier_dir(model.config, model.labels, model.state_dict(), tmp)
        else:
            io.write_causal_lm_dir(model.config, model.state_dict(), tmp)
            (tmp / "generation_config.json").write_text(
                json.dumps(generation_config_dict(model.config), indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir


def load_hf(path: str | os.PathLike) -> MiniLlama:
    """Load a local transformers Llama / Qwen2 directory (or one of ours) strictly."""
    return MiniLlama.from_pretrained(path)
