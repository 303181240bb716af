"""Logits processors and the sampler: pure functions of (logits, state) -> logits or tokens.

They run in transformers' order and with its exact rules (repetition penalty, temperature, top-k,
top-p, min-p), so a distribution we sample from is the one `transformers.generate` would sample from.
Shapes: B rows, V vocabulary. Logits are float32 (B, V); filtered tokens get -inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen from the logits. temperature 0 means greedy (argmax);
    top_k / top_p / min_p of None (or 0 / 1.0 / 0.0) switch that filter off."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) \
                or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {self.temperature!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 0):
            raise ValueError(f"top_k must be a positive integer (0 / None: no limit), got {self.top_k!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {self.top_p!r}")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1] (0 keeps every token), got {self.min_p!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def uses_history(self) -> bool:
        """Whether the logits depend on which tokens were already seen."""
        return self.repetition_penalty != 1.0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty on tokens already in the sequence: positive logits divided by `penalty`,
    negative ones multiplied, so a seen token always becomes less likely. seen: bool (B, V)."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits (and any tied with the k-th)."""
    kth = torch.topk(logits, min(k, logits.shape[-1])).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches p.
    Sorted ascending, a token goes when the mass up to and including it is <= 1 - p
    (transformers' rule); the most likely token always stays."""
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= 1 - p
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens at least min_p times as likely as the most likely one (which always stays)."""
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))


def process_logits(logits: torch.Tensor, config: SamplingConfig,
                   seen: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the penalty, temperature and filters in transformers' order. Greedy skips the
    temperature and filters (they cannot change the argmax). logits (B, V) float32."""
    if config.repetition_penalty != 1.0:
        if seen is None:
            raise ValueError("a repetition penalty needs the tokens seen so far (seen=...)")
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.greedy:
        return logits
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k:
        logits = top_k_filter(logits, config.top_k)
    if config.top_p is not None and config.top_p < 1.0:
        logits = top_p_filter(logits, config.top_p)
    if config.min_p:
        logits = min_p_filter(logits, config.min_p)
    return logits


def sample_from_probs(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from probs (B, V) -> (B,). argmax(p_i / E_i) with E_i ~ Exp(1) picks i
    with probability exactly p_i (an exponential race), with no host sync and no cumsum search."""
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / race, dim=-1)


def sample(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None,
           seen: torch.Tensor | None = None) -> torch.Tensor:
    """Choose the next token of each row: logits (B, V) -> (B,)."""
    logits = process_logits(logits.float(), config, seen)
    if config.greedy:
        return torch.argmax(logits, dim=-1)
    return sample_from_probs(logits.softmax(dim=-1), generator)


def probabilities(logits: torch.Tensor, config: SamplingConfig,
                  seen: torch.Tensor | None = None) -> torch.Tensor:
    """The distribution `sample` draws from, (..., V). Greedy is a one-hot on the argmax."""
    logits = process_logits(logits.float(), config, seen)
    if config.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    return logits.softmax(dim=-1)
