"""FlashAttention in Triton: `flash.py`'s algorithm as GPU kernels (`flash_triton_kernels.py`).

The same API as `flash.py` (q (B, H, T, D), k, v (B, K, S, D), grouped-query attention without
copying K/V, causal with query t at position S - T + t, a bool mask broadcastable to (B, H, T, S),
True = may attend; the forward returns the log-sum-exp too) and the same numbers: float32
arithmetic whatever the input's dtype, rows that may attend to nothing give zeros. This file checks
the inputs, lays out the outputs and launches the kernels; read the kernels beside `flash.py`.

Triton compiles the kernels for CUDA tensors. With TRITON_INTERPRET=1 in the environment when
Triton is imported it runs them instead through NumPy, on CPU tensors too: slow, but the very
kernels, which is how the tests check them on a machine without a GPU. This module imports without
Triton; the kernels module is imported at the first call.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch

from minillama.errors import MiniLlamaError
from minillama.model.flash import FlashAttention

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def default_block(dtype: torch.dtype) -> int:
    """Queries / keys per tile: 64, or 32 for float32, whose tiles take twice the shared memory (the
    backward kernels at 64 need up to 213 KiB with head size 128, more than most GPUs have). At least
    16: the smallest matrix product tl.dot takes."""
    return 32 if dtype == torch.float32 else 64


def load_kernels() -> ModuleType:
    """flash_triton_kernels, imported at the first call: Triton only when it is used."""
    try:
        from minillama.model import flash_triton_kernels
    except ImportError as error:
        if error.name != "triton":
            raise
        raise MiniLlamaError("attn_implementation 'flash_triton' needs Triton, which is not installed; "
                             "pip install triton") from error
    return flash_triton_kernels


def interpreted() -> bool:
    """Whether Triton runs the kernels through NumPy. It decides once, when it is imported, by
    TRITON_INTERPRET=1 in the environment; its own library (tl.zeros, ...) is decorated then too, so
    the setting cannot change within a process."""
    from triton.runtime import JITFunction

    return not isinstance(load_kernels().forward_kernel, JITFunction)


def _checked_kernels(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     block: int) -> ModuleType:
    """The kernels, or one clear line for what they cannot take, before Triton fails somewhere inside."""
    kernels = load_kernels()
    if q.device.type != "cuda" and not interpreted():
        raise MiniLlamaError(f"attn_implementation 'flash_triton' runs on CUDA tensors, not {q.device.type}; "
                             "start Python with TRITON_INTERPRET=1 in the environment to run its kernels "
                             "through NumPy (slow, for testing)",
                             remedy=("attn_implementation", "flash_tiled", "run the same algorithm in PyTorch"))
    if not (q.dtype == k.dtype == v.dtype and q.dtype in DTYPES):
        raise MiniLlamaError(f"flash_triton takes q, k, v of one dtype among float16, bfloat16, float32; got "
                             f"{q.dtype}, {k.dtype}, {v.dtype}")
    if mask is not None and mask.dtype != torch.bool:
        raise MiniLlamaError(f"flash_triton takes a bool mask (True = may attend), got {mask.dtype}")
    if block < 16 or block & (block - 1):
        raise MiniLlamaError(f"flash_triton's block must be a power of two of at least 16, got {block}")
    if q.dtype == torch.bfloat16 and interpreted():  # it multiplies the raw bits: triton-lang/triton#11584
        raise MiniLlamaError("Triton's interpreter does not compute bfloat16 matrix products; run flash_triton "
                             "in float32 or float16 under TRITON_INTERPRET=1")
    return kernels


def _common_arguments(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                      causal: bool, block: int) -> tuple[torch.Tensor, tuple, tuple, dict]:
    """What every kernel takes: the mask's bytes (a placeholder tensor when there is none), the
    strides of q, k, v and the mask, the sizes, and the compile-time switches (keywords)."""
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    # The mask broadcast to (B, H, T, S) by zero strides (no copy), read as bytes.
    mask_bytes = q if mask is None else mask.expand(B, H, T, S).view(torch.uint8)
    mask_strides = (0, 0, 0, 0) if mask is None else mask_bytes.stride()
    strides = (q.stride(), k.stride(), v.stride(), mask_strides)
    sizes = (H, H // K, T, S, D, S - T, 1.0 / math.sqrt(D))
    return mask_bytes, strides, sizes, kernel_switches(q.dtype, D, causal, mask is not None, block)


def kernel_switches(dtype: torch.dtype, head_dim: int, causal: bool, masked: bool, block: int) -> dict:
    """The kernels' compile-time arguments: Triton compiles a version of a kernel for each set."""
    # float32 products in full float32, as SDPA's math backend, unless torch allows TF32 (its setting)
    tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    head_tile = max(16, 1 << (head_dim - 1).bit_length())  # a power of two (Triton's tiles), at least 16
    return dict(CAUSAL=causal, HAS_MASK=masked, PRECISION="tf32" if tf32 else "ieee", BLOCK_M=block, BLOCK_N=block,
                BLOCK_D=head_tile)


def flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                  causal: bool = False, block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output O (B, H, T, D), in q's dtype, and log-sum-exp L (B, H, T), float32:
    `flash.flash_forward` on the GPU. q (B, H, T, D); k, v (B, K, S, D); causal: query t sits at
    position S - T + t; rows that may attend to nothing get O = 0 and L = -inf. block: None for
    `default_block`."""
    block = default_block(q.dtype) if block is None else block
    kernels = _checked_kernels(q, k, v, mask, block)
    B, H, T, D = q.shape
    mask_bytes, strides, sizes, switches = _common_arguments(q, k, v, mask, causal, block)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    grid = (math.ceil(T / block), B * H)  # one program per query tile and head
    kernels.forward_kernel[grid](q, k, v, mask_bytes, out, lse, *strides, out.stride(), *sizes, **switches)
    return out, lse


def flash_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   out: torch.Tensor, lse: torch.Tensor, mask: torch.Tensor | None, causal: bool,
                   block: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV, recomputing each tile's probabilities from the saved log-sum-exp:
    `flash.flash_backward` on the GPU, split into a dK/dV kernel and a dQ kernel."""
    block = default_block(q.dtype) if block is None else block
    kernels = _checked_kernels(q, k, v, mask, block)
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    mask_bytes, strides, sizes, switches = _common_arguments(q, k, v, mask, causal, block)
    delta = (grad_out.float() * out.float()).sum(dim=-1).contiguous()  # D_i = rowsum(dO * O), (B, H, T)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    # one program per key tile and K/V head, then one per query tile and query head
    kernels.backward_dkdv_kernel[(math.ceil(S / block), B * K)](q, k, v, mask_bytes, grad_out, lse, delta, dk, dv,
                                                                 *strides, grad_out.stride(), dk.stride(), *sizes,
                                                                 **switches)
    kernels.backward_dq_kernel[(math.ceil(T / block), B * H)](q, k, v, mask_bytes, grad_out, lse, delta, dq,
                                                               *strides, grad_out.stride(), dq.stride(), *sizes,
                                                               **switches)
    return dq, dk, dv


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                    causal: bool = False, block: int | None = None) -> torch.Tensor:
    """Exact attention by the Triton kernels: q (B, H, T, D), k, v (B, K, S, D) -> (B, H, T, D).
    mask: bool, broadcastable to (B, H, T, S) (a key padding mask is (B, 1, 1, S)), True = may
    attend; causal: query t sits at position S - T + t. CUDA tensors, or any with TRITON_INTERPRET=1.
    Differentiable: `flash.FlashAttention` with these kernels for its two passes. Inputs of several
    dtypes are computed in one, as SDPA does: autocast's where it is on, else the widest."""
    dtype = _common_dtype(q, k, v)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    return FlashAttention.apply(q, k, v, mask, causal, block, (flash_forward, flash_backward))


def _common_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.dtype:
    """Under autocast the model's q and k leave RoPE in float32 while v leaves its projection in
    bfloat16: autocast's dtype then (SDPA's too), the widest of the three otherwise."""
    if torch.is_autocast_enabled(q.device.type):
        return torch.get_autocast_dtype(q.device.type)
    return torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
