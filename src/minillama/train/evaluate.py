"""Evaluate a checkpoint on a dataset: loss, perplexity and bits per byte."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from minillama.errors import MiniLlamaError

log = logging.getLogger(__name__)


class EvaluationText(NamedTuple):
    """A dataset as the model reads it: its documents encoded and concatenated in order, each
    followed by the end-of-text token (as `minillama prepare` and training do)."""

    dataset: str
    split: str | None  # None: a file path, evaluated whole
    documents: int
    tokens: np.ndarray  # (n,) int64
    bytes: int  # UTF-8 bytes of the documents' text


def load_model(checkpoint: str | os.PathLike, device: str = "auto"):
    """(model directory, `MiniLlama` in eval mode, device) for what `--checkpoint` names."""
    from minillama.hardware import resolve_device
    from minillama.model import MiniLlama
    from minillama.train.checkpoint import resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint)
    target = resolve_device(device)
    return checkpoint, MiniLlama.from_pretrained(checkpoint, device=target).eval(), target


def load_text(model, checkpoint: Path, dataset: str = "tinystories-sample", split: str = "val",
              tokenizer_dir: str | os.PathLike | None = None) -> EvaluationText:
    """Encode a dataset's documents with the checkpoint's tokenizer (or `tokenizer_dir`, which
    must match the model). A named dataset uses `split`; a file path is read whole."""
    from minillama.data import load_documents
    from minillama.tokenizer import Tokenizer, check_tokenizer_matches

    tokenizer = Tokenizer.from_pretrained(tokenizer_dir or checkpoint)
    check_tokenizer_matches(tokenizer, model.config.vocab_size, checkpoint)
    is_path = Path(str(dataset)).exists()
    documents = list(load_documents(dataset, "train" if is_path else split))
    if not documents:
        raise MiniLlamaError(f"{dataset} has no documents to evaluate")
    eos = tokenizer.eos_token_id
    ids = [token for encoded in tokenizer.encode_batch(documents) for token in (*encoded, eos)]
    return EvaluationText(str(dataset), None if is_path else split, len(documents),
                          np.asarray(ids, dtype=np.int64), sum(len(doc.encode("utf-8")) for doc in documents))


def bits_per_byte(loss: float, predicted: int, text: EvaluationText) -> float:
    """Bits per UTF-8 byte of `predicted` tokens at mean `loss` nats: the text's bytes per
    predictable token (len - 1 of them) times `predicted` is the share of the bytes they cover."""
    bytes_covered = text.bytes * predicted / (len(text.tokens) - 1)
    return loss * predicted / math.log(2) / bytes_covered


def evaluate_checkpoint(checkpoint: str | os.PathLike, dataset: str = "tinystories-sample", split: str = "val",
                        tokenizer_dir: str | os.PathLike | None = None, seq_len: int | None = None,
                        batch_size: int = 8, device: str = "auto") -> dict:
    """Mean next-token loss over non-overlapping windows of the documents (EOS between them, as
    in training), its perplexity, and bits per UTF-8 byte of the text, which does not depend on
    the tokenizer. A named dataset uses `split`; a file path is evaluated whole."""
    from minillama.data import windows_of
    from minillama.train.loop import evaluate_batches

    checkpoint, model, target = load_model(checkpoint, device)
    context = model.config.max_position_embeddings
    if seq_len is not None and seq_len > context:
        raise MiniLlamaError(f"windows of {seq_len} tokens are longer than the model's context "
                             f"(max_position_embeddings {context}); its loss there would mean nothing (to measure "
                             "it beyond its context, with RoPE scalings: minillama eval --context-lengths)",
                             remedy=("seq_len", str(context), "evaluate within it"))
    text = load_text(model, checkpoint, dataset, split, tokenizer_dir)
    tokens = text.tokens
    seq_len = min(seq_len or context, len(tokens) - 1)
    with torch.no_grad():
        loss, predicted = evaluate_batches(model, windows_of(tokens, batch_size, seq_len), target)
    return {"checkpoint": str(checkpoint), "dataset": text.dataset, "split": text.split,
            "documents": text.documents, "tokens": len(tokens), "bytes": text.bytes,
            "loss": loss, "perplexity": math.exp(min(loss, 50)),
            "bits_per_byte": bits_per_byte(loss, predicted, text), "seq_len": seq_len}
