"""Quantization-aware training: train float weights through the int grid they will be rounded to.

The forward pass uses the rounded weight Q(W) (`rtn.fake_quantize`, the very grid `minillama
quantize --method int4` will use), so the loss sees the quantization error and the weights move to
where rounding hurts least. Rounding has zero gradient almost everywhere, so the backward pass
uses the straight-through estimator, dQ(W)/dW := I:

    W_q = W + (Q(W) - W).detach()      # value Q(W), gradient that of W

The Linear keeps its parameters (same names, same tensors), so checkpoints, resume and the
optimizer are those of any run; the checkpoint holds the float weights, which `minillama quantize`
then rounds exactly as training saw them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minillama.quant import rtn
from minillama.quant.linear import replace_module

QAT_BITS = {"int8": 8, "int4": 4}


class FakeQuantLinear(nn.Linear):
    """An nn.Linear whose forward multiplies by its weight rounded to the `bits` grid (STE backward)."""

    bits: int
    group_size: int | None

    @classmethod
    def holding(cls, linear: nn.Linear, bits: int, group_size: int | None) -> FakeQuantLinear:
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        layer.weight, layer.bias = linear.weight, linear.bias  # the same Parameters: optimizer and state dict
        layer.bits, layer.group_size = bits, group_size
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w_q = w + (rtn.fake_quantize(w, self.bits, self.group_size) - w).detach()
        return F.linear(x, w_q, self.bias)


def apply_fake_quant(model: nn.Module, scheme: str, group_size: int = 32) -> list[str]:
    """Make every block's Linear a `FakeQuantLinear` for `scheme` (int8 or int4 with `group_size`),
    in place; returns their names. The same layers `minillama quantize` replaces."""
    from minillama.quant.model import check_quantizable

    bits = QAT_BITS[scheme]
    linears = check_quantizable(model, scheme, group_size)
    for name, linear in linears.items():
        replace_module(model, name, FakeQuantLinear.holding(linear, bits, group_size if bits == 4 else None))
    return list(linears)
