"""A static (preallocated) key/value cache for incremental decoding.

Prefill writes the prompt's keys and values; each decode step appends one position. Memory is
allocated once, so decoding never reallocates. Each layer has its own pair of buffers, so a
compiled decode step updates them in place (a write into one big stacked buffer would make the
compiled graph copy all of it).

Two ways to read it back, chosen by the caller:
- growing view (eager): new keys go after the `length` filled slots, and attention reads those
  slots only;
- fixed-size view (`cache_position` given, for `torch.compile`): new keys go to the slots named by
  a tensor, and attention reads every slot under a mask, so no shape and no Python int changes from
  one step to the next and one compiled graph serves them all. The caller advances `length`.
"""

from __future__ import annotations

import torch

from minillama.model.config import ModelConfig


class KVCache:
    """Keys and values of every layer, each (B, K, max_seq_len, D), plus which slots hold real
    tokens (B, max_seq_len) once any padding has been seen."""

    def __init__(self, config: ModelConfig, batch_size: int, max_seq_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        shape = (batch_size, config.num_key_value_heads, max_seq_len, config.head_dim)
        layers = range(config.num_hidden_layers)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in layers]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in layers]
        self.key_valid: torch.Tensor | None = None  # (B, max_seq_len) bool, only with padding
        self.max_seq_len = max_seq_len
        self.length = 0  # slots filled

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               cache_position: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, K, T, D) and return the keys and values attention reads (B, K, S, D):
        growing view, after the filled slots, S = length + T; fixed-size view, at the slots
        `cache_position` (T,), S = max_seq_len."""
        keys, values = self.keys[layer], self.values[layer]
        if cache_position is not None:
            keys.index_copy_(2, cache_position, k)
            values.index_copy_(2, cache_position, v)
            return keys, values
        end = self.length + k.shape[2]
        keys[:, :, self.length:end] = k
        values[:, :, self.length:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def record_mask(self, attention_mask: torch.Tensor | None, num_new: int,
                    cache_position: torch.Tensor | None = None) -> torch.Tensor | None:
        """Note which of the `num_new` new slots are real tokens; return the validity of the slots
        attention reads (B, S), as in `update`, or None while no padding has been seen."""
        if attention_mask is not None and self.key_valid is None and not bool(attention_mask.all()):
            self.key_valid = torch.ones(self.batch_size, self.max_seq_len, dtype=torch.bool,
                                        device=self.keys[0].device)
        if self.key_valid is None:
            return None
        new = attention_mask.bool() if attention_mask is not None else \
            torch.ones(self.batch_size, num_new, dtype=torch.bool, device=self.key_valid.device)
        if cache_position is not None:
            self.key_valid.index_copy_(1, cache_position, new)
            return self.key_valid
        end = self.length + num_new
        self.key_valid[:, self.length:end] = new
        return self.key_valid[:, :end]

    def advance(self, num_new: int) -> None:
        self.length += num_new

    def reset(self) -> None:
        self.length = 0
        self.key_valid = None

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search): row i becomes old row index[i]."""
        for buffer in self.keys + self.values:
            buffer.copy_(buffer.index_select(0, index))
        if self.key_valid is not None:
            self.key_valid.copy_(self.key_valid.index_select(0, index))
