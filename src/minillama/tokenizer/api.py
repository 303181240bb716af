"""`train_tokenizer`: what the pipeline and the CLI call to make a tokenizer directory."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from minillama.errors import MiniLlamaError
from minillama.files import atomic_directory, check_output
from minillama.tokenizer.pretokenize import as_path_list
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
    utf8_errors: str = "strict",
    model_max_length: int | None = None,
    overwrite: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE on `inputs` (default: the shipped TinyStories sample) and, if
    `out_dir` is given, save it there (atomically: the directory is complete or untouched).
    `out_dir` must be new, empty or an earlier tokenizer directory, and never holds an input
    (`overwrite` replaces anything else)."""
    inputs = as_path_list(default_training_input() if inputs is None else inputs)
    if out_dir is not None:  # refused before the training, not after it
        check_output(out_dir, "tokenizer", overwrite=overwrite, inputs=inputs)
    start = time.perf_counter()
    vocab, merges = train_bpe(inputs, vocab_size, special_tokens, engine=engine, workers=workers,
                              progress=progress, errors=utf8_errors)
    tokenizer = Tokenizer(vocab, merges, list(special_tokens), model_max_length=model_max_length)
    log.info("trained a %d-token BPE (%d merges) in %.1f s", tokenizer.vocab_size, len(merges),
             time.perf_counter() - start)
    if out_dir is not None:
        with atomic_directory(out_dir, "tokenizer", overwrite=overwrite, inputs=inputs) as tmp:
            tokenizer.save_pretrained(tmp)
        log.info("saved the tokenizer to %s", out_dir)
    return tokenizer


def find_tokenizer_dir(*candidates: str | os.PathLike | None) -> Path | None:
    """The first of `candidates` that holds a tokenizer.json (None when none does)."""
    for candidate in candidates:
        if candidate and (Path(candidate) / "tokenizer.json").is_file():
            return Path(candidate)
    return None


def check_tokenizer_matches(tokenizer: Tokenizer, vocab_size: int, model_dir: str | os.PathLike | None = None,
                            ) -> None:
    """A tokenizer used with a model must be the model's: no id beyond its `vocab_size`, and the
    tokenizer saved in `model_dir` when there is one. Ids from another vocabulary would give
    numbers that look fine and mean nothing."""
    if tokenizer.vocab_size > vocab_size:
        raise MiniLlamaError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {vocab_size}; "
                             "use the tokenizer the model was trained with")
    saved = Path(model_dir) / "tokenizer.json" if model_dir is not None else None
    if saved is not None and saved.is_file():
        if type(tokenizer).from_pretrained(saved).fingerprint() != tokenizer.fingerprint():  # BERT: its own files
            raise MiniLlamaError(f"the tokenizer differs from the one saved with the model in {model_dir}; "
                                 "use that one (leave the tokenizer option out)")
    elif tokenizer.vocab_size < vocab_size:
        log.warning("the tokenizer has %d tokens, the model %d, and %s holds no tokenizer to check it against",
                    tokenizer.vocab_size, vocab_size, model_dir)
