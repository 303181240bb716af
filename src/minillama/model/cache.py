"""A static (preallocated) key/value cache for incremental decoding.

Prefill writes the prompt's keys and values; each decode step appends one position. Memory is
allocated once, so decoding never reallocates and `torch.compile` sees fixed buffers.
"""

from __future__ import annotations

import torch
from torch import nn

from minillama.model.config import ModelConfig


class KVCache(nn.Module):
    """Keys and values of every layer: (layers, B, K, max_seq_len, D), plus which slots hold
    real tokens (B, max_seq_len) once any padding has been seen."""

    def __init__(self, config: ModelConfig, batch_size: int, max_seq_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_seq_len, config.head_dim)
        self.register_buffer("keys", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("values", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.key_valid: torch.Tensor | None = None  # (B, max_seq_len) bool, only with padding
        self.max_seq_len = max_seq_len
        self.length = 0  # slots filled

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, K, T, D) after the filled slots; return all filled (B, K, length + T, D)."""
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def record_mask(self, attention_mask: torch.Tensor | None, num_new: int) -> torch.Tensor | None:
        """Note which of the next `num_new` slots are real tokens; return the validity of all
        slots up to them (B, length + num_new), or None while no padding has been seen."""
        end = self.length + num_new
        if attention_mask is not None and self.key_valid is None and not bool(attention_mask.all()):
            self.key_valid = torch.ones(self.batch_size, self.max_seq_len, dtype=torch.bool,
                                        device=self.keys.device)
        if self.key_valid is None:
            return None
        new = attention_mask.bool() if attention_mask is not None else True
        self.key_valid[:, self.length:end] = new
        return self.key_valid[:, :end]

    def advance(self, num_new: int) -> None:
        self.length += num_new

    def reset(self) -> None:
        self.length = 0
        self.key_valid = None

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search): row i becomes old row index[i]."""
        self.keys.copy_(self.keys.index_select(1, index))
        self.values.copy_(self.values.index_select(1, index))
        if self.key_valid is not None:
            self.key_valid.copy_(self.key_valid.index_select(0, index))
