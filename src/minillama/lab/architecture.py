"""Architecture questions: tokenizers, special tokens, decoder-only, norms, residuals, FFN, positions."""

from __future__ import annotations

from minillama.lab.registry import Experiment

EXPERIMENTS: tuple[Experiment, ...] = ()
