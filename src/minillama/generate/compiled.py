"""`decode_one_token` through torch.compile.

The step runs for every generated token, so what matters is one graph reused by every step, with
no recompilation as the sequence grows. The step uses the cache's fixed-size view: it writes its
key/value at slots given as a tensor and attends over all of the cache's slots under a mask, so
shapes never change and no Python int that changes per step is read inside the graph. The cache is
sized to the model's context so that later calls reuse the same graph too.
"""

from __future__ import annotations

import torch

from minillama.model import KVCache, MiniLlama


def _fixed_size_step(model: MiniLlama, token: torch.Tensor, position_ids: torch.Tensor,
                     cache_position: torch.Tensor, cache: KVCache) -> torch.Tensor:
    return model(token, position_ids=position_ids, cache=cache, cache_position=cache_position,
                 logits_to_keep=1).logits[:, -1]


class CompiledDecodeStep:
    """A drop-in for `decode_one_token`, owned by its caller: `step(model, token, position_ids,
    cache)` -> logits (B, V). `cache_length(model, needed)` says how long a cache to allocate.

    Compiled code is kept by torch per function, so a second `CompiledDecodeStep` for a model of
    the same shapes reuses the first one's graph instead of compiling again."""

    def __init__(self) -> None:
        self._step = torch.compile(_fixed_size_step, fullgraph=True, dynamic=False)
        self._slots: torch.Tensor | None = None  # 0 .. cache length - 1, built once per cache shape

    def cache_length(self, model: MiniLlama, needed: int) -> int:
        return max(needed, model.config.max_position_embeddings)

    def __call__(self, model: MiniLlama, token: torch.Tensor, position_ids: torch.Tensor,
                 cache: KVCache) -> torch.Tensor:
        if self._slots is None or len(self._slots) != cache.max_seq_len or self._slots.device != token.device:
            self._slots = torch.arange(cache.max_seq_len, device=token.device)
        start = cache.length  # read here, outside the graph
        logits = self._step(model, token, position_ids, self._slots[start:start + token.shape[1]], cache)
        cache.advance(token.shape[1])
        return logits
