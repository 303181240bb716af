"""Batches of (inputs, targets) windows from a memory-mapped token file.

Each example is a window of seq_len + 1 consecutive tokens; inputs are its first seq_len tokens
and targets the last seq_len (the nanoGPT / llama2.c way). Two modes:

- "random": window starts drawn uniformly, so every step sees fresh offsets;
- "sequential": non-overlapping windows (stride seq_len) walked in file order, epoch after epoch.

Under data parallelism each step has one *global* batch of batch_size x world_size windows, and
rank r takes rows [r * batch_size, (r + 1) * batch_size) of it: ranks read different windows,
and 2 processes see exactly the batch 1 process would see with twice the batch size (so their
loss trajectories agree, and a checkpoint resumes on another world size with the same global batch).

Resuming is exact because global batch number `step` is a pure function of (seed, step): random
mode seeds a fresh generator from `SeedSequence([seed, step])` for each batch, sequential mode
computes its position from the step. The loader's whole state is therefore the step count (plus
the settings it checks), the same on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from minillama.data.tokenfile import TokenFile
from minillama.errors import MiniLlamaError

MODES = ("random", "sequential")
STATE_FORMAT = 1


def _windows_to_tensors(
    tokens: np.ndarray, starts: np.ndarray, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather windows of seq_len + 1 tokens at `starts`; split them into inputs and targets."""
    windows = tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64)  # (B, T+1)
    windows = torch.from_numpy(windows)
    return windows[:, :-1], windows[:, 1:]  # (B, T), (B, T)


class TokenLoader:
    """An endless iterator of (inputs, targets) int64 tensors of shape (batch_size, seq_len)."""

    def __init__(
        self,
        source: str | os.PathLike | TokenFile,
        batch_size: int,
        seq_len: int,
        mode: str = "random",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.file = source if isinstance(source, TokenFile) else TokenFile(source)
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("world_size", world_size)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.batch_size, self.seq_len, self.mode = batch_size, seq_len, mode
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.step = 0  # number of batches produced so far: the whole resumable state
        self.global_batch_size = batch_size * world_size
        if len(self.file) < seq_len + 1:
            raise MiniLlamaError(
                f"{self.file.path} has {len(self.file)} tokens: too few for one window of seq_len + 1 = "
                f"{seq_len + 1} tokens; use a shorter seq_len or more data"
            )
        # Sequential mode: non-overlapping windows; an epoch is as many whole global batches as fit.
        self.windows = (len(self.file) - 1) // seq_len
        self.batches_per_epoch = self.windows // self.global_batch_size

    @property
    def num_tokens(self) -> int:
        return len(self.file)

    @property
    def epoch(self) -> int:
        """Passes completed over the file (sequential mode; in random mode, in expectation)."""
        if self.mode == "sequential":
            return self.step // max(self.batches_per_epoch, 1)
        return self.step * self.global_batch_size * self.seq_len // self.num_tokens

    def batch_starts(self, step: int) -> np.ndarray:
        """Token offsets of this rank's windows in global batch number `step`."""
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        if self.mode == "random":
            rng = np.random.default_rng([self.seed, step])
            high = self.num_tokens - (self.seq_len + 1)  # last start whose window stays in the file
            return rng.integers(0, high, size=self.global_batch_size, endpoint=True)[mine]
        if self.batches_per_epoch == 0:  # checked here, so a loader used only for eval_batches is fine
            raise MiniLlamaError(
                f"{self.file.path} holds {self.windows} windows of {self.seq_len} tokens, fewer than one "
                f"global batch of {self.global_batch_size}; use a smaller batch or seq_len, or more data"
            )
        first = (step % self.batches_per_epoch) * self.global_batch_size
        return (first + np.arange(self.global_batch_size)[mine]) * self.seq_len

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = _windows_to_tensors(self.file.tokens, self.batch_starts(self.step), self.seq_len)
        self.step += 1
        return batch

    def state_dict(self) -> dict:
        """Everything needed to continue with the exact next batch (identical on every rank)."""
        position = None
        if self.mode == "sequential":
            position = (self.step % max(self.batches_per_epoch, 1)) * self.global_batch_size * self.seq_len
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "position": position,  # token offset of the next global batch (sequential)
            "mode": self.mode,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "seq_len": self.seq_len,
            "num_tokens": self.num_tokens,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` left off. The settings must match, or the batches would differ;
        the world size may change as long as the global batch (batch_size x world_size) does not."""
        if state.get("format") != STATE_FORMAT:
            raise MiniLlamaError(f"unknown data loader state format {state.get('format')!r}")
        for key in ("mode", "seed", "global_batch_size", "seq_len", "num_tokens"):
            if state[key] != getattr(self, key):
                raise MiniLlamaError(
                    f"cannot resume the data loader: {key} was {state[key]!r} when saved and is "
                    f"{getattr(self, key)!r} now; resume with the same settings and token file"
                )
        self.step = int(state["step"])

    def eval_batches(
        self, batch_size: int | None = None, seq_len: int | None = None, max_batches: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the whole file in fixed windows (see `windows_of`), this rank's share.
        Independent of the training position: evaluation never disturbs `step`."""
        return windows_of(self.file.tokens, batch_size or self.batch_size, seq_len or self.seq_len,
                          rank=self.rank, world_size=self.world_size, max_batches=max_batches)


def windows_of(
    tokens: np.ndarray, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1,
    max_batches: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of non-overlapping windows over `tokens`, in order: every token but the first is a
    target exactly once (up to the (len - 1) % seq_len tokens after the last whole window); the
    last batch may be smaller. Rank r of world_size takes every world_size-th window, so the ranks
    together cover the tokens once, but for the last windows % world_size windows: every rank takes
    as many, so all run as many forwards (under FSDP each gathers weights collectively: one more on
    one rank deadlocks) and their mean losses weigh alike."""
    windows = (len(tokens) - 1) // seq_len
    starts = np.arange(rank, windows - windows % world_size, world_size) * seq_len
    if max_batches is not None:
        starts = starts[: max_batches * batch_size]
    for i in range(0, len(starts), batch_size):
        yield _windows_to_tensors(tokens, starts[i : i + batch_size], seq_len)
