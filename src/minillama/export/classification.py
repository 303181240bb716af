"""Classifier directories that transformers loads as `LlamaForSequenceClassification` (or
`Qwen2ForSequenceClassification` for a model with q/k/v biases).

The causal LM's `config.json` + `model.safetensors` (written by `write_model_dir`), with the
architecture renamed and the labels added (`num_labels`, `id2label`, `label2id`), so
`transformers.AutoModelForSequenceClassification.from_pretrained(dir)` needs no extra code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from minillama.errors import CheckpointError
from minillama.export.hf import IGNORED_KEYS_SUFFIXES, _read_state, write_model_dir
from minillama.files import atomic_directory, verify_manifest
from minillama.model.classification import MiniLlamaForSequenceClassification
from minillama.model.config import ModelConfig, load_config


def write_classifier_dir(config: ModelConfig, labels: list[str], state: dict[str, torch.Tensor],
                         directory: str | os.PathLike) -> None:
    """config.json + model.safetensors of a classifier from its full state dict."""
    directory = Path(directory)
    # A tied model's full state names the embedding a second time as lm_head.weight; a classifier has no head.
    state = {key: value for key, value in state.items() if key != "lm_head.weight"}
    write_model_dir(config, state, directory)
    path = directory / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["architectures"] = [data["architectures"][0].replace("ForCausalLM", "ForSequenceClassification")]
    data.update(num_labels=len(labels), id2label={str(i): name for i, name in enumerate(labels)},
                label2id={name: i for i, name in enumerate(labels)},
                problem_type="single_label_classification")
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def classifier_labels(directory: str | os.PathLike) -> list[str]:
    """The class names of a classifier directory, in class-id order."""
    data = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    id2label: dict[str, Any] = data.get("id2label") or {}
    if not data.get("architectures", [""])[0].endswith("ForSequenceClassification") or not id2label:
        raise CheckpointError(f"{directory} is not a sequence classifier (no ForSequenceClassification "
                              "architecture with id2label); train one with `minillama classify train`")
    return [id2label[str(i)] for i in range(len(id2label))]


def read_classifier_dir(directory: str | os.PathLike, device: str | torch.device = "cpu"
                        ) -> MiniLlamaForSequenceClassification:
    """Strictly load a classifier written by `write_classifier_dir` or by transformers."""
    directory = Path(directory)
    verify_manifest(directory)
    config, labels = load_config(directory), classifier_labels(directory)
    state = {k: v for k, v in _read_state(directory).items() if not k.endswith(IGNORED_KEYS_SUFFIXES)}
    with torch.device("meta"):
        model = MiniLlamaForSequenceClassification(config, labels, init=False)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"weights in {directory} do not match a {len(labels)}-label classifier: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=True, assign=True)
    model.model.rotary_emb.reset_inv_freq()  # a buffer computed from the config, not stored
    return model.to(device)


def save_hf_classifier(model: MiniLlamaForSequenceClassification, out_dir: str | os.PathLike,
                       tokenizer: Any = None, overwrite: bool = False) -> Path:
    """Export `model` (atomically) with its tokenizer, if given, for transformers."""
    with atomic_directory(out_dir, "classifier", overwrite=overwrite) as tmp:
        write_classifier_dir(model.config, model.labels, model.state_dict(), tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out_dir)
