"""BERT model directories: transformers' `BertForMaskedLM` / `BertForSequenceClassification`
layout (config.json + model.safetensors), so export is a key copy and transformers' own BERT
directories load here. Loading is strict and verifies the checksum manifest first (`model/io.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from minillama.bert.config import BertConfig, config_to_hf_dict, load_bert_config, read_hf_config
from minillama.errors import CheckpointError
from minillama.model import io as model_io

# Buffers some transformers versions saved with the weights; recomputed here, so skipped on loading.
BUFFER_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")
TIED_COPIES = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def write_bert_dir(config: BertConfig, state: dict[str, torch.Tensor], directory: str | Path, architecture: str,
                   labels: list[str] | None = None) -> None:
    """config.json + model.safetensors from a full state dict; tied copies (the MLM decoder's weight
    and bias) are stored once, under the embedding's and the head's bias's names, as transformers does."""
    dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    data = config_to_hf_dict(config, architecture, dtype)
    if labels is not None:
        data.update(num_labels=len(labels), id2label={str(i): name for i, name in enumerate(labels)},
                    label2id={name: i for i, name in enumerate(labels)},
                    problem_type="single_label_classification")
    model_io.write_weights(state, Path(directory), data, drop=TIED_COPIES)


def read_bert_state(directory: Path) -> dict[str, torch.Tensor]:
    state = model_io.read_state(directory)  # verifies the checksum manifest
    for key in [k for k in state if k.endswith(BUFFER_SUFFIXES)]:
        del state[key]
    # a tied pair stored under its other name only (as some transformers versions write it)
    for copy, source in zip(TIED_COPIES, ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"),
                            strict=True):
        if copy in state and source not in state:
            state[source] = state.pop(copy)
    return state


def architecture_of(directory: Path) -> str:
    return (read_hf_config(directory).get("architectures") or [""])[0]


def load_bert(cls: type, directory: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Build `cls` (BertForMaskedLM or BertForSequenceClassification) on the meta device from the
    directory's config and load its weights strictly (checksums first)."""
    config = load_bert_config(directory)
    found = architecture_of(directory)
    if found != cls.architecture:
        raise CheckpointError(f"{directory} holds a {found or 'model without architectures'}, not a "
                              f"{cls.architecture}")
    with torch.device("meta"):
        model = cls(config, classifier_labels(directory), init=False) if cls.architecture.endswith(
            "ForSequenceClassification") else cls(config, init=False)
    state = read_bert_state(directory)
    model_io.load_strictly(model, state, directory)
    return model.to(device).eval()  # as transformers loads models: dropout off until .train()


def classifier_labels(directory: Path) -> list[str]:
    data = read_hf_config(directory)
    id2label: dict[str, Any] = data.get("id2label") or {}
    if not id2label:
        raise CheckpointError(f"{directory} has no id2label: it is not a sequence classifier")
    return [id2label[str(i)] for i in range(len(id2label))]


def save_bert(model: nn.Module, out_dir: str | Path, tokenizer: Any = None, *, overwrite: bool = False,
              inputs: tuple[str | Path | None, ...] = ()) -> Path:
    """Export a BertForMaskedLM / BertForSequenceClassification (with its tokenizer) to a directory
    that transformers' `AutoModelForMaskedLM` / `AutoModelForSequenceClassification` and
    `AutoTokenizer` load with no extra code. `out_dir`: new, empty or an earlier export of the same
    kind (`files.check_output`)."""
    from minillama.files import atomic_directory

    out_dir = Path(out_dir)
    labels = getattr(model, "labels", None)
    with atomic_directory(out_dir, "classifier" if labels else "model", overwrite=overwrite, inputs=inputs) as tmp:
        write_bert_dir(model.config, model.state_dict(), tmp, model.architecture, labels)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir
