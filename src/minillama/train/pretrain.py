"""Pretraining: make sure a tokenizer and token files exist, build the model, run the loop."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from minillama.errors import MiniLlamaError
from minillama.files import DirectoryLock
from minillama.model import MiniLlama, ModelConfig
from minillama.train import checkpoint as ckpt
from minillama.train.config import DataSection, TrainConfig
from minillama.train.distributed import Distributed
from minillama.train.loop import Trainer, TrainingResult, evaluate_batches

log = logging.getLogger(__name__)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def ensure_tokenizer(config: TrainConfig, dist: Distributed) -> Path:
    """The configured tokenizer directory, or OUT/tokenizer (trained on the dataset if missing)."""
    if config.data.tokenizer:
        path = Path(config.data.tokenizer)
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{path} has no tokenizer.json; train one with `minillama tokenizer train`")
        return path
    path = Path(config.run.out_dir) / "tokenizer"
    if dist.is_main and not (path / "tokenizer.json").is_file():
        from minillama.data import dataset_text_files
        from minillama.tokenizer import train_tokenizer

        log.info("training a %d-token BPE tokenizer into %s", config.data.vocab_size, path)
        with dataset_text_files(config.data.dataset, utf8_errors=config.data.utf8_errors) as inputs:
            train_tokenizer(inputs, config.data.vocab_size, list(SPECIAL_TOKENS), path,
                            utf8_errors=config.data.utf8_errors)
    dist.barrier()
    return path


def ensure_data(config: TrainConfig, dist: Distributed) -> tuple[Path, Path, dict]:
    """(tokenizer dir, token files dir, their meta). Token files that are the user's (data.prepared)
    or that this run has trained on (OUT/data once it has checkpoints) are used as they are, never
    rewritten: checked against their tokenizer (data.tokenizer, OUT/tokenizer, or the one their
    meta.json names). Otherwise OUT/data is prepared (a no-op when up to date)."""
    from minillama.data import check_prepared, prepare_dataset, read_meta

    data, out = config.data, Path(config.run.out_dir)
    path = Path(data.prepared or out / "data")
    trained_on = not data.prepared and ckpt.list_checkpoints(out / "checkpoints")
    if (data.prepared or trained_on) and read_meta(path) is not None:
        meta = read_meta(path)
        tokenizer_dir = Path(data.tokenizer or (out / "tokenizer" if trained_on else meta.get("tokenizer_dir", "")))
        if not (tokenizer_dir / "tokenizer.json").is_file():
            raise MiniLlamaError(f"the token files in {path} were made with the tokenizer in {tokenizer_dir}, "
                                 "which is gone; pass the tokenizer directory", remedy=("tokenizer", "DIR", "name it"))
        meta = check_prepared(path, tokenizer_dir)
        _check_same_dataset(data, meta, path)
        return tokenizer_dir, path, meta
    tokenizer_dir = ensure_tokenizer(config, dist)
    if dist.is_main:
        prepare_dataset(tokenizer_dir, data.dataset, path, val_dataset=data.val_dataset,
                        progress=config.run.progress, utf8_errors=data.utf8_errors)
    dist.barrier()
    return tokenizer_dir, path, read_meta(path)


def _check_same_dataset(data: DataSection, meta: dict, path: Path) -> None:
    """A dataset named besides token files used as they are must be the one they hold (the default
    name just means "whatever they hold")."""
    if data.dataset == DataSection().dataset:
        return
    from minillama.data import resolve_dataset

    source = resolve_dataset(data.dataset, utf8_errors=data.utf8_errors)[0]
    if source.fingerprint() != meta["inputs"].get("train_data"):
        raise MiniLlamaError(f"{path} holds token files of {meta.get('source')}, not of {data.dataset}; leave "
                             "data.dataset out to train on them, or train on the new data in a new directory",
                             remedy=ckpt.NEW_OUT_DIR)


def build_model_config(config: TrainConfig, tokenizer_dir: Path) -> ModelConfig:
    """The model's shape: the preset and overrides, with the tokenizer's vocabulary and ids."""
    from minillama.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    return config.model.build(vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id,
                              bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)


def check_before_work(config: TrainConfig) -> None:
    """What can be refused before any tokenizer or data work: windows longer than the model's
    context, a dataset that does not exist or cannot be read, a resume that would mix runs."""
    from minillama.data import resolve_dataset

    context = config.model.build().max_position_embeddings  # positions do not depend on the tokenizer
    if config.data.seq_len > context:
        raise ValueError(f"data.seq_len {config.data.seq_len} is longer than the model's context "
                         f"(max_position_embeddings {context}); lower data.seq_len or raise "
                         "model.max_position_embeddings")
    if not config.data.prepared:
        resolve_dataset(config.data.dataset, utf8_errors=config.data.utf8_errors)
    ckpt.resume_source(config.run.out_dir, config.run.resume)


def pretrain(config: TrainConfig, lock: DirectoryLock | None = None) -> TrainingResult:
    """Train a language model from scratch (or resume) as `config` says; returns the result.
    The run directory is locked for the whole run (`lock`: the caller's hold on it, if any)."""
    from minillama.data import TokenLoader

    dist = Distributed.from_env(config.run.device, config.run.threads)
    claimed = None
    try:
        check_before_work(config)
        if lock is None and dist.is_main:
            lock = claimed = ckpt.claim_run_directory(config.run.out_dir)
        tokenizer_dir, prepared, meta = ensure_data(config, dist)
        model_config = build_model_config(config, tokenizer_dir)
        if config.data.prepared:
            log.info("training on the token files in %s (%s)", prepared, meta.get("source"))
        torch.manual_seed(config.run.seed)
        model = MiniLlama(model_config)
        if config.run.gradient_checkpointing:
            model.set_gradient_checkpointing(True)
        data = config.data
        train_batches = TokenLoader(prepared / "train.bin", data.batch_size, data.seq_len, mode=data.loader,
                                    seed=config.run.seed, rank=dist.rank, world_size=dist.world_size)
        val = TokenLoader(prepared / "val.bin", data.batch_size, data.seq_len, mode="sequential",
                          rank=dist.rank, world_size=dist.world_size)

        def evaluate(wrapped: torch.nn.Module) -> float:
            batches = val.eval_batches(data.batch_size, data.seq_len, max_batches=config.run.eval_batches)
            return evaluate_batches(wrapped, batches, dist.device)[0]

        trainer = Trainer(config, model, train_batches, evaluate, dist, tokenizer_dir=tokenizer_dir,
                          extra_state={"tokenizer_hash": meta.get("tokenizer_hash")}, lock=lock)
        result = trainer.fit()
        if dist.is_main and result.val_loss is not None:
            at = "" if result.val_step == result.step else f" (evaluated at step {result.val_step})"
            windows = (len(val.file) - 1) // data.seq_len
            what = ("validation split" if config.run.eval_batches * data.batch_size * dist.world_size >= windows
                    else f"validation subset (first {config.run.eval_batches} batches)")
            log.info("step %d: %s%s: loss %.4f, perplexity %.2f, %.3f bits per byte", result.step, what, at,
                     result.val_loss, math.exp(result.val_loss), bits_per_byte(result.val_loss, meta))
        return result
    finally:
        if claimed is not None:
            claimed.release()
        dist.close()


def bits_per_byte(loss: float, meta: dict) -> float:
    """Nats per token -> bits per UTF-8 byte of the validation text (tokenizer-independent)."""
    return loss / math.log(2) * meta["val_tokens"] / meta["val_bytes"]
