"""The model's shape, named as `transformers.LlamaConfig` names it, so export is a copy."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minillama.errors import CheckpointError

# rope_type -> keys its `rope_scaling` dict must carry (besides rope_type itself).
ROPE_TYPES: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor",),
}
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_tiled", "flash_triton")
IGNORE_INDEX = -100  # a label that counts for no loss (transformers' convention): prompts, padding
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 # blocks transformers' Llama cannot express (post-norm, sandwich): a model_type it does
                 # not know, so that it refuses the directory instead of computing something else
                 "minillama": "MiniLlamaForCausalLM"}
NORM_PLACEMENTS = ("pre", "post", "sandwich")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    """Hyperparameters of a LLaMA / Qwen2 decoder. Field names follow `transformers.LlamaConfig`;
    each field's help is its `--model.FIELD` text in `minillama train --help`."""

    vocab_size: int = _f(4096, "tokens in the vocabulary (default: the tokenizer's)")
    hidden_size: int = _f(256, "width of the residual stream")
    intermediate_size: int = _f(768, "width of the SwiGLU feed-forward")
    num_hidden_layers: int = _f(4, "decoder blocks")
    num_attention_heads: int = _f(8, "query heads")
    num_key_value_heads: int | None = _f(None, "key/value heads, shared by groups of query heads (GQA); "
                                               "None: one per query head")
    head_dim: int | None = _f(None, "width of a head (None: hidden_size / num_attention_heads)")
    max_position_embeddings: int = _f(512, "longest sequence (context length)")
    rms_norm_eps: float = _f(1e-5, "RMSNorm epsilon")
    rope_theta: float = _f(10000.0, "RoPE base")
    rope_scaling: dict[str, Any] | None = _f(None, 'RoPE scaling as JSON, e.g. {"rope_type": "linear", '
                                                   '"factor": 2}; types: linear, dynamic, llama3, yarn')
    attention_bias: bool = _f(False, "Qwen2-style bias on q/k/v projections (not on o_proj)")
    tie_word_embeddings: bool = _f(True, "the LM head shares the token embedding's weight")
    initializer_range: float = _f(0.02, "standard deviation of the initial weights")
    bos_token_id: int | None = _f(None, "start token (default: the tokenizer's)")
    eos_token_id: int | None = _f(None, "end token (default: the tokenizer's)")
    pad_token_id: int | None = _f(None, "padding token (default: the tokenizer's)")
    norm_placement: str = _f("pre", "pre: x + f(norm(x)) (LLaMA); post: norm(x + f(x)) (the original Transformer); "
                                    "sandwich: x + norm(f(norm(x))). Only pre exports to transformers")
    attn_implementation: str = _f("sdpa", "sdpa: torch's fused kernel (flash attention on GPU); eager: the "
                                          "explicit softmax(QK^T / sqrt(d) + mask) V; flash_tiled: FlashAttention "
                                          "written out in PyTorch (model/flash.py), for reading and testing; "
                                          "flash_triton: the same as Triton kernels (model/flash_triton.py), "
                                          "CUDA only (pip install triton)")

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
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"norm_placement must be one of {NORM_PLACEMENTS}, got {self.norm_placement!r}")
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
    # The 5-minute CPU demo: at 2-8k tokens/s a narrow model with many small steps learns most
    # (measured in docs/training.md); an untied head adds capacity at no extra FLOPs.
    "tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=352, num_hidden_layers=6,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 tie_word_embeddings=False),
    "stories15M": dict(vocab_size=32000, hidden_size=288, intermediate_size=768, num_hidden_layers=6,
                       num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=256),
    "stories42M": dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024),
    "stories110M": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                        num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=1024),
    "tinyllm": dict(vocab_size=4096, hidden_size=288, intermediate_size=768, num_hidden_layers=8,
                    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256),
}


# ---- transformers config.json <-> ModelConfig (plain Python: the NumPy engine uses it too) ----------
def config_to_hf_dict(config: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """A `config.json` that transformers 4.x and 5.x load as `LlamaConfig` / `Qwen2Config`."""
    model_type = "minillama" if config.norm_placement != "pre" else "qwen2" if config.attention_bias else "llama"
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
        "torch_dtype": dtype,
        # how attention runs, not what it computes: transformers knows "sdpa" and "eager"
        "attn_implementation": config.attn_implementation if config.attn_implementation in ("sdpa", "eager")
        else "sdpa",
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
                              f"{', '.join(ARCHITECTURES)} models")
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


def load_config(directory: str | os.PathLike) -> ModelConfig:
    """The `ModelConfig` of a checkpoint or transformers model directory."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a model directory (no config.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the file is corrupted") from exc
    return config_from_hf_dict(data)
