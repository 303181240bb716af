"""Training checkpoints that survive crashes, kill -9 and flipped bits.

Layout of OUT/checkpoints/:
    step-000500/    model.safetensors, config.json (MiniLlama.from_pretrained loads it),
                    trainer_state.json (step, data-loader state, counters, train config, tokenizer
                    hash), optimizer.pt (optimizer and RNG state), tokenizer files, checksums.sha256
    latest          text file naming the newest complete checkpoint
    best            text file naming the checkpoint with the lowest validation loss

Each checkpoint is written into a temporary directory, fsynced, renamed into place, and only then
named by `latest`, so a crash at any moment leaves the previous checkpoint usable. Loading verifies
the checksum manifest and falls back to the newest older checkpoint that verifies.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minillama.errors import CheckpointError
from minillama.files import atomic_directory, atomic_write_text, verify_manifest

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step-(\d+)$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class LoadedCheckpoint:
    path: Path
    state: dict[str, Any]  # trainer_state.json
    tensors: dict[str, Any]  # optimizer.pt: optimizer state and RNG states


def save_checkpoint(checkpoints: Path, step: int, write_model: Callable[[dict[str, Any], Path], None],
                    model_state: dict[str, torch.Tensor], tensors: dict[str, Any], state: dict[str, Any],
                    tokenizer_dir: Path | None, keep_last: int, val_loss: float | None) -> Path:
    """Write step-XXXXXX atomically, point `latest` (and `best` if improved) at it, prune old ones.

    `model_state` is the full (unsharded) model state dict; `write_model(model_state, directory)`
    writes its files (the Trainer's `ModelFiles.write`).
    """
    target = checkpoints / f"step-{step:06d}"
    with atomic_directory(target) as tmp:
        write_model(model_state, tmp)
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        torch.save(tensors, tmp / "optimizer.pt")
        if tokenizer_dir is not None:
            for name in TOKENIZER_FILES:
                if (tokenizer_dir / name).is_file():
                    shutil.copy2(tokenizer_dir / name, tmp / name)
    atomic_write_text(checkpoints / "latest", target.name + "\n")
    best = read_pointer(checkpoints, "best")
    best_loss = _state_of(best).get("val_loss") if best else None
    if val_loss is not None and (best_loss is None or val_loss < best_loss):
        atomic_write_text(checkpoints / "best", target.name + "\n")
    _prune(checkpoints, keep_last)
    return target


def read_pointer(checkpoints: Path, name: str) -> Path | None:
    pointer = checkpoints / name
    if not pointer.is_file():
        return None
    path = checkpoints / pointer.read_text().strip()
    return path if path.is_dir() else None


def _state_of(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return {}


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete step directories, newest first."""
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)), reverse=True)


def _prune(checkpoints: Path, keep_last: int) -> None:
    keep = {p for p in (read_pointer(checkpoints, "latest"), read_pointer(checkpoints, "best")) if p}
    for path in list_checkpoints(checkpoints)[keep_last:]:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
    for leftover in checkpoints.glob(".step-*.tmp-*"):  # from a save that was killed
        shutil.rmtree(leftover, ignore_errors=True)


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Verify and read one checkpoint directory."""
    verify_manifest(path, required=True)
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        tensors = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read the training state in {path}: {exc}") from exc
    return LoadedCheckpoint(path, state, tensors)


def load_latest_good(checkpoints: Path) -> LoadedCheckpoint | None:
    """The newest checkpoint that verifies: `latest` first, then older ones, with a warning for
    each corrupted one skipped. None when the directory has no checkpoint at all."""
    candidates = list_checkpoints(checkpoints)
    latest = read_pointer(checkpoints, "latest")
    if latest in candidates:
        candidates.remove(latest)
        candidates.insert(0, latest)
    errors = []
    for path in candidates:
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s", path.name, exc)
            errors.append(str(exc))
    if errors:
        raise CheckpointError(f"no usable checkpoint in {checkpoints}: {errors[0]}")
    return None
