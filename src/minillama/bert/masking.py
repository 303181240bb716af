"""BERT's masked-language-model corruption, and the batches MLM pretraining reads.

Of the tokens that are not special tokens or padding, each is *selected* with probability 15 %;
of the selected, 80 % become [MASK], 10 % a random token, 10 % stay as they are (so the model
cannot learn that only [MASK] positions matter). The loss is computed on the selected positions
only: labels hold the original token there and -100 elsewhere.

`mask_tokens` draws its random numbers in the same order and from the same distributions as
`transformers.DataCollatorForLanguageModeling` (bernoulli(0.15) for the selection, bernoulli(0.8)
for [MASK], bernoulli(0.5) among the rest for a random token, randint(vocab) for that token), so
with one seed both corrupt a batch identically (tests/test_bert_masking.py holds them equal).

Dynamic masking (RoBERTa): the masks are drawn when a batch is made, from a generator seeded by
(seed, batch number), so every pass over the data sees new masks, and a resumed run the same ones.
"""

from __future__ import annotations

from typing import Any

import torch

from minillama.model.config import IGNORE_INDEX

MLM_PROBABILITY = 0.15
MASK_FRACTION = 0.8  # of the selected tokens
RANDOM_FRACTION = 0.1  # of the selected tokens (the remaining 0.1 are left unchanged)


def mask_tokens(input_ids: torch.Tensor, special_mask: torch.Tensor, mask_token_id: int, vocab_size: int,
                generator: torch.Generator | None = None, probability: float = MLM_PROBABILITY
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (B, T); special_mask (B, T) True where a token may never be selected (special
    tokens, padding) -> (corrupted input ids (B, T), labels (B, T): the original id where
    selected, -100 elsewhere). `input_ids` is not modified."""
    inputs, labels = input_ids.clone(), input_ids.clone()
    chance = torch.full(labels.shape, probability)
    chance.masked_fill_(special_mask.bool().cpu(), 0.0)
    selected = torch.bernoulli(chance, generator=generator).bool()
    labels[~selected] = IGNORE_INDEX
    replaced = torch.bernoulli(torch.full(labels.shape, MASK_FRACTION), generator=generator).bool() & selected
    inputs[replaced] = mask_token_id
    random_share = RANDOM_FRACTION / (1 - MASK_FRACTION)  # of those not replaced by [MASK]: 0.5
    randomised = (torch.bernoulli(torch.full(labels.shape, random_share), generator=generator).bool()
                  & selected & ~replaced)
    random_words = torch.randint(vocab_size, labels.shape, dtype=torch.long, generator=generator)
    inputs[randomised] = random_words[randomised]
    return inputs, labels


def check_mlm_probability(probability: float) -> None:
    """A masking rate must leave something to read and something to predict."""
    if not 0 < probability < 1:
        raise ValueError(f"--mlm-probability must be between 0 and 1 (BERT: {MLM_PROBABILITY}), got {probability}")


def special_tokens_mask(input_ids: torch.Tensor, special_ids: set[int] | list[int]) -> torch.Tensor:
    """(B, T) True where the id is one of `special_ids` ([PAD] [UNK] [CLS] [SEP] [MASK])."""
    return torch.isin(input_ids, torch.tensor(sorted(special_ids), dtype=input_ids.dtype))


def batch_generator(seed: int, batch: int) -> torch.Generator:
    """The generator that masks global batch number `batch`: a pure function of (seed, batch)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + batch) % (2**63 - 1))


class MLMBatches:
    """Endless MLM batches from a `TokenLoader`: each window of `seq_len - 2` tokens becomes
    `[CLS] window [SEP]` (windows cross document boundaries, where the token files hold [SEP], as
    RoBERTa's FULL-SENTENCES), corrupted by `mask_tokens` with the batch's own generator.

    Batches are dicts: input_ids, labels (B, seq_len), attention_mask (all ones: no padding), and
    loss_weight (see `share`). The state is the loader's (its step numbers the batches, so masks
    resume exactly). Under data parallelism the loader reads the whole global batch (batch_size x
    world_size windows), masked with the generator of (seed, step) as one process masks it, and
    rank r trains on its rows: 2 processes see the batches 1 process sees with twice the batch."""

    def __init__(self, loader: Any, tokenizer: Any, vocab_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 probability: float = MLM_PROBABILITY):
        check_mlm_probability(probability)
        self.loader, self.seed, self.vocab_size, self.probability = loader, seed, vocab_size, probability
        self.rank, self.world_size = rank, world_size
        self.cls, self.sep, self.mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
        self.special = tokenizer.special_ids()

    def __iter__(self) -> MLMBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        step = self.loader.step
        windows, _ = next(self.loader)  # (B, seq_len - 2), the global batch; the targets half is the causal LM's
        return self.share(self.frame(windows, batch_generator(self.seed, step)))

    def share(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's rows of a masked global batch, with `loss_weight` (a scalar): its share of
        the batch's selected tokens times the world size. The loss is a mean over the selected
        tokens and DDP / FSDP average the ranks' gradients, so the ranks' means scaled by their
        weights average to the mean over the whole global batch (the weight is 1 in one process)."""
        rows = len(batch["input_ids"])
        mine = slice(self.rank * rows // self.world_size, (self.rank + 1) * rows // self.world_size)
        selected = batch["labels"] != IGNORE_INDEX
        weight = int(selected[mine].sum()) * self.world_size / max(1, int(selected.sum()))
        return {**{k: v[mine] for k, v in batch.items()}, "loss_weight": torch.tensor(weight)}

    def frame(self, windows: torch.Tensor, generator: torch.Generator, probability: float | None = None
              ) -> dict[str, torch.Tensor]:
        """(B, T - 2) token windows -> a masked batch of (B, T) with [CLS] / [SEP] around each, a share
        `probability` (default: this stream's) of the tokens selected."""
        B = windows.shape[0]
        ids = torch.cat([torch.full((B, 1), self.cls), windows, torch.full((B, 1), self.sep)], dim=1)
        inputs, labels = mask_tokens(ids, special_tokens_mask(ids, self.special), self.mask, self.vocab_size,
                                     generator, probability or self.probability)
        return {"input_ids": inputs, "labels": labels, "attention_mask": torch.ones_like(inputs)}

    def state_dict(self) -> dict[str, Any]:
        return {**self.loader.state_dict(), "mlm_seed": self.seed, "mlm_probability": self.probability}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        if state.pop("mlm_seed", self.seed) != self.seed:
            raise ValueError("the checkpoint's masks were drawn with another seed; resume with the same run.seed")
        if (rate := state.pop("mlm_probability", MLM_PROBABILITY)) != self.probability:
            raise ValueError(f"the checkpoint's run masked {rate:g} of the tokens, not {self.probability:g}; resume "
                             f"with --mlm-probability {rate:g}")
        self.loader.load_state_dict(state)
