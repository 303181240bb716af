"""Pretraining: make sure a tokenizer and token files exist, build the model, run the loop."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from minillama.model import MiniLlama, ModelConfig
from minillama.train.config import TrainConfig
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
        with dataset_text_files(config.data.dataset) as inputs:
            train_tokenizer(inputs, config.data.vocab_size, list(SPECIAL_TOKENS), path)
    dist.barrier()
    return path


def ensure_prepared(config: TrainConfig, tokenizer_dir: Path, dist: Distributed) -> tuple[Path, dict]:
    """Token files for train and val (prepared once; a no-op when they are up to date)."""
    from minillama.data import prepare_dataset

    path = Path(config.data.prepared or Path(config.run.out_dir) / "data")
    if dist.is_main:
        prepare_dataset(tokenizer_dir, config.data.dataset, path, val_dataset=config.data.val_dataset,
                        progress=config.run.progress)
    dist.barrier()
    return path, json.loads((path / "meta.json").read_text())


def build_model_config(config: TrainConfig, tokenizer_dir: Path) -> ModelConfig:
    from minillama.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    return config.model.build(vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id,
                              bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)


def pretrain(config: TrainConfig) -> TrainingResult:
    """Train a language model from scratch (or resume) as `config` says; returns the result."""
    from minillama.data import TokenLoader

    dist = Distributed.from_env(config.run.device, config.run.threads)
    try:
        Path(config.run.out_dir).mkdir(parents=True, exist_ok=True)
        tokenizer_dir = ensure_tokenizer(config, dist)
        prepared, meta = ensure_prepared(config, tokenizer_dir, dist)
        model_config = build_model_config(config, tokenizer_dir)
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
                          extra_state={"tokenizer_hash": meta.get("tokenizer_hash")})
        result = trainer.fit()
        if dist.is_main and result.val_loss is not None:
            log.info("step %d: val loss %.4f, perplexity %.2f, %.3f bits per byte", result.step,
                     result.val_loss, math.exp(result.val_loss), bits_per_byte(result.val_loss, meta))
        return result
    finally:
        dist.close()


def bits_per_byte(loss: float, meta: dict) -> float:
    """Nats per token -> bits per UTF-8 byte of the validation text (tokenizer-independent)."""
    return loss / math.log(2) * meta["val_tokens"] / meta["val_bytes"]
