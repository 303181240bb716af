"""LoRA: low-rank adapters on chosen linear layers, saved in PEFT's format.

A frozen weight W (out, in) gets a trainable update scale * B @ A with A (r, in), B (out, r) and
scale = alpha / r. A starts random (Kaiming-uniform, as PEFT and nn.Linear do) and B at zero, so
the adapted model starts exactly equal to the base model, and the first gradient still reaches B
(dL/dB = dL/dy · (A x)^T is non-zero because A is not). Only A and B train: r * (in + out)
parameters per layer instead of in * out.

Layers are chosen by module name (`q_proj`, `v_proj`, ...), never by shape: under grouped-query
attention k_proj and v_proj are smaller than q_proj, and shape rules silently skip them.
Saved adapters (`adapter_config.json` + `adapter_model.safetensors`) load with
`peft.PeftModel.from_pretrained(transformers_model, directory)`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from minillama.errors import CheckpointError
from minillama.files import atomic_directory
from minillama.model.layout import check_keys

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model


def parse_targets(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """"v_proj,q_proj" or "q,v" (or a list) -> ("q_proj", "v_proj"), checked against `TARGETS`."""
    names = text.split(",") if isinstance(text, str) else list(text)
    targets = []
    for name in (n.strip() for n in names if n.strip()):
        full = name if name.endswith("_proj") else f"{name}_proj"
        if full not in TARGETS:
            raise ValueError(f"unknown LoRA target {name!r}; choose from {', '.join(TARGETS)} "
                             "(or q, k, v, o, gate, up, down)")
        if full not in targets:
            targets.append(full)
    if not targets:
        raise ValueError("name at least one LoRA target module, e.g. --lora-targets q_proj,v_proj")
    return tuple(sorted(targets, key=TARGETS.index))  # one canonical order (PEFT saves a set)


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = field(default=("q_proj", "v_proj"))

    def __post_init__(self) -> None:
        self.targets = parse_targets(self.targets)
        if self.r <= 0:
            raise ValueError(f"the LoRA rank r must be positive, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return self.alpha / self.r


class LoRALinear(nn.Module):
    """y = x W^T + b + scale * B(A(dropout(x))). Holds the base layer's `weight` and `bias` under
    their own names, so the base keys of the state dict are unchanged and only `lora_A.weight`,
    `lora_B.weight` are added (PEFT's names). `merge()` folds the update into W; both `merge()` and
    `unmerge()` do nothing when already in that state."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # (out, in), frozen
        self.register_parameter("bias", base.bias)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, r, bias=False, **factory)  # (r, in)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, **factory)  # (out, r)
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.scale = alpha / r
        self.merged = False
        self.reset_lora()

    @torch.no_grad()
    def reset_lora(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's default
        nn.init.zeros_(self.lora_B.weight)  # the update starts at zero: the base model, unchanged

    def delta_weight(self) -> torch.Tensor:
        """scale * B @ A, the (out, in) update."""
        return self.scale * (self.lora_B.weight @ self.lora_A.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear with the merged weight (the adapters dropped)."""
        self.merge()
        with torch.device("meta"):
            linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear.weight = self.weight
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        r = self.lora_A.out_features
        return f"in={self.in_features}, out={self.out_features}, r={r}, scale={self.scale}"


def is_adapter_key(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def add_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Wrap every linear layer named in `config.targets` with `LoRALinear` (in place), freeze all
    other parameters, and return the wrapped module names."""
    wrapped = []
    for name, module in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] in config.targets and isinstance(module, nn.Linear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, LoRALinear(module, config.r, config.alpha, config.dropout))
            wrapped.append(name)
    if not wrapped:
        raise ValueError(f"no linear layer named {', '.join(config.targets)} in the model")
    for param_name, param in model.named_parameters():
        param.requires_grad = is_adapter_key(param_name)
    return wrapped


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain nn.Linear layers back (in place)."""
    for name, module in lora_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.to_linear())
    for param in model.parameters():
        param.requires_grad = True
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ---- PEFT's file format ----------------------------------------------------------------------
def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter tensors of a full state dict, under PEFT's key names."""
    return {PEFT_PREFIX + key: value for key, value in state.items() if is_adapter_key(key)}


def write_adapter_dir(config: LoRAConfig, state: dict[str, torch.Tensor], directory: str | os.PathLike,
                      base_model: str | None = None) -> None:
    """adapter_config.json + adapter_model.safetensors (PEFT's layout) from a full state dict."""
    directory = Path(directory)
    tensors = {key: value.detach().cpu().contiguous() for key, value in adapter_state(state).items()}
    save_file(tensors, directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": config.r, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
        "target_modules": list(config.targets), "bias": "none", "fan_in_fan_out": False,
        "init_lora_weights": True, "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "inference_mode": True,
    }
    (directory / ADAPTER_CONFIG).write_text(json.dumps(peft_config, indent=2) + "\n", encoding="utf-8")


def save_adapter(model: nn.Module, config: LoRAConfig, out_dir: str | os.PathLike,
                 base_model: str | None = None, tokenizer: Any = None, overwrite: bool = False) -> Path:
    """Write `model`'s adapters (and the tokenizer, if given) to `out_dir`, atomically."""
    with atomic_directory(out_dir, "adapter", overwrite=overwrite) as tmp:
        write_adapter_dir(config, model.state_dict(), tmp, base_model)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def read_adapter_config(directory: str | os.PathLike) -> LoRAConfig:
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a LoRA adapter directory (no {ADAPTER_CONFIG})")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("peft_type", "LORA") != "LORA" or data.get("use_dora") or data.get("use_rslora"):
        raise CheckpointError(f"{path}: only plain LoRA adapters are supported (no DoRA / rsLoRA)")
    if data.get("bias", "none") != "none" or data.get("modules_to_save"):
        raise CheckpointError(f"{path}: adapters that also train biases or whole modules are not supported")
    targets = data.get("target_modules")
    targets = targets.split(",") if isinstance(targets, str) else targets
    return LoRAConfig(r=data["r"], alpha=data["lora_alpha"], dropout=data.get("lora_dropout", 0.0),
                      targets=tuple(targets))


def read_adapter_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Adapter tensors under our state-dict names (PEFT's prefix and adapter name removed)."""
    path = Path(directory) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {ADAPTER_WEIGHTS}")
    with safe_open(path, framework="pt") as f:
        # PEFT writes no adapter name for the default adapter; strip ".default." if one is there.
        return {key.removeprefix(PEFT_PREFIX).replace(".default.", "."): f.get_tensor(key)
                for key in f.keys()}


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> LoRAConfig:
    """Add the adapters saved in `directory` to `model` (in place, not merged); strict: every
    adapter of the model is read and every tensor in the file is used."""
    config = read_adapter_config(directory)
    add_lora(model, config)
    weights = read_adapter_weights(directory)
    check_keys({key for key in model.state_dict() if is_adapter_key(key)}, set(weights), directory,
               "the model's adapters")
    model.load_state_dict({**model.state_dict(), **weights})
    return config


@dataclass
class LoRAFiles:
    """The Trainer's `ModelFiles` for LoRA: checkpoints hold the adapters only (the base never
    changes); reading one puts the saved adapters beside the model's own base weights."""

    config: LoRAConfig
    model: nn.Module
    base_model: str | None = None

    def write(self, state: dict[str, torch.Tensor], directory: Path) -> None:
        write_adapter_dir(self.config, state, directory, self.base_model)

    def read(self, directory: Path) -> dict[str, torch.Tensor]:
        saved = read_adapter_config(directory)
        if asdict(saved) != asdict(self.config):
            raise CheckpointError(f"the checkpoint {directory} has LoRA settings {asdict(saved)}, this run "
                                  f"{asdict(self.config)}; use the same settings or another run.out_dir")
        return {**self.model.state_dict(), **read_adapter_weights(directory)}
