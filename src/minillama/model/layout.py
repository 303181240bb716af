"""Where a model directory keeps its weights (transformers' layout), with no torch: the torch model
and the NumPy engine both read it through here.

    config.json                     the shape (`config_to_hf_dict` / `config_from_hf_dict`)
    model.safetensors               the weights, named as transformers names them
    model.safetensors.index.json    or this, naming the shards that hold them
    checksums.sha256                what minillama wrote, and the sha256 of each file
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from minillama.errors import CheckpointError

WEIGHTS = "model.safetensors"
SHARDED_INDEX = "model.safetensors.index.json"
# Buffers that some older exports saved; they are recomputed from the config.
IGNORED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """The safetensors files of a model directory: one, or the shards its index names."""
    directory = Path(directory)
    if (directory / WEIGHTS).exists():
        return [directory / WEIGHTS]
    if (directory / SHARDED_INDEX).exists():
        index = json.loads((directory / SHARDED_INDEX).read_text(encoding="utf-8"))
        return [directory / name for name in sorted(set(index["weight_map"].values()))]
    raise CheckpointError(f"{directory} has no {WEIGHTS}; minillama loads safetensors weights "
                          "(convert a pytorch_model.bin with transformers' save_pretrained first)")


def quantization_config(directory: str | os.PathLike) -> dict | None:
    """config.json's `quantization_config` (a directory `minillama quantize` wrote), else None."""
    path = Path(directory) / "config.json"
    return json.loads(path.read_text(encoding="utf-8")).get("quantization_config") if path.is_file() else None


def is_stored(key: str) -> bool:
    """Whether a tensor in a weight file is a weight (not a buffer recomputed from the config)."""
    return not key.endswith(IGNORED_KEY_SUFFIXES)


def check_keys(expected: set[str], found: set[str], where: str | os.PathLike, what: str = "the config") -> None:
    """Loading is strict: every weight the model has is in the file, and nothing else is."""
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise CheckpointError(f"weights in {where} do not match {what}: missing {_few(missing)}, "
                              f"unexpected {_few(unexpected)}")


def _few(names: list[str]) -> str:
    return str(names[:5]) + ("..." if len(names) > 5 else "")
