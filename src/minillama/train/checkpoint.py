"""Training checkpoints that survive crashes, kill -9 and flipped bits.

Layout of OUT/checkpoints/:
    step-000500/    model.safetensors, config.json (MiniLlama.from_pretrained loads it),
                    trainer_state.json (step, data-loader state, counters, train config, tokenizer
                    hash), optimizer.pt (optimizer and RNG state), tokenizer files, checksums.sha256
    latest          text file naming the newest complete checkpoint
    best            text file naming the checkpoint with the lowest validation loss

Each checkpoint is written into a temporary directory, fsynced, renamed into place, and only then
named by `latest`, so a crash at any moment leaves the previous checkpoint usable. Loading verifies
the checksum manifest and falls back to the newest older checkpoint that verifies (also when a
pointer names nothing usable). Pruning to `keep_last` counts and removes only checkpoints of this
run (its `run_id`, in trainer_state.json) that verify; anything else named step-* is left alone.
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

from minillama.errors import CheckpointError, MiniLlamaError, OutputError
from minillama.files import DirectoryLock, atomic_directory, atomic_write_text, output_kind, verify_manifest

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step-(\d+)$")
RUN_MARKERS = (DirectoryLock.NAME, "checkpoints", "metrics.jsonl")  # what only a run directory holds
NEW_OUT_DIR = ("out_dir", "NEW_DIR", "start elsewhere")  # the remedy for a run that cannot go on here
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class LoadedCheckpoint:
    path: Path
    state: dict[str, Any]  # trainer_state.json
    tensors: dict[str, Any]  # optimizer.pt: optimizer state and RNG states


def save_checkpoint(checkpoints: Path, step: int, write_model: Callable[[dict[str, Any], Path], None],
                    model_state: dict[str, Any], tensors: dict[str, Any], state: dict[str, Any],
                    tokenizer_dir: Path | None, keep_last: int, val_loss: float | None,
                    verified: set[Path] | None = None) -> Path:
    """Write step-XXXXXX atomically, point `latest` (and `best` if improved) at it, prune old ones.

    `model_state` is the full (unsharded) model state dict; `write_model(model_state, directory)`
    writes its files (the Trainer's `ModelFiles.write`). `state["run_id"]` names the run whose
    checkpoints pruning may remove; `verified` remembers, across calls, the ones checked already.
    """
    import torch

    target = checkpoints / f"step-{step:06d}"
    with atomic_directory(target, "checkpoint") as tmp:
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
    verified = set() if verified is None else verified
    verified.add(target)  # just written and fsynced
    _prune(checkpoints, keep_last, state.get("run_id"), verified)
    return target


def read_pointer(checkpoints: Path, name: str) -> Path | None:
    """The step directory a pointer file names; None when it is missing or names nothing valid
    (damaged contents are not trusted as a path)."""
    pointer = checkpoints / name
    if not pointer.is_file():
        return None
    text = pointer.read_bytes()[:64].decode("ascii", errors="replace").strip()
    if not STEP_DIR.match(text):
        log.warning("ignoring %s: it does not name a step-N checkpoint", pointer)
        return None
    path = checkpoints / text
    return path if path.is_dir() else None


def _state_of(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return {}


def claim_run_directory(out_dir: str | Path) -> DirectoryLock:
    """Lock a run directory for this process (a second process is refused, naming the holder's
    PID). It must be new, empty or a minillama run: a run writes checkpoints, metrics and curves
    into it, never into someone else's folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"the run directory {out_dir} is a file; choose a new directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not any((out_dir / m).exists() for m in RUN_MARKERS):
        raise OutputError(f"{out_dir} is not empty and holds no minillama run; choose a new run directory")
    return DirectoryLock(out_dir).acquire()


def resume_source(out_dir: str | Path, mode: str) -> Path | str | None:
    """What `run.resume` means for the run in `out_dir`: "auto" (its newest good checkpoint, if
    any), None (start afresh: "never"), or the checkpoint directory to start from (a path). Refused
    when it would mix two runs in one directory, or names nothing."""
    checkpoints = Path(out_dir) / "checkpoints"
    latest = read_pointer(checkpoints, "latest") or next(iter(list_checkpoints(checkpoints)), None)
    if mode == "auto":
        return "auto"
    if mode == "never":
        if latest is not None:
            raise MiniLlamaError(f"{out_dir} already holds a run (up to {latest.name}) and run.resume is never: a "
                                 "new run there would mix with it; continue it with run.resume auto, or start "
                                 "afresh in a new directory", remedy=NEW_OUT_DIR)
        return None
    if not Path(mode).exists():
        raise MiniLlamaError(f"run.resume {mode!r} is neither auto, never, nor an existing checkpoint directory "
                             "(no such path)")
    path = resolve_checkpoint(mode)
    if latest is not None and path.resolve() != latest.resolve():
        raise MiniLlamaError(f"{out_dir} already holds a run (up to {latest.name}); starting from {path} there "
                             "would mix two runs: start from it in a new directory", remedy=NEW_OUT_DIR)
    return path


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete step directories, newest first."""
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=step_of, reverse=True)


def _prune(checkpoints: Path, keep_last: int, run_id: str | None, verified: set[Path]) -> None:
    """Keep the newest `keep_last` good checkpoints of this run (and `latest` and `best`); remove
    this run's older ones. Foreign or damaged step directories are never counted nor removed."""
    keep = {p for p in (read_pointer(checkpoints, "latest"), read_pointer(checkpoints, "best")) if p}
    good = [p for p in list_checkpoints(checkpoints) if of_run(p, run_id) and _verifies(p, verified)]
    for path in good[keep_last:]:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
            verified.discard(path)
    for leftover in checkpoints.glob(".step-*.tmp-*"):  # from a save that was killed
        shutil.rmtree(leftover, ignore_errors=True)


def step_of(path: Path) -> int:
    return int(STEP_DIR.match(path.name).group(1))


def of_run(path: Path, run_id: str | None) -> bool:
    """A checkpoint minillama wrote for this run (a run id is compared when both sides have one)."""
    if output_kind(path) != "checkpoint":
        return False
    theirs = _state_of(path).get("run_id")
    return run_id is None or theirs is None or theirs == run_id


def _verifies(path: Path, verified: set[Path]) -> bool:
    if path not in verified:
        try:
            verify_manifest(path, required=True)
        except CheckpointError:
            return False
        verified.add(path)
    return True


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Verify and read one checkpoint directory."""
    import torch

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


def resolve_checkpoint(path: str | Path) -> Path:
    """What `--checkpoint` names, the same in every command: a model directory (config.json, or a
    LoRA adapter), or a run / checkpoints directory meaning its latest checkpoint (the newest
    step-N when the `latest` pointer is missing or damaged)."""
    path = Path(path)
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    checkpoints = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = read_pointer(checkpoints, "latest") or next(iter(list_checkpoints(checkpoints)), None)
    if found is None:
        raise CheckpointError(f"{path} is not a model directory (no config.json) nor a run with checkpoints")
    return found
