"""Training a translation model through the one training loop (`train.loop.Trainer`).

What differs from pretraining enters as the Trainer's hooks: the batches (padded sentence pairs,
`data.collate`), the loss (`translation_loss`: teacher-forced cross-entropy of the target, label
smoothing through the fused loss, padding ignored), the validation loss, and the checkpoint files
(`Seq2SeqFiles`: a MarianMTModel directory). Results in OUT/:

    tokenizer/            the joint English–Chinese BPE (trained on the training split)
    checkpoints/step-N/   the loop's checkpoints (each a transformers-loadable MarianMTModel)
    model/                the final model with its tokenizer and translation.json (the direction)
    report.json           BLEU and chrF of greedy and beam search on the test split
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minillama.errors import MiniLlamaError
from minillama.model.config import IGNORE_INDEX
from minillama.seq2seq import data
from minillama.seq2seq.config import Seq2SeqConfig, config_from_preset
from minillama.seq2seq.model import MiniSeq2Seq
from minillama.train.checkpoint import claim_run_directory
from minillama.train.config import TrainConfig
from minillama.train.distributed import Distributed, rank_rows
from minillama.train.loop import Trainer

log = logging.getLogger(__name__)
TRANSLATION_FILE = "translation.json"  # beside a model: its direction and data


@dataclass
class TranslateSettings:
    direction: str = "en-zh"
    data: str | None = None  # a TSV of pairs; None: the shipped Tatoeba pairs
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # Seq2SeqConfig fields over the preset
    beams: tuple[int, ...] = (1, 4)  # decodings scored on the test split at the end
    test_limit: int | None = None  # score only the first N test sentences


def translation_loss(model: nn.Module, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of the target tokens (B, T) given the source, -100 (padding) ignored;
    times the batch's `loss_weight` where it has one (its share of a global batch under torchrun:
    `data.LengthBucketedBatches`)."""
    loss = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"],
                 label_smoothing=label_smoothing).loss
    return loss * batch["loss_weight"] if "loss_weight" in batch else loss


@torch.no_grad()
def validation_loss(model: nn.Module, examples: list[data.TranslationExample], batch_size: int, pad_token_id: int,
                    device: torch.device, max_batches: int | None = None, rank: int = 0, world_size: int = 1) -> float:
    """Mean loss per target token (no smoothing) over (the first `max_batches` batches of) `examples`.

    Under torchrun the batches are global, of `batch_size` x `world_size` pairs, and rank `rank`
    scores its rows of each (`rank_rows`, which also keeps every rank running a forward for every
    global batch, as FSDP needs); it returns its summed loss over the tokens of all ranks, times the
    world size, so the mean over ranks is one process's mean."""
    rows = batch_size * world_size
    scored = examples if max_batches is None else examples[:max_batches * rows]
    total = 0.0
    for mine, counted in rank_rows(scored, batch_size, rank, world_size):
        tensors = {k: v.to(device) for k, v in data.collate(mine, pad_token_id).items()}
        loss = float(translation_loss(model, tensors))
        if counted:
            total += loss * int((tensors["labels"] != IGNORE_INDEX).sum())
    return total * world_size / max(1, sum(len(e.labels) for e in scored))


@dataclass
class Seq2SeqFiles:
    """The Trainer's `ModelFiles`: each checkpoint is a MarianMTModel directory."""

    config: Seq2SeqConfig

    def write(self, state: dict[str, torch.Tensor], directory: Path) -> None:
        from minillama.seq2seq.io import write_seq2seq_dir

        write_seq2seq_dir(self.config, state, directory)

    def read(self, directory: Path) -> dict[str, torch.Tensor]:
        return MiniSeq2Seq.from_pretrained(directory).state_dict()


def load_pairs(settings: TranslateSettings) -> list[data.Pair]:
    return data.read_pairs(settings.data) if settings.data else data.tatoeba_pairs()


def ensure_tokenizer(config: TrainConfig, train_pairs: list[data.Pair], out_dir: Path, dist: Distributed,
                     max_len: int) -> Path:
    """data.tokenizer, or OUT/tokenizer: a joint BPE trained on the training split (once)."""
    if config.data.tokenizer:
        return Path(config.data.tokenizer)
    path = out_dir / "tokenizer"
    if dist.is_main and not (path / "tokenizer.json").is_file():
        data.train_joint_tokenizer(train_pairs, config.data.vocab_size, path, model_max_length=max_len)
    dist.barrier()
    return path


def build_model(settings: TranslateSettings, tokenizer: Any) -> MiniSeq2Seq:
    """A fresh model of the preset and overrides, its vocabulary and special ids the tokenizer's."""
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None or tokenizer.pad_token_id == \
            tokenizer.eos_token_id:
        raise MiniLlamaError("a translation tokenizer needs distinct EOS and padding tokens; leave "
                             "data.tokenizer out to train one")
    ids = dict(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id,
               eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    return MiniSeq2Seq(config_from_preset(settings.preset, **{**ids, **settings.model}))


def train_translation(config: TrainConfig, settings: TranslateSettings) -> dict[str, Any]:
    """Train on the training split (validating on the validation split); at the end write OUT/model
    and score it on the test split (report.json)."""
    from minillama.tokenizer import Tokenizer

    data.check_direction(settings.direction)
    splits = data.split_pairs(load_pairs(settings))  # bad data is refused before the run directory is made
    dist = Distributed.from_env(config.run.device, config.run.threads)
    lock = claim_run_directory(config.run.out_dir) if dist.is_main else None
    try:
        out_dir = Path(config.run.out_dir)
        max_len = config_from_preset(settings.preset, **settings.model).max_position_embeddings
        tokenizer_dir = ensure_tokenizer(config, splits["train"], out_dir, dist, max_len)
        tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
        torch.manual_seed(config.run.seed)
        model = build_model(settings, tokenizer)
        train, skipped = data.encode_pairs(tokenizer, data.oriented(splits["train"], settings.direction), max_len)
        validation, _ = data.encode_pairs(tokenizer, data.oriented(splits["validation"], settings.direction), max_len)
        if skipped and dist.is_main:
            log.info("left out %d training pairs longer than %d tokens", skipped, max_len)
        pad = model.config.pad_token_id
        batches = data.LengthBucketedBatches(train, config.data.batch_size, partial(data.collate, pad_token_id=pad),
                                             seed=config.run.seed, rank=dist.rank, world_size=dist.world_size)

        def evaluate(wrapped: nn.Module) -> float:
            return validation_loss(wrapped, validation, config.data.batch_size, pad, dist.device,
                                   config.run.eval_batches, dist.rank, dist.world_size)

        mean_target = sum(len(e.labels) for e in train) / len(train)
        trainer = Trainer(config, model, batches, evaluate, dist, batch_loss=translation_loss,
                          tokens_per_batch=round(config.data.batch_size * mean_target), tokenizer_dir=tokenizer_dir,
                          model_files=Seq2SeqFiles(model.config), lock=lock,
                          extra_state={"translate": dataclasses.asdict(settings)})
        result = trainer.fit()
        report: dict[str, Any] = {"steps": result.step, "stopped_by": result.stopped_by,
                                  "train_minutes": round(result.seconds / 60, 2), "train_loss": result.train_loss,
                                  "val_loss": result.val_loss, "checkpoint": str(result.checkpoint),
                                  "direction": settings.direction, "train_pairs": len(train),
                                  "parameters": sum(p.numel() for p in model.parameters())}
        if dist.is_main and result.stopped_by == "budget" and result.checkpoint is not None:
            report |= finish(result.checkpoint, tokenizer, out_dir, splits, settings, config.data.batch_size)
        return report
    finally:
        if lock is not None:
            lock.release()
        dist.close()


def save_translation_model(model: MiniSeq2Seq, tokenizer: Any, directory: Path, settings: dict[str, Any],
                           overwrite: bool = False) -> Path:
    """A MarianMTModel directory with the tokenizer (AutoModelForSeq2SeqLM and AutoTokenizer load
    it) and translation.json (the direction), atomically, checksummed."""
    from minillama.files import atomic_directory
    from minillama.seq2seq.io import write_seq2seq_dir

    with atomic_directory(directory, "model", overwrite=overwrite) as tmp:
        write_seq2seq_dir(model.config, model.state_dict(), tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / TRANSLATION_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return directory


def translation_settings(directory: str | Path) -> dict[str, Any]:
    """The direction (and data) a model was trained for: its translation.json, or a checkpoint's
    trainer_state.json; {} when neither says."""
    directory = Path(directory)
    if (directory / TRANSLATION_FILE).is_file():
        return json.loads((directory / TRANSLATION_FILE).read_text(encoding="utf-8"))
    state = directory / "trainer_state.json"
    if state.is_file():
        return json.loads(state.read_text(encoding="utf-8")).get("translate", {})
    return {}


def finish(checkpoint: Path, tokenizer: Any, out_dir: Path, splits: dict[str, list[data.Pair]],
           settings: TranslateSettings, batch_size: int) -> dict[str, Any]:
    """OUT/model from the last checkpoint, its test scores and bytes per token in OUT/report.json."""
    from minillama.files import atomic_write_text
    from minillama.seq2seq.evaluate import evaluate_translations

    model = MiniSeq2Seq.from_pretrained(checkpoint).eval()
    info = {"direction": settings.direction, "data": settings.data or data.TATOEBA}
    save_translation_model(model, tokenizer, out_dir / "model", info)
    train = splits["train"]
    report: dict[str, Any] = {"model": str(out_dir / "model"), "bytes_per_token": {
        "en": round(data.bytes_per_token(tokenizer, [p.en for p in train]), 3),
        "zh": round(data.bytes_per_token(tokenizer, [p.zh for p in train]), 3)}}
    test = data.with_references(data.oriented(splits["test"], settings.direction))
    report["test"] = evaluate_translations(model, tokenizer, test, settings.direction.split("-")[1], settings.beams,
                                           batch_size, settings.test_limit)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
