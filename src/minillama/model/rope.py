"""RoPE's rotation speeds for every scaling variant, written once for both engines: the torch model
calls it with `xp=torch`, the NumPy engine with `xp=numpy` (the module imports no torch).

Each pair of dimensions (i, i + D/2) of a query or key is rotated by position x inv_freq[i]; fast
pairs (small i) tell nearby tokens apart, slow ones far ones. Scaling stretches a model past the
context it was trained on:

- linear (position interpolation): every speed divided by `factor`, positions squeezed;
- dynamic (NTK-aware): the base raised once a sequence is longer than the trained context;
- llama3: long wavelengths squeezed, short ones kept, a smooth ramp between;
- yarn: interpolate slow dimensions, extrapolate fast ones, ramp between, and scale attention.

The formulas are transformers' (`modeling_rope_utils.py`), step for step in float32: with torch
the values are transformers' to the bit (so the tests against transformers cover these formulas
for both engines), with NumPy within a few float32 ulps of them (its `pow` rounds differently).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def rope_inverse_frequencies(config: Any, seq_len: int | None = None, xp: Any = np) -> tuple[Any, float]:
    """Per-pair rotation speeds (D/2,) float32, as an array of `xp` (numpy or torch), and the cos/sin
    scale (YaRN's attention factor, else 1).

    `config` has head_dim, rope_theta, rope_scaling and max_position_embeddings (a `ModelConfig`).
    `seq_len` matters only for "dynamic" scaling, which raises the base once a sequence is longer
    than `max_position_embeddings` instead of squeezing positions.
    """
    dim, base = config.head_dim, config.rope_theta
    scaling = config.rope_scaling or {}
    rope_type = scaling.get("rope_type", "default")
    factor = scaling.get("factor", 1.0)
    if rope_type == "dynamic":
        max_pos = config.max_position_embeddings
        seq_len = max(seq_len or max_pos, max_pos)
        base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    pos_freqs = base ** (xp.arange(0, dim, 2, dtype=xp.float32) / dim)  # base^(2i/D)
    if rope_type == "yarn":
        return _yarn(scaling, dim, base, factor, pos_freqs, xp)
    inv_freq = 1.0 / pos_freqs
    if rope_type == "linear":
        inv_freq = inv_freq / factor
    elif rope_type == "llama3":
        inv_freq = _llama3(scaling, inv_freq, factor, xp)
    return inv_freq, 1.0


def _llama3(scaling: dict[str, Any], inv_freq: Any, factor: float, xp: Any) -> Any:
    old_len = scaling["original_max_position_embeddings"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = xp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return xp.where(is_medium, smoothed, scaled)


def _yarn(scaling: dict[str, Any], dim: int, base: float, factor: float, pos_freqs: Any,
          xp: Any) -> tuple[Any, float]:
    old_len = scaling["original_max_position_embeddings"]

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        if scaling.get("mscale") and scaling.get("mscale_all_dim"):
            attention_factor = mscale(factor, scaling["mscale"]) / mscale(factor, scaling["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)

    def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times in old_len
        return (dim * math.log(old_len / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(scaling.get("beta_fast") or 32), correction_dim(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    high = high + 0.001 if low == high else high
    ramp = xp.clip((xp.arange(dim // 2, dtype=xp.float32) - low) / (high - low), 0, 1)  # 1: interpolate
    extrapolation = 1 - ramp
    inv_freq = (1 / (factor * pos_freqs)) * (1 - extrapolation) + (1 / pos_freqs) * extrapolation
    return inv_freq, attention_factor
