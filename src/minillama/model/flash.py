"""FlashAttention written out: exact attention, tiled so the (T x S) score matrix never exists.

Forward (Dao et al. 2022, Algorithm 1 / FlashAttention-2's loop order): for each block of queries
Q_i, walk the blocks of keys and values K_j, V_j and keep three running quantities per query row:
the largest score so far `m`, the sum of exp(score - m) so far `l`, and the output so far `O`
(a weighted sum of value rows, scaled by the same exp(-m)). When a new block raises the maximum
from m to m', everything accumulated so far is rescaled by exp(m - m'): the online softmax. At the
end O / l is the attention output, and L = m + log l is each row's log-sum-exp, all that backward
needs of the softmax.

Backward (Algorithm 2): instead of storing the probabilities P = softmax(Q K^T / sqrt(D)), which
is what makes attention's memory quadratic, recompute them block by block from Q, K and the saved
L: P_ij = exp(S_ij - L_i). With D_i = rowsum(dO_i * O_i):
    dV_j += P_ij^T dO_i      dP_ij = dO_i V_j^T      dS_ij = P_ij * (dP_ij - D_i)
    dQ_i += dS_ij K_j / sqrt(D)      dK_j += dS_ij^T Q_i / sqrt(D)

Memory is linear in the sequence length: a (block x block) tile at a time. On a CPU the Python loop
over tiles is slower than torch's fused kernels (measured in benchmarks/bench_attention.py); the
point here is to read the algorithm, check it against SDPA, and train with it.

Shapes: B batch, H query heads, K key/value heads (H = G * K: grouped-query attention, the G
query heads of a group read one K/V head, broadcast and never copied), T queries, S keys, D head
size; Bq, Bk the block sizes.
"""

from __future__ import annotations

import math

import torch

BLOCK = 64  # queries / keys per tile


def _tiles(n: int, block: int) -> range:
    return range(0, n, block)


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 arithmetic (float64 for float64 inputs, e.g. gradcheck), whatever the input's dtype."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _scores(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, causal: bool, offset: int,
            i0: int, j0: int, scale: float) -> torch.Tensor:
    """S_ij: (B, K, G, Bq, Bk) scores of query tile i against key tile j, -inf where masked.
    q: (B, K, G, Bq, D); k: (B, K, Bk, D); mask: bool, broadcastable to (B, H, T, S), True = may attend."""
    s = q @ k.unsqueeze(2).transpose(-1, -2) * scale  # (B, K, G, Bq, Bk)
    if causal:  # query t (at position offset + t) sees keys up to it
        rows = torch.arange(i0, i0 + q.shape[-2], device=q.device)[:, None] + offset
        cols = torch.arange(j0, j0 + k.shape[-2], device=q.device)[None, :]
        s = s.masked_fill(cols > rows, float("-inf"))
    if mask is not None:  # its tile (B|1, H|1, Bq|1, Bk|1), the query heads split into (K, G) or kept at 1
        rows = slice(i0, i0 + q.shape[-2]) if mask.shape[-2] > 1 else slice(None)
        cols = slice(j0, j0 + k.shape[-2]) if mask.shape[-1] > 1 else slice(None)
        tile = mask[..., rows, cols]
        heads = (1, 1) if tile.shape[1] == 1 else (k.shape[1], tile.shape[1] // k.shape[1])
        s = s.masked_fill(~tile.reshape(tile.shape[0], *heads, *tile.shape[-2:]), float("-inf"))
    return s


def _skipped(causal: bool, offset: int, i0: int, bq: int, j0: int) -> bool:
    """A key tile that lies entirely after the last query of the tile sees nothing: skip it."""
    return causal and j0 > i0 + bq - 1 + offset


def flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                  causal: bool = False, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output O (B, H, T, D) and log-sum-exp L (B, H, T), in float32 arithmetic.
    q (B, H, T, D); k, v (B, K, S, D); causal: query t sits at position S - T + t (a cache's view);
    rows that may attend to nothing get O = 0 and L = -inf."""
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    scale, offset, acc = 1.0 / math.sqrt(D), S - T, _accumulation_dtype(q)
    qg = q.to(acc).view(B, K, H // K, T, D)  # the G query heads of each K/V head, side by side
    kf, vf = k.to(acc), v.to(acc)
    out = torch.empty(B, K, H // K, T, D, dtype=acc, device=q.device)
    lse = torch.empty(B, K, H // K, T, dtype=acc, device=q.device)
    for i0 in _tiles(T, block):
        q_i = qg[..., i0:i0 + block, :]
        bq = q_i.shape[-2]
        m = torch.full((B, K, H // K, bq, 1), float("-inf"), dtype=acc, device=q.device)  # running max
        l = torch.zeros_like(m)  # running sum of exp(score - m)
        o = torch.zeros(B, K, H // K, bq, D, dtype=acc, device=q.device)  # running output, scaled by exp(-m)
        for j0 in _tiles(S, block):
            if _skipped(causal, offset, i0, bq, j0):
                break
            s = _scores(q_i, kf[:, :, j0:j0 + block], mask, causal, offset, i0, j0, scale)
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            m_safe = torch.where(torch.isinf(m_new), 0.0, m_new)  # a row with nothing so far stays at 0
            p = torch.exp(s - m_safe)  # (B, K, G, Bq, Bk); exp(-inf) = 0 for masked scores
            rescale = torch.exp(m - m_safe)  # shrinks what was accumulated under the old maximum
            l = l * rescale + p.sum(dim=-1, keepdim=True)
            o = o * rescale + p @ vf[:, :, j0:j0 + block].unsqueeze(2)
            m = m_new
        out[..., i0:i0 + bq, :] = torch.where(l > 0, o / l, 0.0)
        lse[..., i0:i0 + bq] = (m + torch.log(l)).squeeze(-1)  # -inf for rows that saw nothing
    return out.view(B, H, T, D).to(q.dtype), lse.view(B, H, T)


def flash_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   out: torch.Tensor, lse: torch.Tensor, mask: torch.Tensor | None, causal: bool,
                   block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV by recomputing each tile's probabilities from the saved log-sum-exp."""
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    G, scale, offset, acc = H // K, 1.0 / math.sqrt(D), S - T, _accumulation_dtype(q)
    qg = q.to(acc).view(B, K, G, T, D)
    do = grad_out.to(acc).view(B, K, G, T, D)
    lse_g = lse.view(B, K, G, T, 1)
    lse_g = torch.where(torch.isinf(lse_g), float("inf"), lse_g)  # rows that saw nothing: P = 0
    delta = (do * out.to(acc).view(B, K, G, T, D)).sum(dim=-1, keepdim=True)  # D_i = rowsum(dO * O)
    kf, vf = k.to(acc), v.to(acc)
    dq = torch.zeros_like(qg)
    dk, dv = torch.zeros_like(kf), torch.zeros_like(vf)
    for j0 in _tiles(S, block):
        k_j, v_j = kf[:, :, j0:j0 + block], vf[:, :, j0:j0 + block]
        for i0 in _tiles(T, block):
            q_i = qg[..., i0:i0 + block, :]
            if _skipped(causal, offset, i0, q_i.shape[-2], j0):
                continue
            rows = slice(i0, i0 + q_i.shape[-2])
            p = torch.exp(_scores(q_i, k_j, mask, causal, offset, i0, j0, scale) - lse_g[..., rows, :])
            do_i = do[..., rows, :]
            dv[:, :, j0:j0 + block] += (p.transpose(-1, -2) @ do_i).sum(dim=2)  # summed over the group
            dp = do_i @ v_j.unsqueeze(2).transpose(-1, -2)  # (B, K, G, Bq, Bk)
            ds = p * (dp - delta[..., rows, :])
            dq[..., rows, :] += ds @ k_j.unsqueeze(2) * scale
            dk[:, :, j0:j0 + block] += (ds.transpose(-1, -2) @ q_i).sum(dim=2) * scale
    return dq.view(B, H, T, D).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class FlashAttention(torch.autograd.Function):
    """softmax(Q K^T / sqrt(D) + mask) V with the memory of a few tiles, forward and backward.
    `passes` = (forward, backward): this module's flash_forward and flash_backward, or the same
    two functions of another implementation (the Triton kernels' in flash_triton.py)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, causal, block, passes):
        out, lse = passes[0](q, k, v, mask, causal, block)
        ctx.save_for_backward(q, k, v, out, lse)  # the log-sum-exp: no probability matrix is kept
        ctx.mask, ctx.causal, ctx.block, ctx.backward_pass = mask, causal, block, passes[1]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.backward_pass(grad_out, q, k, v, out, lse, ctx.mask, ctx.causal, ctx.block)
        return dq, dk, dv, None, None, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                    causal: bool = False, block: int = BLOCK) -> torch.Tensor:
    """Exact attention, tiled (see the module docstring): q (B, H, T, D), k, v (B, K, S, D) ->
    (B, H, T, D). mask: bool, broadcastable to (B, H, T, S) (a key padding mask is (B, 1, 1, S)),
    True = may attend; causal: query t sits at position S - T + t."""
    return FlashAttention.apply(q, k, v, mask, causal, block, (flash_forward, flash_backward))
