"""Round-to-nearest weight quantization: the grids every other method in this package rounds onto.

Two schemes, both weight-only (activations stay float):

    int8, per output channel, symmetric ("absmax"):
        s_n = max_k |W[n, k]| / 127                 one scale per row (output channel)
        q[n, k] = clamp(round(W[n, k] / s_n), -127, 127)      int8
        W ~ q * s                                            dequantize_int8

    int4, in groups of `group_size` input features, asymmetric (with a zero point):
        for each row n and group g of columns:  lo = min(W, 0), hi = max(W, 0)
        s = (hi - lo) / 15,  z = round(-lo / s)              z in [0, 15]
        q = clamp(round(W / s) + z, 0, 15)                   uint4, packed two per byte
        W ~ (q - z) * s                                      dequantize_int4

A row of a weight matrix is one output feature, so a per-row scale adapts to each neuron's range;
groups along the input dimension further bound how far one outlier can stretch the grid. The
range always includes 0 (so z is an integer on the grid and a zero weight stays exactly zero,
which pruning relies on). Scales are stored in float16 (as GPTQ files and llama.cpp's Q4_0 do) and
the codes are computed against the rounded scale, so dequantizing reproduces exactly what the
quantizer chose.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

INT4_MAX = 15  # uint4 codes 0..15
INT8_MAX = 127  # symmetric: -127..127 (-128 unused so the grid is symmetric around zero)
SCALE_DTYPE = torch.float16


class Int8Weight(NamedTuple):
    qweight: torch.Tensor  # (N, K) int8
    scales: torch.Tensor  # (N,) float32


class Int4Weight(NamedTuple):
    qweight: torch.Tensor  # (N, K // 2) uint8: two 4-bit codes per byte (`pack_int4`)
    scales: torch.Tensor  # (N, K // group_size) float16
    zeros: torch.Tensor  # (N, K // group_size) uint8, each in 0..15


# ---- int8, per output channel --------------------------------------------------------------
def quantize_int8(weight: torch.Tensor) -> Int8Weight:
    """(N, K) float -> int8 codes (N, K) and one float32 scale per row (N,)."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / INT8_MAX).clamp(min=1e-12)  # an all-zero row: any scale works
    q = torch.clamp(torch.round(w / scales[:, None]), -INT8_MAX, INT8_MAX).to(torch.int8)
    return Int8Weight(q, scales)


def dequantize_int8(qweight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, K) int8, (N,) -> (N, K) `dtype`."""
    return (qweight.to(torch.float32) * scales.float()[:, None]).to(dtype)


# ---- int4, asymmetric groups ---------------------------------------------------------------
def int4_grid(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zero points of each group of `weight` (N, K): ((N, K/g) float16, (N, K/g) float32
    holding integers 0..15). GPTQ calls this for each group as it reaches it."""
    N, K = weight.shape
    w = weight.detach().float().reshape(N, K // group_size, group_size)
    lo = w.amin(dim=2).clamp(max=0)  # the range includes 0: a zero weight stays exactly zero
    hi = w.amax(dim=2).clamp(min=0)
    scales = ((hi - lo) / INT4_MAX).clamp(min=1e-8).to(SCALE_DTYPE)  # a constant-zero group: any scale
    zeros = torch.clamp(torch.round(-lo / scales.float()), 0, INT4_MAX)
    return scales, zeros


def quantize_to_grid(weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """Codes (N, K) in 0..15 of `weight` (N, K) on the grid of `scales`, `zeros` (N, K/g)."""
    N, K = weight.shape
    g = K // scales.shape[1]
    w = weight.detach().float().reshape(N, -1, g)
    q = torch.round(w / scales.float()[..., None]) + zeros.float()[..., None]
    return torch.clamp(q, 0, INT4_MAX).reshape(N, K).to(torch.uint8)


def quantize_int4(weight: torch.Tensor, group_size: int) -> Int4Weight:
    """(N, K) float -> packed codes (N, K/2), scales and zeros (N, K/group_size)."""
    scales, zeros = int4_grid(weight, group_size)
    return Int4Weight(pack_int4(quantize_to_grid(weight, scales, zeros)), scales, zeros.to(torch.uint8))


def dequantize_int4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Packed (N, K/2) uint8 with (N, K/g) scales and zeros -> (N, K) `dtype`: (q - z) * s."""
    q = unpack_int4(qweight)  # (N, K)
    N, K = q.shape
    groups = scales.shape[1]
    w = (q.reshape(N, groups, -1).float() - zeros.float()[..., None]) * scales.float()[..., None]
    return w.reshape(N, K).to(dtype)


# ---- two 4-bit codes per byte --------------------------------------------------------------
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(N, K) uint8 codes 0..15, K even -> (N, K/2) uint8: column 2j in the low nibble, 2j+1 high."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(N, K/2) uint8 -> (N, K) uint8 codes 0..15 (the inverse of `pack_int4`)."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)


def fake_quantize(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """`weight` rounded onto its grid and back (same shape and dtype): the values the quantized
    model will compute with. Quantization-aware training and error measurements use it."""
    if bits == 8:
        q = quantize_int8(weight)
        return dequantize_int8(q.qweight, q.scales, weight.dtype)
    if bits == 4:
        q = quantize_int4(weight, group_size or weight.shape[1])
        return dequantize_int4(q.qweight, q.scales, q.zeros, weight.dtype)
    raise ValueError(f"bits must be 4 or 8, got {bits}")
