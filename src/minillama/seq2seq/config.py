"""The encoder–decoder's shape, named as `transformers.MarianConfig` names it, so export is a copy.

One switch, `normalize_before`, chooses the block layout (as fairseq does): False is the paper's
post-norm, x = LayerNorm(x + f(x)), which is what MarianMTModel computes; True is pre-norm,
x = x + f(LayerNorm(x)), with a final LayerNorm after each stack. transformers' Marian has no
pre-norm, so a pre-norm config.json names a model type transformers does not know (it refuses the
directory instead of computing something else).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minillama.errors import CheckpointError

ACTIVATIONS = ("relu", "gelu", "silu", "swish")  # transformers' ACT2FN names (swish is silu)
MARIAN = "marian"
PRE_NORM_MODEL_TYPE = "minillama_seq2seq"  # unknown to transformers: it refuses a pre-norm directory


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class Seq2SeqConfig:
    """Hyperparameters of the Transformer of "Attention Is All You Need". Field names follow
    `transformers.MarianConfig`; each help text is the `--model.FIELD` text of `translate train`."""

    vocab_size: int = _f(8000, "tokens in the (joint source and target) vocabulary")
    decoder_vocab_size: int | None = _f(None, "target vocabulary when embeddings are not shared (None: vocab_size)")
    d_model: int = _f(256, "width of the residual stream")
    encoder_layers: int = _f(3, "encoder blocks")
    decoder_layers: int = _f(3, "decoder blocks")
    encoder_attention_heads: int = _f(4, "attention heads in the encoder")
    decoder_attention_heads: int = _f(4, "attention heads in the decoder (self and cross)")
    encoder_ffn_dim: int = _f(1024, "width of the encoder's feed-forward")
    decoder_ffn_dim: int = _f(1024, "width of the decoder's feed-forward")
    activation_function: str = _f("relu", "feed-forward activation: relu (the paper), gelu, silu / swish")
    max_position_embeddings: int = _f(128, "longest source or target sequence (sinusoidal positions)")
    scale_embedding: bool = _f(True, "multiply token embeddings by sqrt(d_model) (the paper)")
    normalize_before: bool = _f(False, "pre-norm blocks (False: post-norm, as the paper and Marian)")
    share_encoder_decoder_embeddings: bool = _f(True, "one embedding for source and target tokens")
    tie_word_embeddings: bool = _f(True, "the output projection shares the target embedding's weight")
    dropout: float = _f(0.1, "dropout on embeddings and on each sublayer's output")
    attention_dropout: float = _f(0.0, "dropout on attention probabilities")
    activation_dropout: float = _f(0.0, "dropout after the feed-forward activation")
    init_std: float = _f(0.02, "Marian's init scale (stored for transformers; see Seq2SeqModel.init_weights)")
    pad_token_id: int = _f(0, "padding token (also transformers' default decoder start)")
    eos_token_id: int = _f(0, "end of sequence: appended to every source and target")
    decoder_start_token_id: int = _f(0, "the decoder's first input token")
    forced_eos_token_id: int | None = _f(None, "generation: force this token at the last allowed step "
                                               "(Marian's default is its EOS)")
    layer_norm_eps: float = _f(1e-5, "LayerNorm epsilon (nn.LayerNorm's default, as Marian)")

    def __post_init__(self) -> None:
        if self.decoder_vocab_size is None:
            self.decoder_vocab_size = self.vocab_size
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function must be one of {', '.join(ACTIVATIONS)}, "
                             f"got {self.activation_function!r}")
        for name in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                     "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, name):
                raise ValueError(f"d_model {self.d_model} is not divisible by {name} {getattr(self, name)}")
        if self.share_encoder_decoder_embeddings and self.decoder_vocab_size != self.vocab_size:
            raise ValueError("share_encoder_decoder_embeddings needs decoder_vocab_size == vocab_size")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            if not 0 <= getattr(self, name) < min(self.vocab_size, self.decoder_vocab_size):
                raise ValueError(f"{name} {getattr(self, name)} is outside the vocabulary")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Seq2SeqConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


PRESETS: dict[str, dict[str, Any]] = {
    # for tests: builds in milliseconds
    "debug": dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64),
    # the default of `translate train`: 1.4M parameters with a 4k vocabulary. Twenty minutes of a shared
    # 2-core CPU are about 5e13 FLOPs, compute-optimal for a model of about a million parameters (6ND,
    # D = 20N); `small` (7.6M) saw 3 epochs in that time and stayed at 0.6 BLEU
    "tiny": dict(d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512),
    "small": dict(d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024),
    # the paper's base model (65M parameters with a 37k vocabulary)
    "base": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                 decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=512),
}


def config_from_preset(preset: str, **overrides: Any) -> Seq2SeqConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown seq2seq preset {preset!r}; choose from {', '.join(PRESETS)}")
    return Seq2SeqConfig(**{**PRESETS[preset], **overrides})


# ---- config.json: transformers' MarianConfig -------------------------------------------------------
def config_to_hf_dict(config: Seq2SeqConfig, dtype: str = "float32") -> dict[str, Any]:
    """config.json content that `MarianConfig` reads (a pre-norm model names a type transformers
    does not know, so that it refuses the directory)."""
    data = config.to_dict()
    data.pop("layer_norm_eps")  # Marian's LayerNorms use nn.LayerNorm's default 1e-5
    model_type = PRE_NORM_MODEL_TYPE if config.normalize_before else MARIAN
    data.update(model_type=model_type, architectures=["MarianMTModel"], is_encoder_decoder=True,
                encoder_layerdrop=0.0, decoder_layerdrop=0.0, bos_token_id=None, dtype=dtype)
    return data


def config_from_hf_dict(data: dict[str, Any], where: str | os.PathLike = "config.json") -> Seq2SeqConfig:
    """A Seq2SeqConfig from a MarianConfig's config.json (ours or transformers')."""
    model_type = data.get("model_type")
    if model_type not in (MARIAN, PRE_NORM_MODEL_TYPE):
        raise CheckpointError(f"{where} holds a {model_type or 'unknown'} model, not a seq2seq (Marian) model; "
                              "give a directory written by `minillama translate train` or a MarianMTModel")
    if data.get("layer_norm_eps", 1e-5) != 1e-5:
        raise CheckpointError(f"{where}: layer_norm_eps {data['layer_norm_eps']} is not Marian's 1e-5")
    for name in ("encoder_layerdrop", "decoder_layerdrop"):
        if data.get(name, 0.0):
            raise CheckpointError(f"{where}: {name} is not supported (layers are always run)")
    values = dict(data)
    if isinstance(values.get("eos_token_id"), list):
        raise CheckpointError(f"{where}: several eos_token_id values are not supported")
    values["normalize_before"] = model_type == PRE_NORM_MODEL_TYPE or bool(data.get("normalize_before"))
    values.setdefault("scale_embedding", False)  # MarianConfig's defaults where the file is silent
    values.setdefault("activation_function", "gelu")
    values.setdefault("share_encoder_decoder_embeddings", True)
    values.setdefault("tie_word_embeddings", True)
    values.setdefault("pad_token_id", 58100)
    values.setdefault("decoder_start_token_id", 58100)
    values.setdefault("eos_token_id", 0)
    try:
        return Seq2SeqConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def load_config(directory: str | os.PathLike) -> Seq2SeqConfig:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json; give a seq2seq model directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    return config_from_hf_dict(data, path)
