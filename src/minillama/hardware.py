"""What this machine offers: CPUs (cores this process may use, and their instruction sets) and
the torch device a command runs on. One policy for every command. Importing it does not import
torch (only `resolve_device` does)."""

from __future__ import annotations

import os
import platform
from typing import Any

from minillama.errors import MiniLlamaError

_ON_CPU = ("device", "cpu", "run on the CPU")


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask, e.g. under taskset or a container quota)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls run natively instead of being emulated."""
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def runs_bf16_natively(device: Any) -> bool:
    """Whether bf16 matmuls run natively on this `torch.device`: a CUDA GPU that supports them, or
    a CPU with AMX / AVX512-BF16 (elsewhere torch emulates them, far slower than float32)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def cpp_compiler_available() -> bool:
    """Whether torch.compile can build CPU kernels here: inductor writes C++ and compiles it with
    $CXX, else g++ (or c++ / clang++) on the PATH."""
    import shutil

    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return any(shutil.which(name) for name in names)


def cpu_description() -> str:
    """The CPU model and its widest vector / matrix extensions, for benchmark reports:
    e.g. "Intel(R) Xeon(R) Platinum 8480+ (amx, avx512, avx2)"."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    flags = _cpu_flags()
    isa = [name for name, flag in (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"),
                                   ("avx2", "avx2"), ("neon", "asimd")) if flag in flags]
    return f"{model} ({', '.join(isa) or 'no AVX2'}), {available_cpus()} cores"


def resolve_device(requested: str = "auto", local_rank: int = 0) -> Any:
    """auto: this process's CUDA GPU (`local_rank` under torchrun), else Apple's MPS, else the CPU.
    A named device ("cpu", "cuda", "cuda:1", "mps") must exist here; if not, a one-line error.
    Returns a `torch.device`."""
    import torch

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
