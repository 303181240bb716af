"""`train_tokenizer`: what the pipeline and the CLI call to make a tokenizer directory."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from minillama.files import atomic_directory
from minillama.tokenizer.tokenizer import Tokenizer
from minillama.tokenizer.train import DEFAULT_SPECIAL_TOKENS, train_bpe

log = logging.getLogger(__name__)

DEFAULT_INPUT = "tinystories/tinystories_train.txt.gz"


def default_training_input() -> Path:
    """The shipped TinyStories training sample."""
    from minillama.assets import asset_path

    return asset_path(DEFAULT_INPUT)


def train_tokenizer(
    inputs: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    vocab_size: int = 4096,
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    out_dir: str | os.PathLike | None = None,
    engine: str = "minillama",
    *,
    workers: int | None = None,
    progress: bool = False,
    errors: str = "strict",
    model_max_length: int | None = None,
) -> Tokenizer:
    """Train a byte-level BPE on `inputs` (default: the shipped TinyStories sample) and, if
    `out_dir` is given, save it there (atomically: the directory is complete or untouched)."""
    inputs = default_training_input() if inputs is None else inputs
    start = time.perf_counter()
    vocab, merges = train_bpe(inputs, vocab_size, special_tokens, engine=engine, workers=workers,
                              progress=progress, errors=errors)
    tokenizer = Tokenizer(vocab, merges, list(special_tokens), model_max_length=model_max_length)
    log.info("trained a %d-token BPE (%d merges) in %.1f s", tokenizer.vocab_size, len(merges),
             time.perf_counter() - start)
    if out_dir is not None:
        with atomic_directory(out_dir) as tmp:
            tokenizer.save_pretrained(tmp)
        log.info("saved the tokenizer to %s", out_dir)
    return tokenizer
