"""Which torch device a command runs on: one policy for every command."""

from __future__ import annotations

import torch

from minillama.errors import MiniLlamaError

_ON_CPU = ("device", "cpu", "run on the CPU")


def resolve_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """auto: this process's CUDA GPU (`local_rank` under torchrun), else Apple's MPS, else the CPU.
    A named device ("cpu", "cuda", "cuda:1", "mps") must exist here; if not, a one-line error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise MiniLlamaError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MiniLlamaError(f"device {requested} is not available: this torch build has no CUDA, or no GPU "
                                 "is visible", remedy=_ON_CPU)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MiniLlamaError(f"device {requested} does not exist: {torch.cuda.device_count()} GPU(s) visible",
                                 remedy=_ON_CPU)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise MiniLlamaError(f"device {requested} is not available on this machine", remedy=_ON_CPU)
    elif device.type not in ("cpu", "cuda", "mps"):
        raise MiniLlamaError(f"device {requested!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device
