"""The server's one static KV cache, shared by every sequence being decoded (continuous batching).

A `KVCache` of (max_batch, K, capacity, D) per layer is allocated once. Its first n rows are live, one
per sequence, and every row writes its next key into the same column L, so one decode step serves
all sequences whatever their lengths. Row r's tokens sit right-aligned in columns [L - len_r, L) and
`key_valid` hides the columns before them: the left padding of `generate`'s batches, except that
the batch changes while it runs:

- join: new prompts are prefilled together in a cache of their own (left-padded), and their keys
  are copied into free rows, right-aligned at L (live rows shift right first if a prompt is longer);
- leave: the last live row moves into the hole, so the live rows stay the first n;
- full: columns no live row uses any more are dropped from the left.

Keys carry the rotary positions they were computed at, so moving them between columns changes
nothing; each row's next position is its own token count, `lengths[r]`.
"""

from __future__ import annotations

import torch

from minillama.generate import new_cache
from minillama.model import KVCache, MiniLlama


class SlotCache:
    """Rows of a static KV cache handed to sequences as they come and go."""

    def __init__(self, model: MiniLlama, max_batch: int, capacity: int):
        self.config = model.config
        self.cache = new_cache(model, max_batch, capacity)
        device = self.cache.keys[0].device
        self.cache.key_valid = torch.zeros(max_batch, capacity, dtype=torch.bool, device=device)
        self.lengths: list[int] = []  # tokens held by each live row = its next position
        self.length = 0  # L: columns in use (the shared write position)

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def free(self) -> int:
        return self.cache.batch_size - self.rows

    def view(self) -> KVCache:
        """A KVCache over the live rows (n, ...) sharing this cache's memory, for one model call."""
        n, big = self.rows, self.cache
        view = KVCache(self.config, n, 0, dtype=big.keys[0].dtype, device=big.keys[0].device)
        view.keys, view.values = [k[:n] for k in big.keys], [v[:n] for v in big.values]
        view.key_valid = big.key_valid[:n]
        view.max_seq_len, view.length = big.max_seq_len, self.length
        return view

    def advanced(self) -> None:
        """Every live row got one more token (after a decode step through `view()`)."""
        self.length += 1
        self.lengths = [n + 1 for n in self.lengths]

    def add(self, prefilled: KVCache, attention_mask: torch.Tensor) -> None:
        """Take in prompts prefilled into their own cache: k rows, left-padded as attention_mask (k, P)."""
        k, P = attention_mask.shape
        if k > self.free:
            raise ValueError(f"{k} new rows do not fit: {self.free} of {self.cache.batch_size} are free")
        if P > self.length:
            self._shift(P - self.length)
        rows, start, big = slice(self.rows, self.rows + k), self.length - P, self.cache
        for ours, theirs in zip(big.keys + big.values, prefilled.keys + prefilled.values):
            ours[rows, :, start:self.length] = theirs[:, :, :P]
        big.key_valid[rows, :start] = False
        big.key_valid[rows, start:self.length] = attention_mask.bool()
        self.lengths += attention_mask.sum(-1).tolist()

    def remove(self, row: int) -> None:
        """Free `row`; the last live row takes its place (so row indices after this call change)."""
        last, big, L = self.rows - 1, self.cache, self.length
        if row != last:
            for buffer in big.keys + big.values:
                buffer[row, :, :L] = buffer[last, :, :L]
            big.key_valid[row, :L] = big.key_valid[last, :L]
            self.lengths[row] = self.lengths[last]
        self.lengths.pop()
        if not self.lengths:
            self.length = 0

    def make_room(self) -> None:
        """Before a decode step: when the next column is past the end, or more than half the columns
        are padding every live row ignores (attention would read them for nothing), drop those."""
        unused = self.length - max(self.lengths, default=0)
        if unused and (self.length >= self.cache.max_seq_len or unused > self.length // 2):
            self._shift(-unused)

    def _shift(self, offset: int) -> None:
        """Move the live rows' columns right (offset > 0, padding comes in on the left) or left."""
        n, L, big = self.rows, self.length, self.cache
        src, dst = slice(max(0, -offset), L), slice(max(0, offset), L + offset)
        for buffer in big.keys + big.values:
            buffer[:n, :, dst] = buffer[:n, :, src].clone()
        big.key_valid[:n, dst] = big.key_valid[:n, src].clone()
        if offset > 0:
            big.key_valid[:n, :offset] = False
        self.length = L + offset
