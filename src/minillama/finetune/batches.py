"""Batches of variable-length examples: shuffled epochs, right padding, exact resume.

Fine-tuning data is a list of examples (token ids, and labels per token or per sequence), so the
loader is simple: each epoch is a seeded permutation of the examples, cut into global batches of
`batch_size * world_size`, of which each rank takes its slice. Its whole state is (epoch, position).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from minillama.model.config import IGNORE_INDEX


@dataclass
class Example:
    ids: list[int]
    labels: list[int] | int  # per-token labels (SFT, -100 = not learned) or one class id


def pad_batch(examples: Sequence[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids (B, T), attention_mask (B, T) with 1 = token,
    and labels: (B, T) padded with -100 for per-token labels, (B,) class ids otherwise."""
    longest = max(len(e.ids) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    per_token = isinstance(examples[0].labels, list)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long) if per_token else \
        torch.tensor([e.labels for e in examples], dtype=torch.long)
    for row, example in enumerate(examples):
        input_ids[row, :len(example.ids)] = torch.tensor(example.ids)
        attention_mask[row, :len(example.ids)] = 1
        if per_token:
            labels[row, :len(example.ids)] = torch.tensor(example.labels)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class ExampleBatches:
    """Endless shuffled batches of `examples` for one rank; `state_dict()` resumes exactly.

    With `targets` (example -> how many tokens its loss is a mean over), each batch carries
    `loss_weight`: this rank's share of the global batch's target tokens times the world size. A
    per-token mean loss scaled by it makes the ranks' losses (and DDP / FSDP's averaged gradients)
    average to the mean over the whole global batch, what one process computes with it (the weight
    is 1 in one process). Without, every rank's loss weighs alike (a mean per example)."""

    targets: Callable[[Any], int] | None = None

    def __init__(self, examples: Sequence[Example], batch_size: int, collate: Callable[[list[Example]], Any],
                 seed: int = 0, rank: int = 0, world_size: int = 1, targets: Callable[[Any], int] | None = None):
        global_batch = batch_size * world_size
        if len(examples) < global_batch:
            raise ValueError(f"{len(examples)} training examples cannot fill one batch of {global_batch}; "
                             "lower data.batch_size or add data")
        self.examples, self.collate = examples, collate
        self.batch_size, self.seed, self.rank, self.global_batch = batch_size, seed, rank, global_batch
        self.targets = targets or self.targets
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.examples), generator=generator).tolist()

    def __iter__(self) -> ExampleBatches:
        return self

    def __next__(self) -> Any:
        if self.position + self.global_batch > len(self._order):  # the epoch's tail is dropped
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        taken = self._order[self.position:self.position + self.global_batch]
        mine = [self.examples[i] for i in taken[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]]
        self.position += self.global_batch
        batch = self.collate(mine)
        if self.targets is not None:
            total = sum(self.targets(self.examples[i]) for i in taken)
            weight = sum(map(self.targets, mine)) * (self.global_batch // self.batch_size) / max(1, total)
            batch["loss_weight"] = torch.tensor(weight)
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "examples": len(self.examples)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("examples", len(self.examples)) != len(self.examples):
            raise ValueError(f"the checkpoint was trained on {state['examples']} examples, this data has "
                             f"{len(self.examples)}; resume with the same data and settings")
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation()


def learned_tokens(example: Example) -> int:
    """Tokens a causal LM's loss is a mean over for `example`: those whose label, one position
    ahead, is learned (`shift_labels`: the first token is no target)."""
    return sum(label != IGNORE_INDEX for label in example.labels[1:])

