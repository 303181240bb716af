"""Read a checkpoint's `config.json` into `ModelConfig` without importing torch.

`minillama.model` imports torch in its `__init__`, so `import minillama.model.config` would pull
torch in through the package. The config module itself is plain Python; we load that one file
(or reuse it when the torch side has already imported it), so both engines validate a config the
same way and read the same resolved fields.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from minillama.errors import CheckpointError

_CONFIG_MODULE = "minillama.model.config"
_PRIVATE_NAME = "minillama.numpy_model._model_config"
SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


def config_module() -> ModuleType:
    """`minillama/model/config.py` as a module, without running `minillama/model/__init__.py`."""
    for name in (_CONFIG_MODULE, _PRIVATE_NAME):
        if name in sys.modules:
            return sys.modules[name]
    path = Path(__file__).resolve().parent.parent / "model" / "config.py"
    spec = importlib.util.spec_from_file_location(_PRIVATE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PRIVATE_NAME] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)
    return module


def config_from_dict(data: dict[str, Any]) -> Any:
    """A `ModelConfig` from our config.json or a transformers Llama / Qwen2 one (4.x or 5.x).

    The same translation as `minillama.export.hf.config_from_hf_dict` (which imports torch); a test
    checks that the two agree.
    """
    model_type = data.get("model_type")
    if model_type is not None and model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"model_type {model_type!r} is not supported; minillama reads "
                              f"{' and '.join(SUPPORTED_MODEL_TYPES)} models")
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
    if fields.get("rope_scaling") is None and rope:  # transformers 5.x spelling
        rope = dict(rope)
        fields["rope_theta"] = rope.pop("rope_theta", fields.get("rope_theta", 10000.0))
        rope.pop("partial_rotary_factor", None)
        fields["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    return config_module().ModelConfig.from_dict(fields)


def load_config(directory: str | os.PathLike) -> Any:
    """The `ModelConfig` stored in a checkpoint or transformers model directory."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a model directory (no config.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the file is corrupted") from exc
    return config_from_dict(data)
