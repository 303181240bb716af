"""Helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from minillama.model import MiniLlama, ModelConfig


def random_model(shape: dict, seed: int = 0, perturb: float = 0.0, **overrides) -> MiniLlama:
    """A seeded random float32 `MiniLlama` of `shape` (ModelConfig fields) with `overrides`, in eval
    mode. `perturb` moves the 1-D parameters (norm weights, biases) away from their init of 1 and 0
    by perturb x N(0, 1), so that tests see them."""
    torch.manual_seed(seed)
    model = MiniLlama(ModelConfig(**{**shape, **overrides})).eval()
    if perturb:
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() == 1:
                    param.add_(perturb * torch.randn_like(param))
    return model


def numpy_twin(model: MiniLlama):
    """The NumPy engine holding `model`'s weights."""
    from minillama.numpy_model import NumpyLlama

    return NumpyLlama(model.config, {k: v.detach().numpy() for k, v in model.state_dict().items()})


def attention_inputs(B, H, K, T, S, D, causal, mask, dtype=torch.float32, device="cpu"):
    """Seeded q (B, H, T, D), k, v (B, K, S, D) that require grad, and a bool mask: None, "keys" (left
    padding of row 0, (B, 1, 1, S)) or "dense" (random, (B, 1, T, S), key 0 always allowed).
    `causal` is unused: the arguments unpack an attention test's case."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(*shape, generator=generator, dtype=dtype).to(device).requires_grad_()
               for shape in ((B, H, T, D), (B, K, S, D), (B, K, S, D)))
    if mask == "keys":  # left padding: the first keys of row 0 are padding
        keep = torch.ones(B, S, dtype=torch.bool)
        keep[0, :3] = False
        mask = keep[:, None, None, :].to(device)
    elif mask == "dense":
        mask = torch.rand(B, 1, T, S, generator=generator) > 0.3
        mask[..., 0] = True
        mask = mask.to(device)
    return q, k, v, mask


def sdpa_math_attention(q, k, v, mask, causal):
    """The reference: torch's SDPA math backend, the causal mask with queries at positions S - T + t."""
    if causal:
        T, S = q.shape[2], k.shape[2]
        lower = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        mask = lower if mask is None else mask & lower
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def attention_logsumexp(q, k, mask, causal):
    """log sum_j exp(q . k_j / sqrt(D)) over the keys each query may see: (B, H, T), -inf for none."""
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    scores = q @ k.repeat_interleave(H // K, dim=1).transpose(-1, -2) / D**0.5
    allowed = torch.ones(T, S, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril(S - T)
    if mask is not None:
        allowed = allowed & mask
    return torch.logsumexp(scores.masked_fill(~allowed, float("-inf")), dim=-1)


# ---- torchrun: data-parallel training on the CPU with gloo -------------------------------------
TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))
TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
needs_torchrun = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this Python")


def run_minillama(args: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    """`python -m minillama ARGS` in one process, or in `processes` under `torchrun --standalone`."""
    launcher = [TORCHRUN, "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
    done = subprocess.run([*launcher, "-m", "minillama", *args], capture_output=True, text=True, timeout=300,
                          env=TORCHRUN_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def logged_losses(out_dir: Path) -> tuple[list[float], list[float]]:
    """(train losses, validation losses) in a run's metrics.jsonl."""
    records = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r], [r["val_loss"] for r in records if "val_loss" in r]


def assert_losses_match(expected, actual, tolerance=1e-5):
    """Two runs' loss lists agree step for step within `tolerance`, with as many steps."""
    assert len(expected) == len(actual), (expected, actual)
    assert max(abs(a - b) for a, b in zip(expected, actual)) < tolerance, (expected, actual)
