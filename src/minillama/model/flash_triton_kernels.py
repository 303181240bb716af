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
run. With TRITON_INTERPRET=1 in the environment when Triton is imported, Triton runs these same
functions through NumPy, on CPU tensors too.

Shapes as in `flash.py`: B batch, H query heads, K key/value heads (G = H / K), T queries, S keys,
D head size (padded to BLOCK_D, a power of two: loads and stores mask the padding). Every (B, heads,
rows, D) tensor comes with its four strides, a tuple, so q, k, v may be views (the model's
transposed heads, a KV cache); the mask's are those of its (B, H, T, S) broadcast.
"""

import triton
import triton.language as tl


@triton.jit
def _head(base, strides, b, h):
    """Where head `h` of batch row `b` starts in a (B, heads, rows, D) tensor."""
    return base + b * strides[0] + h * strides[1]


@triton.jit
def _load_rows(head, strides, rows, n_rows, dims, D, other):
    """The (len(rows), BLOCK_D) tile of one head's (n_rows, D) matrix; `other` beyond its edges."""
    pointers = head + rows[:, None] * strides[2] + dims[None, :] * strides[3]
    return tl.load(pointers, mask=(rows[:, None] < n_rows) & (dims[None, :] < D), other=other)


@triton.jit
def _store_rows(head, strides, tile, rows, n_rows, dims, D):
    pointers = head + rows[:, None] * strides[2] + dims[None, :] * strides[3]
    tl.store(pointers, tile.to(head.dtype.element_ty), mask=(rows[:, None] < n_rows) & (dims[None, :] < D))


@triton.jit
def _scores(q, k, rows, cols, T, S, offset, scale, mask_head, mask_strides,
            CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr):
    """S_ij = Q_i K_j^T / sqrt(D), (BLOCK_M, BLOCK_N), -inf where masked: `flash._scores`.
    Keys past the end (cols >= S) are masked too; query rows past the end are never stored."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    allowed = cols[None, :] < S
    if CAUSAL:  # query t (at position offset + t) sees keys up to it
        allowed = allowed & (cols[None, :] <= rows[:, None] + offset)
    if HAS_MASK:  # the mask as uint8, broadcast to (B, H, T, S) with zero strides: no copy
        inside = (rows[:, None] < T) & (cols[None, :] < S)
        pointers = mask_head + rows[:, None] * mask_strides[2] + cols[None, :] * mask_strides[3]
        allowed = allowed & (tl.load(pointers, mask=inside, other=0) != 0)
    return tl.where(allowed, s, float("-inf"))


@triton.jit
def _load_lse_delta(Lse, Delta, b, h, H, T, rows):
    """L_i and D_i = rowsum(dO_i * O_i) of a query tile, from (B, H, T) float32. Rows that saw
    nothing (L = -inf) and rows past the end get L = +inf: P = exp(S - L) = 0 there."""
    at = (b * H + h) * T + rows
    lse = tl.load(Lse + at, mask=rows < T, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    return lse, tl.load(Delta + at, mask=rows < T, other=0.0)


@triton.jit
def forward_kernel(Q, K, V, Mask, Out, Lse, q_strides, k_strides, v_strides, mask_strides, out_strides,
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
    q = _load_rows(_head(Q, q_strides, b, h), q_strides, rows, T, dims, D, 0.0)
    k_head, v_head = _head(K, k_strides, b, kv), _head(V, v_strides, b, kv)
    mask_head = _head(Mask, mask_strides, b, h)

    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max
    l = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp(score - m)
    o = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # running output, scaled by exp(-m)
    # Causal: key tiles wholly after the tile's last query (at position offset + last row) are
    # skipped, `flash._skipped`: the loop stops at that query's last key.
    end = tl.minimum(S, (i + 1) * BLOCK_M + offset) if CAUSAL else S
    for j0 in range(0, end, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        k = _load_rows(k_head, k_strides, cols, S, dims, D, 0.0)
        v = _load_rows(v_head, v_strides, cols, S, dims, D, 0.0)
        s = _scores(q, k, rows, cols, T, S, offset, scale, mask_head, mask_strides, CAUSAL, HAS_MASK, PRECISION)
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
    _store_rows(_head(Out, out_strides, b, h), out_strides, o / l_safe[:, None], rows, T, dims, D)
    lse = tl.where(seen, m + tl.log(l_safe), float("-inf"))
    tl.store(Lse + (b * H + h) * T + rows, lse, mask=rows < T)


@triton.jit
def backward_dkdv_kernel(Q, K, V, Mask, dO, Lse, Delta, dK, dV, q_strides, k_strides, v_strides, mask_strides,
                         do_strides, dkv_strides, H, G, T, S, D, offset, scale,
                         CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program: key tile `j` of K/V head `kv` in batch row `b`. It walks every query tile of
    the G query heads that read this K/V head (`flash_backward`'s inner loop, with the group sum
    done here) and writes dK, dV (B, K, S, D), both strided as dkv_strides. Lse and Delta are
    (B, H, T) float32, contiguous."""
    j, bk = tl.program_id(0), tl.program_id(1)
    K_heads = H // G
    b, kv = (bk // K_heads).to(tl.int64), (bk % K_heads).to(tl.int64)
    cols = j * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    k = _load_rows(_head(K, k_strides, b, kv), k_strides, cols, S, dims, D, 0.0)
    v = _load_rows(_head(V, v_strides, b, kv), v_strides, cols, S, dims, D, 0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # Causal: query tiles wholly before this key tile's first key (query t sees key j0 once
    # offset + t >= j0) see none of it: start at the tile that holds query j0 - offset.
    start = (tl.maximum(j * BLOCK_N - offset, 0) // BLOCK_M) * BLOCK_M if CAUSAL else 0
    for g in range(G):
        h = kv * G + g
        q_head, do_head = _head(Q, q_strides, b, h), _head(dO, do_strides, b, h)
        mask_head = _head(Mask, mask_strides, b, h)
        for i0 in range(start, T, BLOCK_M):
            rows = i0 + tl.arange(0, BLOCK_M)
            q = _load_rows(q_head, q_strides, rows, T, dims, D, 0.0)
            do = _load_rows(do_head, do_strides, rows, T, dims, D, 0.0)
            lse, delta = _load_lse_delta(Lse, Delta, b, h, H, T, rows)
            s = _scores(q, k, rows, cols, T, S, offset, scale, mask_head, mask_strides, CAUSAL, HAS_MASK, PRECISION)
            p = tl.exp(s - lse[:, None])  # P_ij recomputed from the log-sum-exp
            dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)  # dV_j += P_ij^T dO_i
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # dP_ij = dO_i V_j^T
            ds = p * (dp - delta[:, None])  # dS_ij = P_ij * (dP_ij - D_i)
            dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)  # dK_j += dS_ij^T Q_i
    _store_rows(_head(dK, dkv_strides, b, kv), dkv_strides, dk * scale, cols, S, dims, D)  # 1/sqrt(D) once, here
    _store_rows(_head(dV, dkv_strides, b, kv), dkv_strides, dv, cols, S, dims, D)


@triton.jit
def backward_dq_kernel(Q, K, V, Mask, dO, Lse, Delta, dQ, q_strides, k_strides, v_strides, mask_strides,
                       do_strides, dq_strides, H, G, T, S, D, offset, scale,
                       CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program: query tile `i` of head `h` in batch row `b`; walks the key tiles it sees, as
    the forward does, and writes dQ (B, H, T, D), strided as dq_strides."""
    i, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    kv = h // G
    rows = i * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = _load_rows(_head(Q, q_strides, b, h), q_strides, rows, T, dims, D, 0.0)
    do = _load_rows(_head(dO, do_strides, b, h), do_strides, rows, T, dims, D, 0.0)
    lse, delta = _load_lse_delta(Lse, Delta, b, h, H, T, rows)
    k_head, v_head = _head(K, k_strides, b, kv), _head(V, v_strides, b, kv)
    mask_head = _head(Mask, mask_strides, b, h)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    end = tl.minimum(S, (i + 1) * BLOCK_M + offset) if CAUSAL else S
    for j0 in range(0, end, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        k = _load_rows(k_head, k_strides, cols, S, dims, D, 0.0)
        v = _load_rows(v_head, v_strides, cols, S, dims, D, 0.0)
        s = _scores(q, k, rows, cols, T, S, offset, scale, mask_head, mask_strides, CAUSAL, HAS_MASK, PRECISION)
        p = tl.exp(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)  # dQ_i += dS_ij K_j
    _store_rows(_head(dQ, dq_strides, b, h), dq_strides, dq * scale, rows, T, dims, D)
