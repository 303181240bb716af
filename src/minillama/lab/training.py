"""Training and counting questions: parameter counts, LoRA, initialisation, SFT masks, teacher forcing,
speculative decoding, ZeRO memory, and pointers to the quantization and extrapolation experiments."""

from __future__ import annotations

from minillama.lab.registry import Experiment

EXPERIMENTS: tuple[Experiment, ...] = ()
