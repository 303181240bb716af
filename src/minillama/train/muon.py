"""Muon with the Newton-Schulz iterations batched over matrices of one shape.

`torch.optim.Muon`'s update, step for step: Nesterov momentum, five quintic Newton-Schulz
iterations on the momentum (Jordan et al. 2024), decoupled weight decay, the learning rate scaled
per matrix shape. torch's optimizer orthogonalises one matrix at a time in bfloat16. A small model
has dozens of small matrices (the `tiny` preset: 42 of at most 352 x 128), so that is hundreds of
small matmuls a step: it made the demo's compiled step 0.12 s instead of AdamW's 0.086 s on 2 CPU
cores (batched: 0.092 s). And a CPU without native bf16 (AVX2 only) emulates bf16 matmuls at about
1 GFLOP/s, while the iterations take 3.3 GFLOP a step for that preset.
Here matrices of one shape (after the transpose Newton-Schulz applies to tall ones) go through
the iterations together, as one batched matmul per product, in bfloat16 where the hardware runs it
natively and float32 where it does not.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

# torch.optim.Muon's coefficients (a, b, c) of the quintic iteration
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz approximation of U V^T for each matrix U S V^T of `g` (N, A, B) with A <= B,
    in g's dtype; singular values land in about [0.5, 1.5], which trains as well as exactly 1."""
    a, b, c = NS_COEFFICIENTS
    x = g / g.norm(dim=(1, 2), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)  # (N, A, A)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.baddbmm(x, poly, x, beta=a)  # a X + (b G + c G^2) X
    return x


class Muon(torch.optim.Optimizer):
    """Drop-in for `torch.optim.Muon` (same arguments and defaults; `ns_dtype` added: the
    precision of the Newton-Schulz iterations, "bfloat16" or "float32", a name so that the state
    dict stays plain data). Parameters must be matrices."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, eps: float = 1e-7, adjust_lr_fn: str | None = None,
                 ns_dtype: str = "bfloat16") -> None:
        if ns_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"ns_dtype must be bfloat16 or float32, not {ns_dtype!r}")
        if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"adjust_lr_fn must be original or match_rms_adamw, not {adjust_lr_fn!r}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        eps=eps, adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon trains matrices only, got a parameter of shape {tuple(p.shape)}")

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # a torch.optim.Muon checkpoint lacks ns_dtype
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    @staticmethod
    def lr_ratio(shape: torch.Size, adjust_lr_fn: str | None) -> float:
        """torch.optim.Muon's per-shape scale: original sqrt(max(1, A/B)); match_rms_adamw
        0.2 sqrt(max(A, B)), which gives the update AdamW's RMS (Liu et al. 2025)."""
        rows, cols = shape
        if adjust_lr_fn == "match_rms_adamw":
            return 0.2 * math.sqrt(max(rows, cols))
        return math.sqrt(max(1.0, rows / cols))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(state["momentum_buffer"])
            momentum = group["momentum"]
            torch._foreach_lerp_(buffers, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers
            # one batch per shape, tall matrices transposed (the iteration wants rows <= columns)
            by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
            for i, u in enumerate(updates):
                by_shape[tuple(sorted(u.shape))].append(i)
            orthogonal: list[torch.Tensor] = [None] * len(params)  # type: ignore[list-item]
            for indices in by_shape.values():
                tall = [updates[i].shape[0] > updates[i].shape[1] for i in indices]
                stacked = torch.stack([updates[i].mT if t else updates[i] for i, t in zip(indices, tall, strict=True)])
                result = orthogonalize(stacked.to(getattr(torch, group["ns_dtype"])), group["ns_steps"], group["eps"])
                for i, t, o in zip(indices, tall, result.to(params[indices[0]].dtype), strict=True):
                    orthogonal[i] = o.mT if t else o
            lr = group["lr"]
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])  # decoupled weight decay
            torch._foreach_mul_(orthogonal, [-lr * self.lr_ratio(p.shape, group["adjust_lr_fn"]) for p in params])
            torch._foreach_add_(params, orthogonal)
        return loss
