"""Evaluate a checkpoint on a dataset: loss, perplexity and bits per byte."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from minillama.errors import MiniLlamaError

log = logging.getLogger(__name__)


def evaluate_checkpoint(checkpoint: str | os.PathLike, dataset: str = "tinystories-sample", split: str = "val",
                        tokenizer_dir: str | os.PathLike | None = None, seq_len: int | None = None,
                        batch_size: int = 8, device: str = "auto") -> dict:
    """Mean next-token loss over non-overlapping windows of the documents (EOS between them, as
    in training), its perplexity, and bits per UTF-8 byte of the text, which does not depend on
    the tokenizer. A named dataset uses `split`; a file path is evaluated whole."""
    from minillama.data import load_documents, windows_of
    from minillama.hardware import resolve_device
    from minillama.model import MiniLlama
    from minillama.tokenizer import Tokenizer, check_tokenizer_matches
    from minillama.train.checkpoint import resolve_checkpoint
    from minillama.train.loop import evaluate_batches

    checkpoint = resolve_checkpoint(checkpoint)
    target = resolve_device(device)
    model = MiniLlama.from_pretrained(checkpoint, device=target).eval()
    context = model.config.max_position_embeddings
    if seq_len is not None and seq_len > context:
        raise MiniLlamaError(f"windows of {seq_len} tokens are longer than the model's context "
                             f"(max_position_embeddings {context}); its loss there would mean nothing",
                             remedy=("seq_len", str(context), "evaluate within it"))
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir or checkpoint)
    check_tokenizer_matches(tokenizer, model.config.vocab_size, checkpoint)
    is_path = Path(str(dataset)).exists()
    documents = list(load_documents(dataset, "train" if is_path else split))
    if not documents:
        raise MiniLlamaError(f"{dataset} has no documents to evaluate")
    eos = tokenizer.eos_token_id
    ids = [token for encoded in tokenizer.encode_batch(documents) for token in (*encoded, eos)]
    tokens = np.asarray(ids, dtype=np.int64)
    seq_len = min(seq_len or context, len(tokens) - 1)
    with torch.no_grad():
        loss, predicted = evaluate_batches(model, windows_of(tokens, batch_size, seq_len), target)
    text_bytes = sum(len(doc.encode("utf-8")) for doc in documents)
    # Windows predict `predicted` of the len - 1 predictable tokens: count that share of the bytes.
    bytes_covered = text_bytes * predicted / (len(tokens) - 1)
    return {"checkpoint": str(checkpoint), "dataset": str(dataset), "split": None if is_path else split,
            "documents": len(documents), "tokens": len(tokens), "bytes": text_bytes,
            "loss": loss, "perplexity": math.exp(min(loss, 50)),
            "bits_per_byte": loss * predicted / math.log(2) / bytes_covered, "seq_len": seq_len}
