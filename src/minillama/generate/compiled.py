"""`decode_one_token` through torch.compile.

The step runs for every generated token, so what matters is one graph reused by every step, with
no recompilation as the sequence grows. The step uses the cache's fixed-size view: it writes its
key/value at slots given as a tensor and attends over all of the cache's slots under a mask, so
shapes never change and no Python int that changes per step is read inside the graph. The cache is
sized to the model's context so that later calls reuse the same graph too.
"""

from __future__ import annotations

import functools

import torch

from minillama.generate.decode import DecodeFn
from minillama.model import KVCache, MiniLlama


def _fixed_size_step(model: MiniLlama, token: torch.Tensor, position_ids: torch.Tensor,
                     cache_position: torch.Tensor, cache: KVCache) -> torch.Tensor:
    return model(token, position_ids=position_ids, cache=cache, cache_position=cache_position,
                 logits_to_keep=1).logits[:, -1]


@functools.cache
def _slots(max_seq_len: int, device: torch.device) -> torch.Tensor:
    return torch.arange(max_seq_len, device=device)


@functools.cache
def compiled_decode() -> DecodeFn:
    """A drop-in for `decode_one_token` (built once, shared by every model). Its attribute
    `cache_length(model, needed)` says how long a cache to allocate."""
    step = torch.compile(_fixed_size_step, fullgraph=True, dynamic=False)

    def decode(model, token, position_ids, cache):
        start = cache.length  # read here, outside the graph
        slots = _slots(cache.max_seq_len, token.device)[start:start + token.shape[1]]
        logits = step(model, token, position_ids, slots, cache)
        cache.advance(token.shape[1])
        return logits

    decode.cache_length = lambda model, needed: max(needed, model.config.max_position_embeddings)
    return decode
