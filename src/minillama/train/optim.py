"""AdamW with decay only on matrices, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from minillama.train.config import OptimSection


def build_optimizer(model: nn.Module, optim: OptimSection, device_type: str) -> torch.optim.AdamW:
    """AdamW; norms, biases (1-D tensors) get no weight decay: shrinking them only hurts.
    The fused kernel (one pass over each parameter, its gradient and state) on CUDA and CPU, where
    it is 5-10x faster than foreach (20-40 ms against 190-220 ms a step for stories15M's 15M
    parameters on 2 cores: foreach's many passes are bound by memory bandwidth); foreach elsewhere."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = device_type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                             fused=fused, foreach=None if fused else True)


def learning_rate(step: int, total_steps: int, optim: OptimSection) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at `total_steps`."""
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    if step < warmup:
        return optim.lr * (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    floor = optim.lr * optim.min_lr_ratio
    return floor + 0.5 * (optim.lr - floor) * (1 + math.cos(math.pi * progress))
