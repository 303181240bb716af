"""Load a checkpoint's safetensors weights as float32 NumPy arrays (`safetensors.numpy`, no torch).

A directory holds `model.safetensors`, or shards listed in `model.safetensors.index.json`
(`minillama.model.layout`, shared with the torch model).
NumPy has no bfloat16, so bf16 tensors are read as raw 16-bit words and widened: a bf16 number is
the top half of a float32, so shifting its bits left by 16 gives the same value exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors import safe_open

from minillama.errors import CheckpointError
from minillama.files import verify_manifest
from minillama.model.layout import is_stored, weight_files


def _bf16_to_float32(path: Path, key: str) -> np.ndarray:
    """Read one bf16 tensor's bytes straight from the file (layout: u64 header size, JSON, data)."""
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(header_size))[key]
        begin, end = entry["data_offsets"]
        f.seek(8 + header_size + begin)
        words = np.frombuffer(f.read(end - begin), dtype="<u2")
    return (words.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


def read_state(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of the directory's weight files, as contiguous float32 arrays."""
    directory = Path(directory)
    verify_manifest(directory)
    state: dict[str, np.ndarray] = {}
    for path in weight_files(directory):
        try:
            with safe_open(path, framework="np") as f:
                for key in filter(is_stored, f.keys()):
                    if f.get_slice(key).get_dtype() == "BF16":
                        array = _bf16_to_float32(path, key)
                    else:
                        array = f.get_tensor(key)
                    state[key] = np.ascontiguousarray(array, dtype=np.float32)
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error types for truncated headers
            raise CheckpointError(f"cannot read {path}: {exc}; the file is truncated or corrupted") from exc
    return state
