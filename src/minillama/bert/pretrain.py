"""MLM pretraining of a BERT through the one `Trainer`: a BERT tokenizer and token files, the
masked batches (`masking.MLMBatches`), the masked-LM loss and the BertForMaskedLM files.

What differs from causal pretraining enters through the Trainer's hooks: `batch_loss`
(`mlm_loss`), `model_files` (`BertFiles`: each checkpoint is a transformers BertForMaskedLM
directory with its tokenizer), `evaluate` (masked-token loss on the validation windows, the
accuracy logged) and `tokens_per_batch`. Checkpoints, exact resume, the time budget, progress,
loss curves and DDP come from the loop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from minillama.bert.config import BertConfig
from minillama.bert.masking import MLM_PROBABILITY, MLMBatches, batch_generator, check_mlm_probability
from minillama.errors import MiniLlamaError
from minillama.train import checkpoint as ckpt
from minillama.train.config import TrainConfig
from minillama.train.distributed import Distributed
from minillama.train.loop import Trainer, TrainingResult

log = logging.getLogger(__name__)
EVAL_SEED = 20191  # validation masks are the same at every evaluation, so the scores compare


@dataclass
class BertModelSettings:
    """The [model] of `minillama bert pretrain`: a BERT preset and BertConfig overrides."""

    preset: str = "mini"
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def build(self, vocab_size: int, pad_token_id: int) -> BertConfig:
        wanted = self.overrides.get("vocab_size")
        if wanted is not None and wanted < vocab_size:
            raise ValueError(f"model.vocab_size {wanted} is smaller than the tokenizer's {vocab_size} tokens")
        return BertConfig.from_preset(self.preset, **{"vocab_size": vocab_size, "pad_token_id": pad_token_id,
                                                      **self.overrides})


def mlm_loss(model: nn.Module, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the selected (masked) positions of batch = input_ids, labels,
    attention_mask, each (B, T); times the batch's `loss_weight` where it has one (its share of a
    global batch under torchrun: `MLMBatches.share`)."""
    loss = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 label_smoothing=label_smoothing).loss
    return loss * batch["loss_weight"] if "loss_weight" in batch else loss


@dataclass
class BertFiles:
    """The Trainer's `ModelFiles`: transformers' BertForMaskedLM layout."""

    config: BertConfig

    def write(self, state: dict[str, torch.Tensor], directory: Path) -> None:
        from minillama.bert.io import write_bert_dir

        write_bert_dir(self.config, state, directory, "BertForMaskedLM")

    def read(self, directory: Path) -> dict[str, torch.Tensor]:
        from minillama.bert.model import BertForMaskedLM

        return BertForMaskedLM.from_pretrained(directory).state_dict()


@torch.no_grad()
def mlm_scores(model: nn.Module, framed: Iterator[dict[str, torch.Tensor]], device: torch.device,
               dist: Distributed | None = None) -> dict[str, float]:
    """Masked-token loss and accuracy (the original token is the arg max) over masked batches;
    with `dist` (under torchrun, each rank scoring its share) over all ranks' batches."""
    sums = torch.zeros(3, dtype=torch.float64)  # loss, correct guesses, masked tokens
    for batch in framed:
        batch = {k: v.to(device) for k, v in batch.items()}
        selected = batch["labels"] != -100
        # every rank runs every forward, even with nothing selected: FSDP gathers weights collectively
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits[selected]  # (n, V)
        loss = nn.functional.cross_entropy(logits.float(), batch["labels"][selected], reduction="sum")
        correct = (logits.argmax(-1) == batch["labels"][selected]).sum()
        sums += torch.tensor([float(loss), int(correct), int(selected.sum())], dtype=torch.float64)
    if dist is not None and dist.world_size > 1:
        sums = sums.to(dist.device)
        torch.distributed.all_reduce(sums)
        sums = sums.cpu()
    loss, correct, count = sums.tolist()
    if count == 0:
        raise MiniLlamaError("the validation text is too short for one window; use a shorter data.seq_len")
    return {"loss": loss / count, "accuracy": correct / count, "masked_tokens": int(count)}


def validation_batches(batches: MLMBatches, tokens: np.ndarray, batch_size: int, seq_len: int,
                       max_batches: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Fixed windows of `seq_len - 2` tokens over `tokens`, framed and masked with fixed seeds, in
    global batches of `batch_size` x world size of which this rank gets its share (`batches.share`)."""
    from minillama.data import windows_of

    global_batch = batch_size * batches.world_size
    for i, (windows, _) in enumerate(windows_of(tokens, global_batch, seq_len - 2, max_batches=max_batches)):
        yield batches.share(batches.frame(windows, batch_generator(EVAL_SEED, i), MLM_PROBABILITY))


def ensure_bert_tokenizer(config: TrainConfig, dist: Distributed) -> Path:
    """data.tokenizer, run.init_from's, or OUT/tokenizer: a BERT BPE trained on the dataset when missing."""
    if config.data.tokenizer:
        return Path(config.data.tokenizer)
    if config.run.init_from:
        return ckpt.resolve_checkpoint(config.run.init_from)
    path = Path(config.run.out_dir) / "tokenizer"
    if dist.is_main and not (path / "tokenizer.json").is_file():
        from minillama.bert.tokenizer import train_bert_tokenizer
        from minillama.data import dataset_text_files

        log.info("training a %d-token BERT BPE tokenizer into %s", config.data.vocab_size, path)
        with dataset_text_files(config.data.dataset, utf8_errors=config.data.utf8_errors) as inputs:
            train_bert_tokenizer(inputs, config.data.vocab_size, path, utf8_errors=config.data.utf8_errors)
    dist.barrier()
    return path


def pretrain_bert(config: TrainConfig, model_settings: BertModelSettings,
                  mlm_probability: float = MLM_PROBABILITY) -> TrainingResult:
    """Pretrain (or resume) a BertForMaskedLM as `config` says, selecting a share `mlm_probability` of
    the tokens for the loss (BERT's 15 % by default; validation always masks 15 %, so runs at
    different rates compare); returns the Trainer's result."""
    from minillama.bert.model import BertForMaskedLM
    from minillama.bert.tokenizer import load_bert_tokenizer
    from minillama.data import TokenLoader
    from minillama.train.pretrain import ensure_data

    check_mlm_probability(mlm_probability)
    dist = Distributed.from_env(config.run.device, config.run.threads)
    lock = None
    try:
        # refused before any data work: another family to start from, windows longer than the positions
        init_dir = ckpt.resolve_checkpoint(config.run.init_from) if config.run.init_from else None
        initial = load_masked_lm(init_dir) if init_dir is not None else None
        positions = (initial.config if initial is not None else model_settings.build(2**20, 0)).max_position_embeddings
        if not 3 <= config.data.seq_len <= positions:
            raise ValueError(f"data.seq_len {config.data.seq_len} must be from 3 to the model's "
                             f"max_position_embeddings {positions} ([CLS] and [SEP] included)")
        if not config.data.prepared:
            from minillama.data import resolve_dataset

            resolve_dataset(config.data.dataset, utf8_errors=config.data.utf8_errors)
        ckpt.resume_source(config.run.out_dir, config.run.resume)
        if dist.is_main:
            lock = ckpt.claim_run_directory(config.run.out_dir)
        tokenizer_dir = ensure_bert_tokenizer(config, dist)
        tokenizer = load_bert_tokenizer(tokenizer_dir)
        named = dataclasses.replace(config.data, tokenizer=str(tokenizer_dir))  # prepare with the BERT BPE
        with_tokenizer = dataclasses.replace(config, data=named)
        tokenizer_dir, prepared, meta = ensure_data(with_tokenizer, dist)
        torch.manual_seed(config.run.seed)
        if initial is not None:  # continued pretraining: the model's own shape and weights
            from minillama.tokenizer import check_tokenizer_matches

            if model_settings.overrides or model_settings.preset != BertModelSettings.preset:
                log.warning("run.init_from: the model's own shape is used; the --model.* settings are ignored")
            check_tokenizer_matches(tokenizer, initial.config.vocab_size, init_dir)
            model, bert_config = initial, initial.config
        else:
            bert_config = model_settings.build(tokenizer.vocab_size, tokenizer.pad_token_id)
            model = BertForMaskedLM(bert_config)
        data = config.data
        if config.run.gradient_checkpointing:
            model.set_gradient_checkpointing(True)
        # every rank reads the global batch: its masks are one process's, and each rank takes its rows
        loader = TokenLoader(prepared / "train.bin", data.batch_size * dist.world_size, data.seq_len - 2,
                             mode=data.loader, seed=config.run.seed)
        batches = MLMBatches(loader, tokenizer, bert_config.vocab_size, config.run.seed, dist.rank, dist.world_size,
                             mlm_probability)
        val_tokens = TokenLoader(prepared / "val.bin", data.batch_size, data.seq_len - 2).file.tokens

        def evaluate(wrapped: nn.Module) -> float:
            framed = validation_batches(batches, val_tokens, data.batch_size, data.seq_len, config.run.eval_batches)
            scores = mlm_scores(wrapped, framed, dist.device, dist)  # over all ranks: the same on each
            if dist.is_main:
                log.info("validation: masked-token loss %.4f, accuracy %.3f (%d masked tokens)", scores["loss"],
                         scores["accuracy"], scores["masked_tokens"])
            return scores["loss"]

        trainer = Trainer(config, model, batches, evaluate, dist, batch_loss=mlm_loss,
                          tokens_per_batch=data.batch_size * data.seq_len, tokenizer_dir=tokenizer_dir,
                          extra_state={"tokenizer_hash": meta.get("tokenizer_hash"),
                                       "bert": dataclasses.asdict(model_settings)},
                          model_files=BertFiles(bert_config), lock=lock)
        return trainer.fit()
    finally:
        if lock is not None:
            lock.release()
        dist.close()


def evaluate_mlm(checkpoint: str | os.PathLike, dataset: str = "tinystories-sample", split: str = "val",
                 seq_len: int = 128, batch_size: int = 32, device: str = "auto",
                 max_batches: int | None = None) -> dict[str, Any]:
    """Masked-token accuracy and loss of a BERT checkpoint on a dataset's documents ([SEP] between
    them, as in training), in windows of `seq_len` tokens with BERT's masking at a fixed seed."""
    from minillama.bert.tokenizer import load_bert_tokenizer
    from minillama.data import load_documents
    from minillama.hardware import resolve_device
    from minillama.train.checkpoint import resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint)
    target = resolve_device(device)
    model = load_masked_lm(checkpoint, target)
    if seq_len > model.config.max_position_embeddings:
        raise MiniLlamaError(f"--seq-len {seq_len} is longer than the model's {model.config.max_position_embeddings} "
                             "positions")
    tokenizer = load_bert_tokenizer(checkpoint)
    is_path = Path(str(dataset)).exists()
    documents = list(load_documents(dataset, "train" if is_path else split))
    if not documents:
        raise MiniLlamaError(f"{dataset} has no documents to evaluate")
    ids = np.asarray([t for doc in tokenizer.encode_batch(documents) for t in (*doc, tokenizer.sep_token_id)])
    framer = MLMBatches(None, tokenizer, model.config.vocab_size, EVAL_SEED)
    scores = mlm_scores(model, validation_batches(framer, ids, batch_size, seq_len, max_batches=max_batches), target)
    return {"checkpoint": str(checkpoint), "dataset": str(dataset), "split": None if is_path else split,
            "documents": len(documents), "seq_len": seq_len, **scores}


def load_masked_lm(checkpoint: Path, device: torch.device | str = "cpu"):
    """The BertForMaskedLM in `checkpoint`, refusing another family or a classifier with one line."""
    from minillama.bert.config import model_family
    from minillama.bert.model import BertForMaskedLM

    if model_family(checkpoint) != "bert":
        raise MiniLlamaError(f"{checkpoint} is not a BERT model (its config.json has no model_type bert); "
                             "use a checkpoint of `minillama bert pretrain`")
    return BertForMaskedLM.from_pretrained(checkpoint, device)
