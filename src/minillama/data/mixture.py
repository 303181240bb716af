"""Weighted mixtures of datasets: `tinystories-sample:0.7,zh.txt:0.3`.

Each component is prepared into its own token files; a `MixtureLoader` draws every window of a
global batch from component k with probability weight_k (weights are normalised), at a uniformly
random start in that component's file. Like `TokenLoader`'s random mode, global batch number
`step` is a pure function of (seed, step), so the mixture is deterministic, the same on every
rank (rank r takes its rows of the global batch) and resumes exactly from the step count.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch

from minillama.data.tokenfile import TokenFile
from minillama.errors import MiniLlamaError

STATE_FORMAT = 1
_WEIGHT = re.compile(r"^(?P<name>.+):(?P<weight>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


def parse_mixture(spec: str) -> list[tuple[str, float]] | None:
    """[(dataset, weight), ...] for `name:weight,name:weight,...`; None when `spec` is one dataset
    (no part carries a weight). Weights must be positive; they are normalised to sum to 1."""
    parts = [p.strip() for p in spec.split(",")]
    matches = [_WEIGHT.match(p) for p in parts]
    if not any(matches):
        return None
    if not all(matches):
        bad = next(p for p, m in zip(parts, matches, strict=True) if not m)
        raise MiniLlamaError(f"data.dataset {spec!r}: {bad!r} has no weight; a mixture is NAME:WEIGHT,NAME:WEIGHT,...")
    mixture = [(m["name"], float(m["weight"])) for m in matches]
    if any(not math.isfinite(w) or w <= 0 for _, w in mixture):
        raise MiniLlamaError(f"data.dataset {spec!r}: mixture weights must be positive numbers")
    if len({name for name, _ in mixture}) != len(mixture):
        raise MiniLlamaError(f"data.dataset {spec!r}: a dataset is named twice")
    total = sum(w for _, w in mixture)
    return [(name, w / total) for name, w in mixture]


class MixtureLoader:
    """An endless iterator of (inputs, targets) int64 tensors (batch_size, seq_len), each window
    drawn from `files[k]` with probability `weights[k]`."""

    def __init__(self, files: Sequence[TokenFile], weights: Sequence[float], batch_size: int, seq_len: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        if len(files) != len(weights) or not files:
            raise ValueError("one weight per token file, at least one file")
        for f in files:
            if len(f) < seq_len + 1:
                raise MiniLlamaError(f"{f.path} has {len(f)} tokens: too few for one window of {seq_len + 1}; "
                                     "use a shorter seq_len or more data")
        self.files = list(files)
        self.weights = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.global_batch_size = batch_size * world_size
        self.step = 0

    @property
    def num_tokens(self) -> list[int]:
        return [len(f) for f in self.files]

    def batch_sources(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(component, start) of each window of global batch `step`: (global_batch_size,) each."""
        rng = np.random.default_rng([self.seed, step])
        components = rng.choice(len(self.files), size=self.global_batch_size, p=self.weights)
        highs = np.array([len(f) - (self.seq_len + 1) for f in self.files])
        starts = (rng.random(self.global_batch_size) * (highs[components] + 1)).astype(np.int64)
        return components, starts

    def __iter__(self) -> MixtureLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        components, starts = self.batch_sources(self.step)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        offsets = np.arange(self.seq_len + 1)
        windows = np.stack([self.files[k].tokens[s + offsets].astype(np.int64)
                            for k, s in zip(components[mine], starts[mine], strict=True)])
        self.step += 1
        windows = torch.from_numpy(windows)
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "step": self.step, "mixture": True, "seed": self.seed,
                "weights": self.weights.tolist(), "global_batch_size": self.global_batch_size,
                "seq_len": self.seq_len, "num_tokens": self.num_tokens}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` left off; the settings and files must be the same."""
        if state.get("format") != STATE_FORMAT or not state.get("mixture"):
            raise MiniLlamaError("cannot resume: the checkpoint's data loader was not a mixture; resume with the "
                                 "same data.dataset")
        for key in ("seed", "weights", "global_batch_size", "seq_len", "num_tokens"):
            saved, now = state[key], getattr(self, key)
            same = np.allclose(saved, now) if key == "weights" else saved == now
            if not same:
                raise MiniLlamaError(f"cannot resume the data mixture: {key} was {saved!r} when saved and is "
                                     f"{now!r} now; resume with the same settings and data")
        self.step = int(state["step"])
