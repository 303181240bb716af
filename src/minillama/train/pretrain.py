"""Pretraining: make sure a tokenizer and token files exist, build the model, run the loop."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
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

    if config.run.init_from:
        from minillama.model import load_config

        context = load_config(ckpt.resolve_checkpoint(config.run.init_from)).max_position_embeddings
    else:
        context = config.model.build().max_position_embeddings  # positions do not depend on the tokenizer
    if config.data.seq_len > context:
        raise ValueError(f"data.seq_len {config.data.seq_len} is longer than the model's context "
                         f"(max_position_embeddings {context}); lower data.seq_len or raise "
                         "model.max_position_embeddings")
    if not config.data.prepared:
        from minillama.data.mixture import parse_mixture

        mixture = parse_mixture(config.data.dataset)
        for name, _ in mixture or [(config.data.dataset, 1.0)]:
            resolve_dataset(name, utf8_errors=config.data.utf8_errors)
        if mixture and not (config.data.tokenizer or config.run.init_from):
            raise MiniLlamaError("a data mixture needs a tokenizer: set data.tokenizer, or run.init_from a model "
                                 "saved with its tokenizer")
    if config.optim.trainable == "new-embeddings":
        from minillama.model.resize import EXTENSION_FILE

        if not config.run.init_from or not (ckpt.resolve_checkpoint(config.run.init_from) / EXTENSION_FILE).is_file():
            raise MiniLlamaError("optim.trainable new-embeddings trains the rows `minillama model resize-vocab` "
                                 f"added: set run.init_from to a model it made (with {EXTENSION_FILE})")
    ckpt.resume_source(config.run.out_dir, config.run.resume)


def pretrain(config: TrainConfig, lock: DirectoryLock | None = None) -> TrainingResult:
    """Train a language model from scratch (or resume) as `config` says; returns the result.
    The run directory is locked for the whole run (`lock`: the caller's hold on it, if any)."""
    from minillama.data import TokenLoader
    from minillama.data.mixture import parse_mixture

    dist = Distributed.from_env(config.run.device, config.run.threads)
    claimed = None
    try:
        check_before_work(config)
        if lock is None and dist.is_main:
            lock = claimed = ckpt.claim_run_directory(config.run.out_dir)
        init_dir = ckpt.resolve_checkpoint(config.run.init_from) if config.run.init_from else None
        if init_dir is not None and not config.data.tokenizer:  # continued pretraining: the model's tokenizer
            if not (init_dir / "tokenizer.json").is_file():
                raise MiniLlamaError(f"{init_dir} holds no tokenizer.json; name the model's tokenizer",
                                     remedy=("tokenizer", "DIR", "name it"))
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, tokenizer=str(init_dir)))
        mixture = None if config.data.prepared else parse_mixture(config.data.dataset)
        if mixture:
            tokenizer_dir = ensure_tokenizer(config, dist)
            parts = prepare_mixture(config, dist, tokenizer_dir, mixture)
            meta = parts[0][2]
        else:
            tokenizer_dir, prepared, meta = ensure_data(config, dist)
        torch.manual_seed(config.run.seed)
        if init_dir is not None:
            model = initial_model(config, init_dir, tokenizer_dir)
        else:
            model = MiniLlama(build_model_config(config, tokenizer_dir))
        if config.data.prepared and not mixture:  # said once the model is known to fit the tokenizer
            log.info("training on the token files in %s (%s)", prepared, meta.get("source"))
        if config.optim.trainable == "new-embeddings":
            config = train_only_new_embeddings(config, model, init_dir)
        if config.run.gradient_checkpointing:
            model.set_gradient_checkpointing(True)
        data = config.data
        if mixture:
            train_batches, evaluate = mixture_batches(config, dist, parts)
        else:
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
        if dist.is_main and result.val_loss is not None and not mixture:
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


# ---- continued pretraining: start from a model, a weighted data mixture ------------------------------
def initial_model(config: TrainConfig, init_dir: Path, tokenizer_dir: Path) -> MiniLlama:
    """The model in `init_dir` (run.init_from), checked against the tokenizer it will train with."""
    from minillama.tokenizer import Tokenizer, check_tokenizer_matches

    if config.model.overrides:
        log.warning("run.init_from: the model's own shape is used; model.%s ignored",
                    ", model.".join(config.model.overrides))
    from minillama.model.layout import quantization_config

    if quantization_config(init_dir) is not None:  # its integer codes cannot take gradients
        raise MiniLlamaError(f"{init_dir} is a quantized model (minillama quantize); train from its float "
                             "checkpoint (for a model that quantizes well: --run.qat int4)")
    model = MiniLlama.from_pretrained(init_dir)
    check_tokenizer_matches(Tokenizer.from_pretrained(tokenizer_dir), model.config.vocab_size, init_dir)
    log.info("starting from the weights in %s (%d tokens)", init_dir, model.config.vocab_size)
    return model


def train_only_new_embeddings(config: TrainConfig, model: MiniLlama, init_dir: Path | None) -> TrainConfig:
    """Freeze everything but the embedding (and an untied head); zero the gradient of the old rows.
    With weight decay off, AdamW then leaves every old weight exactly as it was (zero gradient,
    zero moments, zero update). Returns the config with weight decay 0."""
    import json

    from minillama.model.resize import EXTENSION_FILE

    record = init_dir / EXTENSION_FILE if init_dir is not None else None
    if record is None or not record.is_file():
        raise MiniLlamaError(f"optim.trainable new-embeddings: {init_dir} is not a model made by `minillama model "
                             f"resize-vocab` (no {EXTENSION_FILE} naming the new rows)")
    old_size = json.loads(record.read_text(encoding="utf-8"))["old_vocab_size"]
    keep = torch.zeros(model.config.vocab_size, 1)
    keep[old_size:] = 1.0
    for param in model.parameters():
        param.requires_grad_(False)
    matrices = {id(p): p for p in (model.model.embed_tokens.weight, model.lm_head.weight)}
    for param in matrices.values():
        param.requires_grad_(True)
        param.register_hook(lambda grad: grad * keep.to(grad.device, grad.dtype))
    log.info("training only the %d new embedding rows (ids %d..%d); weight decay off",
             model.config.vocab_size - old_size, old_size, model.config.vocab_size - 1)
    return dataclasses.replace(config, optim=dataclasses.replace(config.optim, weight_decay=0.0))


def prepare_mixture(config: TrainConfig, dist: Distributed, tokenizer_dir: Path,
                    mixture: list[tuple[str, float]]) -> list[tuple[str, float, dict, Path]]:
    """Token files of each component in OUT/data-mixture/<i>-<name> (prepared if missing or out of
    date): [(name, weight, meta, directory)]."""
    from minillama.data import prepare_dataset, read_meta

    root = Path(config.run.out_dir) / "data-mixture"
    parts = []
    for i, (name, weight) in enumerate(mixture):
        path = root / f"{i}-{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(name).name)[:40]}"
        if dist.is_main:
            prepare_dataset(tokenizer_dir, name, path, progress=config.run.progress,
                            utf8_errors=config.data.utf8_errors)
        dist.barrier()
        parts.append((name, weight, read_meta(path), path))
    return parts


def mixture_batches(config: TrainConfig, dist: Distributed, parts: list[tuple[str, float, dict, Path]]):
    """(train batches, evaluate): windows drawn by weight; validation loss the weighted mean of
    each component's (each logged)."""
    from minillama.data import TokenFile, TokenLoader
    from minillama.data.mixture import MixtureLoader

    data = config.data
    train = MixtureLoader([TokenFile(p / "train.bin") for *_, p in parts], [w for _, w, *_ in parts],
                          data.batch_size, data.seq_len, seed=config.run.seed, rank=dist.rank,
                          world_size=dist.world_size)
    vals = [(name, weight, meta, TokenLoader(p / "val.bin", data.batch_size, data.seq_len, mode="sequential",
                                             rank=dist.rank, world_size=dist.world_size))
            for name, weight, meta, p in parts]

    def evaluate(wrapped: torch.nn.Module) -> float:
        total = 0.0
        for name, weight, meta, val in vals:
            batches = val.eval_batches(data.batch_size, data.seq_len, max_batches=config.run.eval_batches)
            loss = evaluate_batches(wrapped, batches, dist.device)[0]
            if dist.is_main:
                log.info("validation %s: loss %.4f, %.3f bits per byte", name, loss, bits_per_byte(loss, meta))
            total += weight * loss
        return total

    return train, evaluate
