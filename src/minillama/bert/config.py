"""BERT's shape, named as `transformers.BertConfig` names it, so export is a copy of config.json."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minillama.errors import CheckpointError

HIDDEN_ACTS = ("gelu", "relu", "gelu_new", "gelu_pytorch_tanh")
MODEL_TYPE = "bert"


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class BertConfig:
    """Hyperparameters of a BERT encoder. Field names follow `transformers.BertConfig`; each field's
    help is its `--model.FIELD` text in `minillama bert pretrain --help`."""

    vocab_size: int = _f(4096, "tokens in the vocabulary (default: the tokenizer's)")
    hidden_size: int = _f(256, "width of the residual stream")
    num_hidden_layers: int = _f(4, "encoder layers")
    num_attention_heads: int = _f(4, "attention heads")
    intermediate_size: int = _f(1024, "width of the GELU feed-forward")
    hidden_act: str = _f("gelu", f"feed-forward activation: {', '.join(HIDDEN_ACTS)}")
    hidden_dropout_prob: float = _f(0.1, "dropout on embeddings and each sub-layer's output")
    attention_probs_dropout_prob: float = _f(0.1, "dropout on the attention probabilities")
    max_position_embeddings: int = _f(512, "longest sequence (learned positions)")
    type_vocab_size: int = _f(2, "token types (segment A / B)")
    initializer_range: float = _f(0.02, "standard deviation of the initial weights")
    layer_norm_eps: float = _f(1e-12, "LayerNorm epsilon")
    pad_token_id: int = _f(0, "padding token (default: the tokenizer's [PAD])")
    classifier_dropout: float | None = _f(None, "dropout before the classifier (None: hidden_dropout_prob)")

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"hidden_act must be one of {', '.join(HIDDEN_ACTS)}, got {self.hidden_act!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} is not a token of the {self.vocab_size}-token "
                             "vocabulary")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> BertConfig:
        if name not in BERT_PRESETS:
            raise ValueError(f"unknown BERT preset {name!r}; choose one of {', '.join(BERT_PRESETS)}")
        return cls(**{**BERT_PRESETS[name], **overrides})


# The small BERTs of Turc et al. 2019 ("Well-Read Students Learn Better"), by their names.
BERT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "small": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=2048),
    "medium": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=2048),
}


def config_to_hf_dict(config: BertConfig, architecture: str, dtype: str = "float32") -> dict[str, Any]:
    """config.json for transformers' `architecture` (BertForMaskedLM, BertForSequenceClassification)."""
    data = config.to_dict()
    data.update(architectures=[architecture], model_type=MODEL_TYPE, position_embedding_type="absolute",
                torch_dtype=dtype, use_cache=False)
    return data


def config_from_hf_dict(data: dict[str, Any], where: str | os.PathLike = "config.json") -> BertConfig:
    """The BertConfig of a config.json (ours or transformers'); other keys are transformers' own."""
    if data.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"{where} is a {data.get('model_type')!r} model, not a BERT (model_type bert); "
                              "use a checkpoint of `minillama bert pretrain` or a transformers BERT directory")
    if data.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{where}: position_embedding_type {data['position_embedding_type']!r} is not "
                              "supported (only absolute positions)")
    names = {f.name for f in dataclasses.fields(BertConfig)}
    values = {k: v for k, v in data.items() if k in names}
    if values.get("pad_token_id") is None:
        values["pad_token_id"] = 0
    try:
        return BertConfig(**values)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def read_hf_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json: it is not a model directory")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None


def load_bert_config(directory: str | os.PathLike) -> BertConfig:
    return config_from_hf_dict(read_hf_config(directory), Path(directory) / "config.json")


def model_family(directory: str | os.PathLike) -> str:
    """"bert" for a BERT directory, "llama" for anything else minillama reads (by config.json)."""
    path = Path(directory) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "llama"  # the caller's own loading says what is wrong
    return "bert" if isinstance(data, dict) and data.get("model_type") == MODEL_TYPE else "llama"
