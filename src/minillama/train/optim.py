"""The optimizers (AdamW, or Muon for the blocks' matrices with AdamW for the rest) and the
learning-rate schedules (warmup + cosine, or warmup-stable-decay)."""

from __future__ import annotations

import math

import torch
from torch import nn

from minillama.hardware import runs_bf16_natively
from minillama.train.config import OptimSection
from minillama.train.muon import Muon


def build_optimizers(model: nn.Module, optim: OptimSection, device_type: str,
                     zero_redundancy: bool = False) -> list[torch.optim.Optimizer]:
    """AdamW for every trainable parameter, or with `optim.optimizer == "muon"` Muon for the weight
    matrices inside `model.blocks()` and AdamW for the rest (embeddings, head, norms, biases):
    Muon orthogonalises a matrix's momentum, which suits hidden matrices, not a lookup table or
    the logits' projection (Jordan et al. 2024). Muon's update is scaled to AdamW's RMS
    (`adjust_lr_fn="match_rms_adamw"`, Liu et al. 2025), so one learning rate serves both. It is
    `train.muon.Muon`, torch.optim.Muon's update with the iterations batched per matrix shape.

    Norms and biases (1-D tensors) get no weight decay: shrinking them only hurts. AdamW is the
    fused kernel (one pass over each parameter, its gradient and state) on CUDA and CPU, where it
    is 5-10x faster than foreach (20-40 ms against 190-220 ms a step for stories15M's 15M
    parameters on 2 cores: foreach's many passes are bound by memory bandwidth); foreach elsewhere.

    `zero_redundancy` (ZeRO stage 1, under torchrun): each optimizer becomes a PyTorch
    `ZeroRedundancyOptimizer`, which gives every rank whole parameters totalling about 1/N of the
    model, keeps their state and updates them only there, then broadcasts the new values."""
    params = [p for p in model.parameters() if p.requires_grad]
    muon: list[torch.Tensor] = []
    if optim.optimizer == "muon":
        in_blocks = {id(p) for p in model.blocks().parameters()}
        muon = [p for p in params if p.dim() == 2 and id(p) in in_blocks]
    taken = {id(p) for p in muon}
    rest = [p for p in params if id(p) not in taken]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": optim.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    fused = device_type in ("cuda", "cpu")

    def make(cls: type[torch.optim.Optimizer], params: list, **kwargs) -> torch.optim.Optimizer:
        if zero_redundancy:
            from torch.distributed.optim import ZeroRedundancyOptimizer

            return ZeroRedundancyOptimizer(params, optimizer_class=cls, **kwargs)
        return cls(params, **kwargs)

    optimizers = [make(torch.optim.AdamW, [g for g in groups if g["params"]], lr=optim.lr,
                       betas=(optim.beta1, optim.beta2), eps=optim.eps, fused=fused, foreach=None if fused else True)]
    if muon:
        # bf16 Newton-Schulz (torch.optim.Muon's choice) where it runs natively, else float32
        native_bf16 = runs_bf16_natively(torch.device(device_type))
        optimizers.append(make(Muon, muon, lr=optim.lr, weight_decay=optim.weight_decay,
                               adjust_lr_fn="match_rms_adamw",
                               ns_dtype="bfloat16" if native_bf16 else "float32"))
    return optimizers


def learning_rate(step: int, total_steps: int, optim: OptimSection) -> float:
    """Linear warmup to `lr`; then cosine decay to `lr * min_lr_ratio` at `total_steps`, or (wsd)
    `lr` until the last `decay_fraction` of the steps and a linear decay to `lr * min_lr_ratio`
    over them. A stable phase lets a run be extended, and the final decay takes most of the loss
    drop that cosine spreads over the run (Hägele et al. 2024)."""
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    if step < warmup:
        return optim.lr * (step + 1) / (warmup + 1)
    floor = optim.lr * optim.min_lr_ratio
    if optim.schedule == "wsd":
        decay_start = max(warmup, total_steps - round(optim.decay_fraction * total_steps))
        if step < decay_start:
            return optim.lr
        progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
        return optim.lr - (optim.lr - floor) * progress
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return floor + 0.5 * (optim.lr - floor) * (1 + math.cos(math.pi * progress))
