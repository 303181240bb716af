"""Calibration sequences for GPTQ: a few hundred windows of training text, as the model reads it.

GPTQ only needs the statistics of each layer's inputs (X^T X), so a small random sample of the
training distribution is enough; the validation text is kept out so the measured bits per byte
stay honest.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from minillama.errors import MiniLlamaError


def calibration_tokens(source: str | os.PathLike, tokenizer_dir: str | os.PathLike, vocab_size: int,
                       needed: int, seed: int = 0) -> np.ndarray:
    """At least `needed` token ids (1-D int64) from `source`: a prepared data directory or token
    file (`minillama prepare`'s train.bin, read as it is), or a dataset name / text file (its training
    documents in a seeded random order, encoded with the model's tokenizer, EOS after each)."""
    from minillama.data import load_documents
    from minillama.data.tokenfile import TokenFile
    from minillama.tokenizer import Tokenizer, check_tokenizer_matches

    path = Path(source)
    if path.is_dir() and (path / "train.bin").is_file():
        path = path / "train.bin"
    if path.suffix == ".bin" and path.is_file():
        tokens = np.asarray(TokenFile(path).tokens, dtype=np.int64)
        if tokens.size and tokens.max() >= vocab_size:
            raise MiniLlamaError(f"{path} holds token ids up to {tokens.max()}, beyond the model's {vocab_size}: "
                                 "it was prepared with another tokenizer")
        return tokens
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    check_tokenizer_matches(tokenizer, vocab_size, tokenizer_dir)
    documents = list(load_documents(str(source), "train"))
    order = np.random.default_rng(seed).permutation(len(documents))
    ids: list[int] = []
    for start in range(0, len(order), 64):  # encode only as many documents as the windows need
        batch = [documents[i] for i in order[start:start + 64]]
        for encoded in tokenizer.encode_batch(batch):
            ids += [*encoded, tokenizer.eos_token_id]
        if len(ids) >= needed:
            break
    return np.asarray(ids, dtype=np.int64)


def calibration_windows(tokens: np.ndarray, count: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """(count, seq_len) int64: windows at seeded random offsets of `tokens` (fewer if too short)."""
    if len(tokens) <= seq_len:
        raise MiniLlamaError(f"the calibration text has {len(tokens)} tokens, fewer than one window of {seq_len}")
    starts = np.random.default_rng(seed).integers(0, len(tokens) - seq_len, size=count)
    return torch.from_numpy(np.stack([tokens[s:s + seq_len] for s in starts]))
