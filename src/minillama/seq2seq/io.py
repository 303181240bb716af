"""Seq2seq model directories: transformers' MarianMTModel layout, so export is a copy and a local
Marian directory loads here.

    config.json              MarianConfig (`seq2seq/config.py`)
    generation_config.json   decoder start, EOS, padding (what `MarianMTModel.generate` reads)
    model.safetensors        the weights under MarianMTModel's names; tied copies stored once, as
                             transformers does (the sinusoidal tables are not stored: computed)
    checksums.sha256         what minillama wrote, and the sha256 of each file (verified on loading)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from minillama.errors import CheckpointError
from minillama.model import io as model_io
from minillama.seq2seq.config import Seq2SeqConfig, config_to_hf_dict

POSITION_TABLES = ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight")


def stored_aliases(config: Seq2SeqConfig) -> tuple[str, ...]:
    """Names of tied weights left out of the file, as `MarianMTModel.save_pretrained` leaves them
    out. With untied output embeddings transformers ties nothing, not even a shared embedding's
    encoder / decoder names, so then every copy is written (equal values)."""
    if not config.tie_word_embeddings:
        return ()
    if config.share_encoder_decoder_embeddings:
        return ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")
    return ("lm_head.weight",)


def generation_config_dict(config: Seq2SeqConfig) -> dict[str, Any]:
    data = {"decoder_start_token_id": config.decoder_start_token_id, "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id, "max_length": config.max_position_embeddings}
    if config.forced_eos_token_id is not None:
        data["forced_eos_token_id"] = config.forced_eos_token_id
    return data


def write_seq2seq_dir(config: Seq2SeqConfig, state: dict[str, torch.Tensor], directory: str | os.PathLike) -> None:
    """config.json + generation_config.json + model.safetensors from a full state dict."""
    directory = Path(directory)
    dtype = str(state["final_logits_bias"].dtype).removeprefix("torch.")
    drop = stored_aliases(config) + POSITION_TABLES
    seen: set[int] = set()
    state = dict(state)
    for name, tensor in state.items():  # copies written twice (untied): safetensors wants separate storage
        if name not in drop:
            if tensor.data_ptr() in seen:
                state[name] = tensor.clone()
            seen.add(tensor.data_ptr())
    model_io.write_weights(state, directory, config_to_hf_dict(config, dtype), drop=drop)
    (directory / "generation_config.json").write_text(json.dumps(generation_config_dict(config), indent=2) + "\n",
                                                      encoding="utf-8")


def read_seq2seq_state(directory: str | os.PathLike,
                       positions: Callable[[int, int], torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights of a seq2seq directory (checksums verified first when it has them). Sinusoidal
    tables that older exports stored are checked against `positions(rows, dim)`, then dropped."""
    state = model_io.read_state(directory)
    for name in POSITION_TABLES:
        table = state.pop(name, None)
        if table is not None and not torch.allclose(table.float(), positions(*table.shape), atol=1e-5):
            raise CheckpointError(f"{name} in {directory} is not Marian's sinusoidal table; learned positions "
                                  "are not supported")
    return state
