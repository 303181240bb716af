"""Sequence classification: the decoder stack with a score head on each sequence's last token.

The same computation as transformers' `LlamaForSequenceClassification` (its
`GenericForSequenceClassification`): hidden states (B, T, C) -> `score` (B, T, num_labels), then the
row of the *rightmost token that is not the pad token* is the sequence's logits. A causal model's
last token is the only one that has seen the whole text, so it is the natural summary.
Parameter names are transformers' (`model.*`, `score.weight`), so export is a key copy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from minillama.model import io
from minillama.model.config import ModelConfig, load_config
from minillama.model.llama import LlamaModel
from minillama.model.masks import prepare_attention


class SequenceClassifierOutput(NamedTuple):
    logits: torch.Tensor  # (B, num_labels)
    loss: torch.Tensor | None = None


def last_non_pad_index(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """(B, T) -> (B,) index of the rightmost token that is not `pad_token_id`, exactly as
    transformers finds it (so left and right padding both work; an all-pad row gives 0).
    Without a pad token every row uses its last position."""
    B, T = input_ids.shape
    if pad_token_id is None:
        if B != 1:
            raise ValueError("batches of more than one sequence need config.pad_token_id to find each "
                             "sequence's last token; set pad_token_id")
        return torch.full((B,), T - 1, device=input_ids.device)
    positions = torch.arange(T, device=input_ids.device, dtype=torch.int32)
    return (positions * (input_ids != pad_token_id).int()).argmax(-1)


class MiniLlamaForSequenceClassification(nn.Module):
    """`LlamaModel` + a bias-free linear `score` head read at each sequence's last non-pad token.

    `labels` are the class names (index = class id). `backbone` is a pretrained trunk (e.g.
    `MiniLlama.from_pretrained(dir).model`); without one a freshly initialised trunk is built.
    """

    def __init__(self, config: ModelConfig, labels: list[str], backbone: LlamaModel | None = None,
                 init: bool = True):
        super().__init__()
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"a classifier needs at least two distinct labels, got {labels}")
        self.config, self.labels = config, list(labels)
        self.model = backbone if backbone is not None else LlamaModel(config)
        self.score = nn.Linear(config.hidden_size, len(labels), bias=False,
                               device=self.model.embed_tokens.weight.device)
        if init:
            if backbone is None:
                self.model.init_weights()
            nn.init.normal_(self.score.weight, 0.0, config.initializer_range)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.model.gradient_checkpointing = enabled

    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                label_smoothing: float = 0.0) -> SequenceClassifierOutput:
        """input_ids (B, T); attention_mask (B, T) 1 = token, 0 = padding; labels (B,) class ids.
        Returns logits (B, num_labels) and the mean cross-entropy when labels are given."""
        mask, position_ids = prepare_attention(input_ids, attention_mask, position_ids, None)
        hidden = self.model(input_ids, position_ids, mask, None)  # (B, T, C)
        last = last_non_pad_index(input_ids, self.config.pad_token_id)  # (B,)
        pooled = hidden[torch.arange(input_ids.shape[0], device=hidden.device), last]  # (B, C)
        logits = self.score(pooled)  # (B, num_labels); the head is linear, so pooling first is the same
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        return SequenceClassifierOutput(logits, loss)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """The trunk's FLOPs per token (the score head reads one position per sequence)."""
        return self.model.flops_per_token(seq_len, training)

    # ---- model directories (transformers loads them as LlamaForSequenceClassification) -----------
    def save_pretrained(self, directory: str | os.PathLike, overwrite: bool = False) -> None:
        """config.json (with the labels) + model.safetensors + checksum manifest, atomically."""
        from minillama.files import atomic_directory

        with atomic_directory(directory, "classifier", overwrite=overwrite) as tmp:
            io.write_classifier_dir(self.config, self.labels, self.state_dict(), tmp)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu"
                        ) -> MiniLlamaForSequenceClassification:
        """Strictly load a classifier written by `save_pretrained` or by transformers."""
        directory = Path(directory)
        config, labels = load_config(directory), io.classifier_labels(directory)
        with torch.device("meta"):
            model = cls(config, labels, init=False)
        io.load_strictly(model, io.read_state(directory), directory)
        model.model.rotary_emb.reset_inv_freq()  # a buffer computed from the config, not stored
        return model.to(device)
