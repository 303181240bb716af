"""FlashAttention's forward in NumPy, for reading beside `minillama/model/flash.py`: the same
tiles, the same running max `m`, running sum `l` and output `O`, the same log-sum-exp `L`.

Shapes: B batch, H query heads, K key/value heads (G = H / K query heads share one), T queries,
S keys, D head size.
"""

from __future__ import annotations

import math

import numpy as np


def flash_attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None,
                            causal: bool = False, block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(O (B, H, T, D), L (B, H, T)) for q (B, H, T, D), k, v (B, K, S, D); mask bool broadcastable
    to (B, H, T, S), True = may attend; causal: query t sits at position S - T + t. A row that may
    attend to nothing gets O = 0 and L = -inf."""
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    G, scale, offset = H // K, 1.0 / math.sqrt(D), S - T
    q = q.reshape(B, K, G, T, D).astype(np.float32)
    k, v = k[:, :, None].astype(np.float32), v[:, :, None].astype(np.float32)  # (B, K, 1, S, D)
    if mask is not None:  # (B|1, H|1, T|1, S|1) -> (B|1, K|1, G|1, T|1, S|1)
        mask = mask.reshape(mask.shape[0], *((K, G) if mask.shape[1] > 1 else (1, 1)), *mask.shape[2:])
    out = np.zeros((B, K, G, T, D), dtype=np.float32)
    lse = np.full((B, K, G, T), -np.inf, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i0 in range(0, T, block):
            q_i = q[..., i0:i0 + block, :]
            bq = q_i.shape[-2]
            m = np.full((B, K, G, bq, 1), -np.inf, dtype=np.float32)
            l = np.zeros_like(m)
            o = np.zeros((B, K, G, bq, D), dtype=np.float32)
            for j0 in range(0, S, block):
                if causal and j0 > i0 + bq - 1 + offset:  # the whole key tile is in the future
                    break
                s = q_i @ k[..., j0:j0 + block, :].swapaxes(-1, -2) * scale  # (B, K, G, Bq, Bk)
                allowed = np.ones(s.shape[-2:], dtype=bool)
                if causal:
                    rows = np.arange(i0, i0 + bq)[:, None] + offset
                    allowed = np.arange(j0, j0 + s.shape[-1])[None, :] <= rows
                if mask is not None:
                    rows = slice(i0, i0 + bq) if mask.shape[-2] > 1 else slice(None)
                    cols = slice(j0, j0 + s.shape[-1]) if mask.shape[-1] > 1 else slice(None)
                    allowed = allowed & mask[..., rows, cols]
                s = np.where(allowed, s, -np.inf)
                m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
                m_safe = np.where(np.isinf(m_new), 0.0, m_new).astype(np.float32)
                p = np.exp(s - m_safe)  # masked scores: exp(-inf) = 0
                rescale = np.exp(m - m_safe)
                l = l * rescale + p.sum(axis=-1, keepdims=True)
                o = o * rescale + p @ v[..., j0:j0 + block, :]
                m = m_new
            out[..., i0:i0 + bq, :] = np.where(l > 0, o / l, 0.0)
            lse[..., i0:i0 + bq] = (m + np.log(l))[..., 0]
    return out.reshape(B, H, T, D), lse.reshape(B, H, T)
