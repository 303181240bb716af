"""Throughput helpers: the machine's measured matmul peak, for model FLOPs utilisation (MFU)."""

from __future__ import annotations

import time

import torch

# Dense bf16/fp16 tensor-core peaks (FLOP/s) of common GPUs; MFU is reported against these.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
                  "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


def measure_matmul_flops(dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 0.3,
                         device: str = "cpu") -> float:
    """Achieved FLOP/s of a square matmul: the practical peak this process can reach."""
    # A private generator: drawing from the global one would shift dropout after a resume.
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, dtype=dtype, device=device, generator=generator)
    b = torch.randn(size, size, dtype=dtype, device=device, generator=generator)
    for _ in range(3):
        a @ b
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - start)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The denominator for MFU: a datasheet figure on known GPUs, else a measured matmul."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                return flops
    return measure_matmul_flops(dtype, device=str(device))
