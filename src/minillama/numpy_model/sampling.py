"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus), with a
seeded `numpy.random.Generator` so a seed reproduces a sample."""

from __future__ import annotations

import numpy as np


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 or None keeps every token), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 or None keeps every token), got {top_p}")


def sampling_probabilities(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
                           top_p: float | None = None) -> np.ndarray:
    """The distribution (V,) float64 that sampling draws from, after temperature, top-k, top-p.

    top-k keeps the k highest logits (ties with the k-th kept too); top-p then keeps the smallest
    set of most likely tokens whose probability reaches top_p: a token stays when the tokens more
    likely than it hold less than top_p (transformers' rule).
    """
    check_sampling(temperature, top_k, top_p)
    scaled = np.asarray(logits, dtype=np.float64) / (temperature or 1.0)
    if top_k and top_k < scaled.size:
        kth = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1:
        order = np.argsort(-probs, kind="stable")
        before = np.cumsum(probs[order]) - probs[order]  # mass of the tokens ranked above each
        probs[order[before >= top_p]] = 0.0
        probs /= probs.sum()
    return probs


def sample_next_token(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None) -> int:
    """One token id from logits (V,). temperature 0 is greedy (argmax, the first on ties)."""
    if temperature == 0:
        check_sampling(temperature, top_k, top_p)
        return int(np.argmax(logits))
    cumulative = np.cumsum(sampling_probabilities(logits, temperature, top_k, top_p))
    # Inverse-CDF draw; the min() guards against cumulative[-1] rounding below the draw.
    return int(min(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"),
                   cumulative.size - 1))
