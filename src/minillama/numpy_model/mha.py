"""The seed notes' exercise: `torch.nn.functional.multi_head_attention_forward` in NumPy.

Plain multi-head attention with packed input projections and no biases, as
`torch.nn.MultiheadAttention(embed_dim, num_heads, bias=False)` computes it, with torch's
conventions: inputs (L, N, E) sequence-first (or (N, L, E) with batch_first=True); a bool mask is
True where attention is *not* allowed, a float mask is added to the scores; the returned weights
are (N, L, S), averaged over heads (or (N, heads, L, S)).
"""

from __future__ import annotations

import math

import numpy as np


def multi_head_attention_forward(query: np.ndarray, key: np.ndarray, value: np.ndarray, embed_dim: int,
                                 num_heads: int, in_proj_weight: np.ndarray, out_proj_weight: np.ndarray,
                                 *, attn_mask: np.ndarray | None = None,
                                 key_padding_mask: np.ndarray | None = None, need_weights: bool = True,
                                 average_attn_weights: bool = True,
                                 batch_first: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """query (L, N, E), key and value (S, N, E); in_proj_weight (3E, E) = [W_q; W_k; W_v];
    out_proj_weight (E, E). Returns (output (L, N, E), attention weights or None).

    attn_mask: (L, S) or (N * num_heads, L, S); key_padding_mask: (N, S), True = padding.
    """
    if batch_first:
        query, key, value = (np.swapaxes(a, 0, 1) for a in (query, key, value))
    L, N, E = query.shape
    S = key.shape[0]
    if E != embed_dim or E % num_heads:
        raise ValueError(f"query has embedding size {E}; expected embed_dim={embed_dim}, divisible by "
                         f"num_heads={num_heads}")
    head_dim = E // num_heads
    w_q, w_k, w_v = np.split(np.asarray(in_proj_weight), 3)

    def split_heads(x: np.ndarray, weight: np.ndarray) -> np.ndarray:  # (len, N, E) -> (N heads, len, hd)
        return (x @ weight.T).reshape(x.shape[0], N * num_heads, head_dim).transpose(1, 0, 2)

    q, k, v = split_heads(query, w_q), split_heads(key, w_k), split_heads(value, w_v)
    scores = (q * math.sqrt(1.0 / head_dim)) @ k.transpose(0, 2, 1)  # (N heads, L, S)
    scores = scores + _additive_mask(attn_mask, key_padding_mask, N, num_heads, L, S, scores.dtype)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights = scores / scores.sum(axis=-1, keepdims=True)
    out = (weights @ v).transpose(1, 0, 2).reshape(L, N, E) @ np.asarray(out_proj_weight).T  # (L, N, E)
    if batch_first:
        out = out.swapaxes(0, 1)
    if not need_weights:
        return out, None
    weights = weights.reshape(N, num_heads, L, S)
    return out, weights.mean(axis=1) if average_attn_weights else weights


def _additive_mask(attn_mask, key_padding_mask, N, num_heads, L, S, dtype) -> np.ndarray | float:
    """Both masks as one float mask broadcastable to (N * num_heads, L, S): 0 or -inf (or the
    float mask's own values)."""
    total: np.ndarray | float = 0.0
    for mask, is_padding in ((attn_mask, False), (key_padding_mask, True)):
        if mask is None:
            continue
        mask = np.asarray(mask)
        if is_padding:  # (N, S) -> (N * heads, 1, S): row n * heads + h belongs to batch row n
            mask = np.repeat(mask[:, None, :], num_heads, axis=0)
        if mask.dtype == bool:
            mask = np.where(mask, -np.inf, 0.0)
        total = total + mask.astype(dtype)
    return total
