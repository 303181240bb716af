"""The attention mask and positions of a batch: causal, with left padding hidden and positions
counting real tokens only, over a KV cache's growing or fixed-size view. Shared by the causal LM
and the classifier."""

from __future__ import annotations

import torch

from minillama.model.cache import KVCache


def prepare_attention(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      position_ids: torch.Tensor | None, cache: KVCache | None,
                      cache_position: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The bool attention mask (B, 1, T, S), or None when plain causal attention is exact, and the
    positions (B, T). input_ids (B, T); attention_mask (B, T) 1 = token; with left padding,
    positions count real tokens only. With a cache, past keys are attended too (its growing view,
    or every slot when `cache_position` (T,) names the slots to write: the fixed-size view)."""
    B, T = input_ids.shape
    device = input_ids.device
    fixed_size = cache_position is not None
    # The fixed-size view reads no Python int that changes per step (a compiled step would recompile)
    past = cache.length if cache is not None and not fixed_size else 0
    if cache is not None and not fixed_size and past + T > cache.max_seq_len:
        raise ValueError(f"the KV cache holds {cache.max_seq_len} tokens; {past} + {T} do not fit, "
                         "allocate a longer cache")
    query_slots = cache_position if fixed_size else torch.arange(past, past + T, device=device)  # (T,)
    key_valid = None  # (B, S): which key slots are real tokens
    if cache is not None:
        key_valid = cache.record_mask(attention_mask, T, cache_position)
    elif attention_mask is not None and not bool(attention_mask.all()):
        key_valid = attention_mask.bool()
    if position_ids is None:
        if key_valid is None:
            position_ids = query_slots.expand(B, T)
        else:
            position_ids = (key_valid.long().cumsum(-1) - 1).clamp(min=0)[:, query_slots]
    if key_valid is None and not fixed_size and (past == 0 or T == 1):
        return None, position_ids  # plain causal, or one query that sees every cached key
    S = cache.max_seq_len if fixed_size else past + T
    key_slots = torch.arange(S, device=device)
    allowed = key_slots <= query_slots[:, None]  # (T, S) causal
    if key_valid is not None:
        # Padding rows attend to themselves only, so no row is empty (an empty row gives NaN).
        allowed = allowed & (key_valid[:, None, :] | (key_slots == query_slots[:, None]))
    return allowed.expand(B, T, S).unsqueeze(1), position_ids
