"""`decode_one_token` through torch.compile.

The step runs for every generated token, so what matters is one graph reused by every step, with
no recompilation as the sequence grows. Two ways, depending on what the model offers:

- fixed-size view (a model whose forward takes `cache_position`): each step writes its key/value
  at a slot given as a tensor and attends over all of the cache's slots under a mask, so shapes
  never change and no Python int that changes per step is read. One static graph; the cache is
  sized to the model's context so that later calls reuse it too.
- growing view (otherwise): attention spans the filled slots, whose count is a Python int on the
  cache, so the graph is compiled with dynamic shapes and that int unspecialised. This works, but
  the slice writes into the cache's stacked buffer make the compiled step copy it, so expect no
  speed-up over eager; see docs/generation.md.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch._dynamo

from minillama.generate.decode import DecodeFn, decode_one_token
from minillama.model import KVCache, MiniLlama


def _fixed_size_step(model: MiniLlama, token: torch.Tensor, position_ids: torch.Tensor,
                     cache_position: torch.Tensor, cache: KVCache) -> torch.Tensor:
    return model(token, position_ids=position_ids, cache=cache, cache_position=cache_position,
                 logits_to_keep=1).logits[:, -1]


@functools.cache
def _slots(max_seq_len: int, device: torch.device) -> torch.Tensor:
    return torch.arange(max_seq_len, device=device)


def supports_fixed_size_view() -> bool:
    return "cache_position" in inspect.signature(MiniLlama.forward).parameters


@functools.cache
def compiled_decode() -> DecodeFn:
    """A drop-in for `decode_one_token` (built once, shared by every model). Its attribute
    `cache_length(model, needed)` says how long a cache to allocate."""
    if supports_fixed_size_view():
        step = torch.compile(_fixed_size_step, fullgraph=True, dynamic=False)

        def decode(model, token, position_ids, cache):
            start = cache.length  # read here, outside the graph
            slots = _slots(cache.max_seq_len, token.device)[start:start + token.shape[1]]
            logits = step(model, token, position_ids, slots, cache)
            cache.advance(token.shape[1])
            return logits

        decode.cache_length = lambda model, needed: max(needed, model.config.max_position_embeddings)
        return decode

    growing = torch.compile(decode_one_token, dynamic=True)

    def decode(model, token, position_ids, cache):
        with torch._dynamo.config.patch(allow_unspec_int_on_nn_module=True):
            return growing(model, token, position_ids, cache)

    decode.cache_length = lambda model, needed: needed
    return decode
