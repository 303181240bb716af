"""The model's shape, named as `transformers.LlamaConfig` names it, so export is a copy."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

# rope_type -> keys its `rope_scaling` dict must carry (besides rope_type itself).
ROPE_TYPES: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor",),
}
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass
class ModelConfig:
    """Hyperparameters of a LLaMA / Qwen2 decoder. Field names follow `transformers.LlamaConfig`."""

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None  # None: same as num_attention_heads (plain multi-head)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 512
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # None, or {"rope_type": "linear" | "dynamic" | "llama3" | "yarn", "factor": f, ...}
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False  # Qwen2-style bias on q/k/v projections (not on o_proj)
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # "sdpa": torch's fused scaled_dot_product_attention (flash kernels on GPU);
    # "eager": the explicit softmax(QK^T / sqrt(d) + mask) V, for learning and testing.
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.rope_scaling is not None:
            self.rope_scaling = dict(self.rope_scaling)
            if "type" in self.rope_scaling and "rope_type" not in self.rope_scaling:  # transformers < 4.45
                self.rope_scaling["rope_type"] = self.rope_scaling.pop("type")
            if self.rope_scaling.get("rope_type") == "default":
                self.rope_scaling = None
        self._validate()
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    def _validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}); change one of them or set head_dim explicitly"
            )
        if self.head_dim is not None and (self.head_dim <= 0 or self.head_dim % 2):
            raise ValueError(f"head_dim must be a positive even number (RoPE rotates pairs), got {self.head_dim}")
        if self.head_dim is None and (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(
                f"head_dim = hidden_size / num_attention_heads = {self.hidden_size // self.num_attention_heads} "
                "must be even (RoPE rotates pairs); change hidden_size or num_attention_heads"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_key_value_heads "
                f"({self.num_key_value_heads}); each key/value head serves a whole group of query heads"
            )
        if self.rms_norm_eps <= 0:
            raise ValueError(f"rms_norm_eps must be positive, got {self.rms_norm_eps}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta}")
        if self.attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attn_implementation!r}"
            )
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name} ({value}) must be a token id in [0, vocab_size={self.vocab_size})")
        self._validate_rope_scaling()

    def _validate_rope_scaling(self) -> None:
        scaling = self.rope_scaling
        if scaling is None:
            return
        rope_type = scaling.get("rope_type")
        if rope_type not in ROPE_TYPES:
            raise ValueError(
                f"rope_scaling.rope_type {rope_type!r} is unknown; use one of {sorted(ROPE_TYPES)} "
                "or set rope_scaling to None"
            )
        missing = [key for key in ROPE_TYPES[rope_type] if key not in scaling]
        if missing:
            raise ValueError(f"rope_scaling of type {rope_type!r} needs the key(s) {missing}")
        if rope_type == "yarn" and "original_max_position_embeddings" not in scaling:
            # transformers falls back to max_position_embeddings; store it so exports read the same.
            scaling["original_max_position_embeddings"] = self.max_position_embeddings
        factor = scaling.get("factor")
        if factor is not None and (not isinstance(factor, (int, float)) or factor < 1.0):
            raise ValueError(f"rope_scaling.factor must be a number >= 1.0, got {factor!r}")

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def num_key_value_groups(self) -> int:
        """Query heads that share one key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    # ---- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict, ignoring keys that are not fields (e.g. a transformers config.json)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> ModelConfig:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named shape (see `PRESETS`), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# Named shapes. stories* are llama2.c's TinyStories models, with its 32000-token vocabulary (training
# replaces vocab_size with the trained tokenizer's). tinyllm is the seed notes' shape.
PRESETS: dict[str, dict[str, Any]] = {
    "debug": dict(vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
    "tiny": dict(vocab_size=4096, hidden_size=256, intermediate_size=704, num_hidden_layers=6,
                 num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256),
    "stories15M": dict(vocab_size=32000, hidden_size=288, intermediate_size=768, num_hidden_layers=6,
                       num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=256),
    "stories42M": dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024),
    "stories110M": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                        num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=1024),
    "tinyllm": dict(vocab_size=4096, hidden_size=288, intermediate_size=768, num_hidden_layers=8,
                    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256),
}

