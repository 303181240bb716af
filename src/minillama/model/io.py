"""Model directories with torch: ours *are* transformers model directories (config.json +
safetensors, `layout.py`), so export is a copy and transformers' own directories load here.

Loading is strict: every weight the model has is in the files, nothing else is, and every shape
is the config's; the checksum manifest is verified first when there is one. A tied weight (the LM
head sharing the embedding) is stored once, as transformers does, and tied again on loading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from minillama.errors import CheckpointError
from minillama.files import verify_manifest
from minillama.model.config import ModelConfig, config_to_hf_dict
from minillama.model.layout import WEIGHTS, check_keys, is_stored, weight_files


def read_state(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every weight of a model directory, by name (its checksums verified first, when it has them)."""
    directory = Path(directory)
    verify_manifest(directory)
    state = {}
    for path in weight_files(directory):
        try:
            with safe_open(path, framework="pt") as f:
                state.update({key: f.get_tensor(key) for key in f.keys() if is_stored(key)})
        except Exception as exc:  # safetensors raises its own error types for truncated headers
            raise CheckpointError(f"cannot read {path}: {exc}; the file is truncated or corrupted") from exc
    return state


def tied_weights(model: nn.Module) -> dict[str, str]:
    """Parameters the model holds under two names: {second name: first name}, e.g.
    {"lm_head.weight": "model.embed_tokens.weight"} for a tied LM head."""
    first: dict[int, str] = {}
    tied = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied[name] = first[id(param)]
        else:
            first[id(param)] = name
    return tied


def load_strictly(model: nn.Module, state: dict[str, torch.Tensor], directory: str | os.PathLike) -> None:
    """Load `state` into `model` (built on the meta device, its tensors replaced by these): nothing
    missing, nothing left over, every shape the model's. A tied weight may be stored once or twice
    (then the two copies must be equal)."""
    tied = tied_weights(model)
    for alias, source in tied.items():
        copy = state.pop(alias, None)
        if copy is not None and source in state and not torch.equal(copy, state[source]):
            raise CheckpointError(f"{alias} is tied to {source} in this model, but they differ in {directory}")
    expected = {key: tensor for key, tensor in model.state_dict().items() if key not in tied}
    check_keys(set(expected), set(state), directory)
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise CheckpointError(f"{key} has shape {tuple(state[key].shape)} in {directory}, the config "
                                  f"implies {tuple(tensor.shape)}")
    model.load_state_dict(state, strict=False, assign=True)  # strict: checked above, tied names aside
    for alias, source in tied.items():  # assign=True replaced the shared parameter: share it again
        module, _, name = alias.rpartition(".")
        setattr(model.get_submodule(module), name, model.get_parameter(source))


def write_weights(state: dict[str, torch.Tensor], directory: Path, config: dict[str, Any],
                  drop: tuple[str, ...] = ()) -> None:
    """model.safetensors (without the names in `drop`: tied copies) and config.json."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in drop}
    save_file(tensors, directory / WEIGHTS, metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def write_causal_lm_dir(config: ModelConfig, state: dict[str, torch.Tensor], directory: str | os.PathLike) -> None:
    """config.json + model.safetensors of a causal LM from its full state dict (a tied head is
    stored once, as transformers does)."""
    if any(key.endswith(".qweight") for key in state):  # transformers would read the int codes as garbage
        raise CheckpointError("the model is quantized (minillama quantize): its integer weights have no "
                              "transformers layout; export or train from its float checkpoint")
    dtype = next(iter(state.values())).dtype
    drop = ("lm_head.weight",) if config.tie_word_embeddings else ()
    write_weights(state, Path(directory), config_to_hf_dict(config, str(dtype).removeprefix("torch.")), drop)


# ---- sequence classifiers: transformers' LlamaForSequenceClassification layout --------------------
def classifier_config(config: ModelConfig, labels: list[str], dtype: str = "float32") -> dict[str, Any]:
    """The causal LM's config.json with the architecture renamed and the labels added."""
    data = config_to_hf_dict(config, dtype)
    data["architectures"] = [data["architectures"][0].replace("ForCausalLM", "ForSequenceClassification")]
    data.update(num_labels=len(labels), id2label={str(i): name for i, name in enumerate(labels)},
                label2id={name: i for i, name in enumerate(labels)}, problem_type="single_label_classification")
    return data


def write_classifier_dir(config: ModelConfig, labels: list[str], state: dict[str, torch.Tensor],
                         directory: str | os.PathLike) -> None:
    """config.json + model.safetensors of a classifier from its full state dict (a classifier has
    no LM head: a tied state's second name for the embedding is left out)."""
    dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    write_weights(state, Path(directory), classifier_config(config, labels, dtype), drop=("lm_head.weight",))


def classifier_labels(directory: str | os.PathLike) -> list[str]:
    """The class names of a classifier directory, in class-id order."""
    data = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    id2label: dict[str, Any] = data.get("id2label") or {}
    if not data.get("architectures", [""])[0].endswith("ForSequenceClassification") or not id2label:
        raise CheckpointError(f"{directory} is not a sequence classifier (no ForSequenceClassification "
                              "architecture with id2label); train one with `minillama classify train`")
    return [id2label[str(i)] for i in range(len(id2label))]
