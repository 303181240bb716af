"""FlashAttention's kernels in Triton: the algorithm of `flash.py`, one program per tile.

Read `flash.py` first: the loops there are the programs here. Where `flash_forward` loops over
query tiles in Python, the forward kernel runs one program per (query tile, batch, query head), all
at once on the GPU; the loop over key tiles, the running max `m`, the running sum `l` and the
running output stay the same, in registers. Backward is FlashAttention-2's split: one kernel owns a
key tile and accumulates its dK, dV over every query tile (and over the G query heads that share
its K/V head, so grouped-query attention needs no atomics and no copies); another owns a query tile
and accumulates its dQ over every key tile. Both recompute the probabilities from the saved
log-sum-exp, as `flash_backward` does.

This module needs Triton (`pip install triton`); `flash_triton.py` imports it only when the kernels
run. Under TRITON_INTERPRET=1 Triton runs these same functions through NumPy on CPU tensors.

Shapes as in `flash.py`: B batch, H query heads, K key/value heads (G = H / K), T queries, S keys,
D head size (padded to BLOCK_D, a power of two: loads and stores mask the padding). Every tensor
comes with its strides, so q, k, v may be views (the model's transposed heads, a KV cache).
"""

import triton
import triton.language as tl


@triton.jit
def _load_rows(base, rows, n_rows, stride_row, dims, D, stride_dim, other):
    """The (len(rows), BLOCK_D) tile of a (n_rows, D) matrix; `other` beyond its edges."""
    pointers = base + rows[:, None] * stride_row + dims[None, :] * stride_dim
    return tl.load(pointers, mask=(rows[:, None] < n_rows) & (dims[None, :] < D), other=other)


@triton.jit
def _store_rows(base, tile, rows, n_rows, stride_row, dims, D, stride_dim):
    pointers = base + rows[:, None] * stride_row + dims[None, :] * stride_dim
    tl.store(pointers, tile.to(base.dtype.element_ty), mask=(rows[:, None] < n_rows) & (dims[None, :] < D))


@triton.jit
def _scores(q, k, rows, cols, T, S, offset, scale, mask_base, stride_mt, stride_ms,
            CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr):
    """S_ij = Q_i K_j^T / sqrt(D), (BLOCK_M, BLOCK_N), -inf where masked: `flash._scores`.
    Keys past the end (cols >= S) are masked too; query rows past the end are never stored."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    allowed = cols[None, :] < S
    if CAUSAL:  # query t (at position offset + t) sees keys up to it
        allowed = allowed & (cols[None, :] <= rows[:, None] + offset)
    if HAS_MASK:  # the mask as uint8, broadcast to (B, H, T, S) with zero strides: no copy
        inside = (rows[:, None] < T) & (cols[None, :] < S)
        tile = tl.load(mask_base + rows[:, None] * stride_mt + cols[None, :] * stride_ms, mask=inside, other=0)
        allowed = allowed & (tile != 0)
    return tl.where(allowed, s, float("-inf"))


@triton.jit
def forward_kernel(Q, K, V, Mask, Out, Lse,
                   stride_qb, stride_qh, stride_qt, stride_qd,
                   stride_kb, stride_kh, stride_ks, stride_kd,
                   stride_vb, stride_vh, stride_vs, stride_vd,
                   stride_mb, stride_mh, stride_mt, stride_ms,
                   stride_ob, stride_oh, stride_ot, stride_od,
                   H, G, T, S, D, offset, scale,
                   CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program: query tile `i` of head `h` in batch row `b` (the body of `flash_forward`'s
    outer loop). Writes O (B, H, T, D) and the log-sum-exp L (B, H, T), float32, contiguous."""
    i, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    kv = h // G  # the K/V head this query head reads: grouped-query attention by indexing, not copying
    rows = i * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + b * stride_qb + h * stride_qh, rows, T, stride_qt, dims, D, stride_qd, 0.0)
    k_base, v_base = K + b * stride_kb + kv * stride_kh, V + b * stride_vb + kv * stride_vh
    mask_base = Mask + b * stride_mb + h * stride_mh

    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max
    l = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp(score - m)
    o = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # running output, scaled by exp(-m)
    # Causal: key tiles wholly after the tile's last query (at position offset + last row) are
    # skipped, `flash._skipped`: the loop stops at that query's last key.
    end = tl.minimum(S, (i + 1) * BLOCK_M + offset) if CAUSAL else S
    for j0 in range(0, end, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, cols, S, stride_ks, dims, D, stride_kd, 0.0)
        v = _load_rows(v_base, cols, S, stride_vs, dims, D, stride_vd, 0.0)
        s = _scores(q, k, rows, cols, T, S, offset, scale, mask_base, stride_mt, stride_ms,
                    CAUSAL, HAS_MASK, PRECISION)
        # The online softmax, line for line as in flash_forward.
        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing so far stays at 0
        p = tl.exp(s - m_safe[:, None])  # exp(-inf) = 0 for masked scores
        rescale = tl.exp(m - m_safe)  # shrinks what was accumulated under the old maximum
        l = l * rescale + tl.sum(p, axis=1)
        o = o * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new

    # Rows that may attend to nothing have l = 0 and o = 0: they get O = 0 and L = -inf.
    seen = l > 0
    l_safe = tl.where(seen, l, 1.0)
    _store_rows(Out + b * stride_ob + h * stride_oh, o / l_safe[:, None], rows, T, stride_ot, dims, D, stride_od)
    lse = tl.where(seen, m + tl.log(l_safe), float("-inf"))
    tl.store(Lse + (b * H + h) * T + rows, lse, mask=rows < T)


@triton.jit
def backward_dkdv_kernel(Q, K, V, Mask, dO, Lse, Delta, dK, dV,
                         stride_qb, stride_qh, stride_qt, stride_qd,
                         stride_kb, stride_kh, stride_ks, stride_kd,
                         stride_vb, stride_vh, stride_vs, stride_vd,
                         stride_mb, stride_mh, stride_mt, stride_ms,
                         stride_db, stride_dh, stride_dt, stride_dd,
                         H, G, T, S, D, offset, scale,
                         CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program: key tile `j` of K/V head `kv` in batch row `b`. It walks every query tile of
    the G query heads that read this K/V head (`flash_backward`'s inner loop, with the group sum
    done here) and writes dK, dV (B, K, S, D), contiguous, once. dO has Q's shape (strides
    stride_d*); Lse and Delta are (B, H, T) float32, contiguous."""
    j, bk = tl.program_id(0), tl.program_id(1)
    K_heads = H // G
    b, kv = (bk // K_heads).to(tl.int64), (bk % K_heads).to(tl.int64)
    cols = j * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    k = _load_rows(K + b * stride_kb + kv * stride_kh, cols, S, stride_ks, dims, D, stride_kd, 0.0)
    v = _load_rows(V + b * stride_vb + kv * stride_vh, cols, S, stride_vs, dims, D, stride_vd, 0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # Causal: query tiles wholly before this key tile's first key (query t sees key j0 once
    # offset + t >= j0) see none of it: start at the tile that holds query j0 - offset.
    start = (tl.maximum(j * BLOCK_N - offset, 0) // BLOCK_M) * BLOCK_M if CAUSAL else 0
    for g in range(G):
        h = kv * G + g
        q_base, do_base = Q + b * stride_qb + h * stride_qh, dO + b * stride_db + h * stride_dh
        mask_base = Mask + b * stride_mb + h * stride_mh
        for i0 in range(start, T, BLOCK_M):
            rows = i0 + tl.arange(0, BLOCK_M)
            q = _load_rows(q_base, rows, T, stride_qt, dims, D, stride_qd, 0.0)
            do = _load_rows(do_base, rows, T, stride_dt, dims, D, stride_dd, 0.0)
            lse = tl.load(Lse + (b * H + h) * T + rows, mask=rows < T, other=float("inf"))
            lse = tl.where(lse == float("-inf"), float("inf"), lse)  # rows that saw nothing: P = 0
            delta = tl.load(Delta + (b * H + h) * T + rows, mask=rows < T, other=0.0)
            s = _scores(q, k, rows, cols, T, S, offset, scale, mask_base, stride_mt, stride_ms,
                        CAUSAL, HAS_MASK, PRECISION)
            p = tl.exp(s - lse[:, None])  # P_ij recomputed from the log-sum-exp
            dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)  # dV_j += P_ij^T dO_i
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # dP_ij = dO_i V_j^T
            ds = p * (dp - delta[:, None])  # dS_ij = P_ij * (dP_ij - D_i)
            dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)  # dK_j += dS_ij^T Q_i
    S_base = (b * K_heads + kv) * S * D  # dK, dV are contiguous (B, K, S, D)
    _store_rows(dK + S_base, dk * scale, cols, S, D, dims, D, 1)
    _store_rows(dV + S_base, dv, cols, S, D, dims, D, 1)


@triton.jit
def backward_dq_kernel(Q, K, V, Mask, dO, Lse, Delta, dQ,
                       stride_qb, stride_qh, stride_qt, stride_qd,
                       stride_kb, stride_kh, stride_ks, stride_kd,
                       stride_vb, stride_vh, stride_vs, stride_vd,
                       stride_mb, stride_mh, stride_mt, stride_ms,
                       stride_db, stride_dh, stride_dt, stride_dd,
                       H, G, T, S, D, offset, scale,
                       CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program: query tile `i` of head `h` in batch row `b`; walks the key tiles it sees, as
    the forward does, and writes dQ (B, H, T, D), contiguous."""
    i, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    kv = h // G
    rows = i * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + b * stride_qb + h * stride_qh, rows, T, stride_qt, dims, D, stride_qd, 0.0)
    do = _load_rows(dO + b * stride_db + h * stride_dh, rows, T, stride_dt, dims, D, stride_dd, 0.0)
    lse = tl.load(Lse + (b * H + h) * T + rows, mask=rows < T, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    delta = tl.load(Delta + (b * H + h) * T + rows, mask=rows < T, other=0.0)
    k_base, v_base = K + b * stride_kb + kv * stride_kh, V + b * stride_vb + kv * stride_vh
    mask_base = Mask + b * stride_mb + h * stride_mh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    end = tl.minimum(S, (i + 1) * BLOCK_M + offset) if CAUSAL else S
    for j0 in range(0, end, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, cols, S, stride_ks, dims, D, stride_kd, 0.0)
        v = _load_rows(v_base, cols, S, stride_vs, dims, D, stride_vd, 0.0)
        s = _scores(q, k, rows, cols, T, S, offset, scale, mask_base, stride_mt, stride_ms,
                    CAUSAL, HAS_MASK, PRECISION)
        p = tl.exp(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)  # dQ_i += dS_ij K_j
    _store_rows(dQ + (b * H + h) * T * D, dq * scale, rows, T, D, dims, D, 1)
