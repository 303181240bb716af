"""Supervised fine-tuning (full or LoRA) through the one training loop.

What differs from pretraining: the batches (padded ChatML conversations whose labels are -100
everywhere but the assistant's tokens), the loss (`sft_loss`), and, with LoRA, which parameters
train and what a checkpoint holds (the adapters only). Results in OUT/:

    checkpoints/step-N/   the loop's checkpoints (a model directory, or a PEFT adapter directory)
    model/                the final model (merged) + tokenizer: `minillama chat --checkpoint OUT/model`
    adapter/              with LoRA: the final adapters in PEFT's format (+ tokenizer)
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from minillama.errors import MiniLlamaError
from minillama.finetune.batches import Example, ExampleBatches, learned_tokens, pad_batch
from minillama.finetune.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoRAConfig, LoRAFiles, add_lora
from minillama.model.config import IGNORE_INDEX
from minillama.model.loss import shift_labels
from minillama.train.checkpoint import claim_run_directory
from minillama.train.config import TrainConfig
from minillama.train.distributed import Distributed, rank_rows
from minillama.train.loop import Trainer, TrainingResult

log = logging.getLogger(__name__)


@dataclass
class SFTSettings:
    """What `minillama sft` adds to the training config."""

    base: str  # the model directory to start from (with tokenizer files, unless data.tokenizer is set)
    lora: LoRAConfig | None = None  # None: full fine-tuning
    val_fraction: float = 0.05  # held out when the data has no validation set of its own


def sft_loss(model: nn.Module, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean next-token cross-entropy over the learned (assistant) tokens of a right-padded batch,
    through the model's fused head + loss (as pretraining).

    The attention mask is not passed: with right padding, causal attention already keeps every real
    token from seeing the pads after it, and pads are labelled -100, so the loss is exactly the
    masked one (tested), while the unmasked path runs the faster causal kernel."""
    targets = shift_labels(batch["labels"])
    loss = model(batch["input_ids"], targets=targets, label_smoothing=label_smoothing).loss
    # under torchrun, this rank's share of the global batch's learned tokens (`ExampleBatches`)
    return loss * batch["loss_weight"] if "loss_weight" in batch else loss


@torch.no_grad()
def evaluate_sft(model: nn.Module, examples: list[Example], batch_size: int, pad_token_id: int,
                 device: torch.device, max_batches: int | None = None, dist: Distributed | None = None) -> float:
    """Mean loss per learned token over (the first `max_batches` batches of) `examples`. With `dist`
    (under torchrun) the batches are global, of `batch_size` x world size examples, each rank scores
    its rows of each (`rank_rows`) and the sums are over all ranks: every rank returns one
    process's mean."""
    rank, world_size = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    total, count = 0.0, 0
    for rows, counted in rank_rows(examples, batch_size, rank, world_size, max_batches):
        batch = pad_batch(rows, pad_token_id)
        targets = shift_labels(batch["labels"]).to(device)
        loss = model(batch["input_ids"].to(device), targets=targets).loss
        n = int((targets != IGNORE_INDEX).sum())
        if counted and n:  # a batch with no learned token has a NaN mean
            total, count = total + float(loss) * n, count + n
    if dist is not None:
        total, count = dist.sum_over_ranks([total, count])
    if count == 0:
        raise MiniLlamaError("no validation conversation has an assistant token to score; add validation data")
    return total / count


def load_base(settings: SFTSettings, tokenizer_dir: Path):
    """The base model and its tokenizer, checked to fit together and to know ChatML."""
    from minillama.model import MiniLlama
    from minillama.tokenizer import Tokenizer, check_tokenizer_matches

    model = MiniLlama.from_pretrained(settings.base)
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    check_tokenizer_matches(tokenizer, model.config.vocab_size, settings.base)
    im_end = tokenizer.token_to_id("<|im_end|>")
    if im_end is None:
        raise MiniLlamaError(f"the tokenizer in {tokenizer_dir} has no <|im_end|>; SFT needs ChatML's tokens")
    # The fine-tuned model ends its turns with <|im_end|>: make that its EOS, as chat models do,
    # so generation stops there by default.
    model.config.eos_token_id = im_end
    return model, tokenizer


def load_examples(config: TrainConfig, settings: SFTSettings, tokenizer, max_len: int
                  ) -> tuple[list[Example], list[Example]]:
    """The (train, validation) examples of `config.data.dataset`, rendered and masked."""
    from minillama.finetune.sft_data import load_conversations, tokenize_conversations

    chats = load_conversations(config.data.dataset, config.data.val_dataset, settings.val_fraction,
                               config.data.utf8_errors)
    train, val = (tokenize_conversations(tokenizer, split, max_len) for split in chats)
    log.info("SFT on %d conversations (%d held out), at most %d tokens each", len(train), len(val), max_len)
    return train, val


def sft(config: TrainConfig, settings: SFTSettings) -> TrainingResult:
    """Fine-tune `settings.base` on `config.data.dataset` as `config` says; returns the loop's result."""
    dist = Distributed.from_env(config.run.device, config.run.threads)
    lock = claim_run_directory(config.run.out_dir) if dist.is_main else None
    try:
        tokenizer_dir = Path(config.data.tokenizer or settings.base)
        torch.manual_seed(config.run.seed)
        model, tokenizer = load_base(settings, tokenizer_dir)
        train, val = load_examples(config, settings, tokenizer,
                                   min(config.data.seq_len, model.config.max_position_embeddings))
        files = None
        if settings.lora:
            add_lora(model, settings.lora)
            files = LoRAFiles(settings.lora, model, str(Path(settings.base).resolve()))
        if config.run.gradient_checkpointing:
            model.set_gradient_checkpointing(True)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # Each rank takes its rows of the global batch one process would take; the loss is a mean
        # per learned token and the ranks' counts differ, so each batch carries its loss_weight.
        batches = ExampleBatches(train, config.data.batch_size, partial(pad_batch, pad_token_id=pad),
                                 seed=config.run.seed, rank=dist.rank, world_size=dist.world_size,
                                 targets=learned_tokens)

        def evaluate(wrapped: nn.Module) -> float:
            return evaluate_sft(wrapped, val, config.data.batch_size, pad, dist.device,
                                config.run.eval_batches, dist)

        trainer = Trainer(config, model, batches, evaluate, dist, batch_loss=sft_loss,
                          tokenizer_dir=tokenizer_dir, model_files=files, lock=lock,
                          extra_state={"sft": {**asdict(settings), "dataset": config.data.dataset}})
        result = trainer.fit()
        if dist.is_main and result.stopped_by == "budget" and result.checkpoint is not None:
            export_final(result.checkpoint, settings, tokenizer, Path(config.run.out_dir))
            if result.val_loss is not None:
                log.info("validation loss %.4f (perplexity %.2f) on the assistant tokens", result.val_loss,
                         math.exp(min(result.val_loss, 50)))
        return result
    finally:
        if lock is not None:
            lock.release()
        dist.close()


def export_final(checkpoint: Path, settings: SFTSettings, tokenizer, out_dir: Path) -> Path:
    """OUT/model from the last checkpoint (merged when LoRA), and OUT/adapter with LoRA."""
    from minillama.export import save_hf
    from minillama.files import atomic_directory
    from minillama.model import MiniLlama

    if settings.lora is None:
        model = MiniLlama.from_pretrained(checkpoint)
    else:
        with atomic_directory(out_dir / "adapter", "adapter") as tmp:
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                shutil.copy2(checkpoint / name, tmp / name)
            tokenizer.save_pretrained(tmp)
        model = merge_adapter(settings.base, checkpoint)
    model.config.eos_token_id = tokenizer.token_to_id("<|im_end|>")  # the base's config, with LoRA
    return save_hf(model, out_dir / "model", tokenizer)


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path):
    """The base model with the adapters of `adapter_dir` merged in: a plain `MiniLlama`."""
    from minillama.finetune.lora import load_adapter, merge_lora
    from minillama.model import MiniLlama

    model = MiniLlama.from_pretrained(base_dir)
    load_adapter(model, adapter_dir)
    return merge_lora(model)
