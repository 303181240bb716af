"""Magnitude pruning: set the smallest weights of every block's Linear to zero.

    unstructured, per layer:  in each matrix, zero the `sparsity` fraction with the smallest |w|
    unstructured, global:     one threshold |w| <= t over all the matrices together, so layers
                              whose weights matter less (smaller) give up more of them
    2:4 semi-structured:      in every run of 4 consecutive input weights of a row, keep the 2
                              largest; exactly 50%, the pattern sparse tensor cores run at 2x

The embedding, norms and LM head are kept (as the quantizers keep them). A pruned model is an
ordinary float model directory; `minillama train --run.init_from DIR --run.keep_sparsity true`
fine-tunes it with its zeros kept (`mask_gradients`).
"""

from __future__ import annotations

import torch
from torch import nn

from minillama.errors import MiniLlamaError
from minillama.quant.linear import quantizable_linears

METHODS = ("layer", "global", "2:4")


def magnitude_masks(model: nn.Module, sparsity: float, method: str = "layer") -> dict[str, torch.Tensor]:
    """{Linear name: bool mask (N, K), True = kept} zeroing `sparsity` of the block weights by magnitude
    (`method` layer or global; 2:4 ignores `sparsity`: it is 0.5 by construction)."""
    if method not in METHODS:
        raise MiniLlamaError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0 <= sparsity < 1:
        raise MiniLlamaError(f"sparsity must be in [0, 1), got {sparsity}")
    weights = {name: linear.weight.detach() for name, linear in quantizable_linears(model).items()}
    if method == "2:4":
        return {name: two_four_mask(w) for name, w in weights.items()}
    if method == "global":
        magnitudes = torch.cat([w.abs().flatten() for w in weights.values()])
        threshold = _kth_smallest(magnitudes, sparsity)
        return {name: w.abs() > threshold for name, w in weights.items()}
    return {name: w.abs() > _kth_smallest(w.abs().flatten(), sparsity) for name, w in weights.items()}


def _kth_smallest(values: torch.Tensor, fraction: float) -> float:
    """The magnitude at or below which `fraction` of `values` lie (-1: prune nothing)."""
    k = int(fraction * values.numel())
    return values.kthvalue(k).values.item() if k > 0 else -1.0


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """(N, K) -> bool mask keeping the 2 largest |w| of every 4 consecutive weights of a row (K % 4 == 0)."""
    N, K = weight.shape
    if K % 4:
        raise MiniLlamaError(f"2:4 pruning needs input features divisible by 4, got {K}")
    groups = weight.abs().reshape(N, K // 4, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, groups.topk(2, dim=2).indices, True)
    return keep.reshape(N, K)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> float:
    """Zero the pruned weights in place; returns the sparsity of the block weights."""
    zeros = total = 0
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight
        weight.mul_(mask)
        zeros += int((~mask).sum())
        total += mask.numel()
    return zeros / max(total, 1)


def mask_gradients(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Keep the zeros of every block weight at zero while training: each weight's gradient is
    masked where the weight is 0. With AdamW the moments of those entries then stay 0 and so does
    their update (decoupled weight decay of 0 is 0), so the mask survives any number of steps and a
    resumed run recomputes the same mask from its checkpoint."""
    handles = []
    for linear in quantizable_linears(model).values():
        mask = linear.weight.detach() != 0
        handles.append(linear.weight.register_hook(lambda grad, mask=mask: grad * mask))
    return handles


def sparsity_of(model: nn.Module) -> float:
    """The fraction of exact zeros in the block weights."""
    weights = [linear.weight for linear in quantizable_linears(model).values()]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
