"""GPTQ (Frantar et al., 2022): int4 that rounds each weight knowing what the later ones can fix.

Round-to-nearest minimises each weight's own error. What matters is the layer's output on real
inputs X (n, K): minimise ||X W^T - X Q^T||^2 over the codes Q. With H = 2 X^T X / n (K, K), the
Optimal Brain Surgeon step says: after quantizing column j (error e_j = w_j - q_j), the best
correction of the columns not yet quantized is

    W[:, j+1:] -= (e_j / [H^-1]_jj) * [H^-1]_{j, j+1:}                          (paper eq. 2-3)

Processing columns left to right, the rows of H^-1 needed are those of the upper Cholesky factor
of H^-1 (U with H^-1 = U^T U), so one factorisation serves all columns. Updates are applied inside
blocks of 128 columns and to the rest of the matrix once per block ("lazy batch updates"), which
gives the same result with matrix-matrix products.

The grid is the same as round-to-nearest int4 (`rtn.int4_grid`): each group's scale and zero point
are chosen from the (already corrected) weights when the first column of the group is reached.
Layers are quantized block by block, each on the outputs of the already quantized blocks before
it, so later blocks calibrate on the inputs they will really see.
"""

from __future__ import annotations

import torch
from torch import nn

from minillama.quant import rtn
from minillama.quant.linear import QuantLinear, replace_module


def hessian(inputs: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / n of a layer's inputs X (n, K), in float64 for the Cholesky factorisation."""
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    return 2.0 * x.T @ x / x.shape[0]


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, group_size: int, damp: float = 0.01,
                  block_size: int = 128) -> rtn.Int4Weight:
    """GPTQ int4 codes of `weight` (N, K) given its inputs' Hessian H (K, K)."""
    W = weight.detach().double().clone()  # (N, K): updated in place as columns are quantized
    N, K = W.shape
    H = H.clone()
    dead = torch.diag(H) == 0  # an input that is always zero: its weights never matter
    H[dead, dead] = 1
    W[:, dead] = 0
    # Dampening keeps H positive definite when the calibration set does not span every direction.
    H += damp * torch.mean(torch.diag(H)) * torch.eye(K, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)  # H^-1 = U^T U

    codes = torch.zeros(N, K, dtype=torch.uint8)
    scales = torch.zeros(N, K // group_size, dtype=rtn.SCALE_DTYPE)
    zeros = torch.zeros(N, K // group_size)
    block_size = max(block_size // group_size, 1) * group_size  # a group never straddles two blocks
    for b0 in range(0, K, block_size):
        b1 = min(b0 + block_size, K)
        W1, U1 = W[:, b0:b1].clone(), U[b0:b1, b0:b1]
        E1 = torch.zeros_like(W1)  # each column's scaled error, for the lazy update of W[:, b1:]
        for i in range(b1 - b0):
            j = b0 + i
            if j % group_size == 0:  # a new group: its grid from the weights as corrected so far
                g = j // group_size
                s, z = rtn.int4_grid(W1[:, i:i + group_size], group_size)
                scales[:, g], zeros[:, g] = s[:, 0], z[:, 0]
            s, z = scales[:, g].double(), zeros[:, g].double()
            w = W1[:, i]
            q = torch.clamp(torch.round(w / s) + z, 0, rtn.INT4_MAX)
            codes[:, j] = q.to(torch.uint8)
            err = (w - (q - z) * s) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]  # the OBS correction of the block's later columns
            E1[:, i] = err
        W[:, b1:] -= E1 @ U[b0:b1, b1:]  # and of every column after the block, at once
    return rtn.Int4Weight(rtn.pack_int4(codes), scales, zeros.to(torch.uint8))


class _Stop(Exception):
    """Raised by the hook that captures the first block's inputs: nothing after it needs to run."""


@torch.no_grad()
def gptq_quantize_model(model: nn.Module, names: list[str], calibration: torch.Tensor, group_size: int,
                        damp: float = 0.01, batch_size: int = 16) -> None:
    """Quantize the Linears `names` of `model` (a MiniLlama) with GPTQ, block by block, in place.

    calibration (n, T) token ids. Each block runs on the previous (quantized) blocks' outputs; the
    inputs of each of its Linears are accumulated into that Linear's Hessian, the Linears are
    quantized, and the block runs again to produce the next block's inputs. The LM head, if named,
    is quantized last on the final norm's outputs.
    """
    layers = model.model.layers
    captured: list[tuple[tuple, dict]] = []

    def capture(module, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    handle = layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        for batch in calibration.split(batch_size):
            try:
                model(batch)
            except _Stop:
                pass
    finally:
        handle.remove()
    states = [args[0] for args, _ in captured]  # (b, T, C) each: the residual stream entering the block
    for index, layer in enumerate(layers):
        prefix = f"model.layers.{index}."
        mine = {name[len(prefix):]: layer.get_submodule(name[len(prefix):]) for name in names
                if name.startswith(prefix)}
        hessians = _block_hessians(layer, mine, states, captured)
        for short, linear in mine.items():
            codes = gptq_quantize(linear.weight, hessians[short], group_size, damp)
            replace_module(layer, short, QuantLinear.from_codes(codes, linear.bias, group_size))
        states = [layer(x, *args[1:], **kwargs) for x, (args, kwargs) in zip(states, captured)]
    if "lm_head" in names:
        final = torch.cat([model.model.norm(x) for x in states])
        codes = gptq_quantize(model.lm_head.weight, hessian(final), group_size, damp)
        replace_module(model, "lm_head", QuantLinear.from_codes(codes, model.lm_head.bias, group_size))


def _block_hessians(layer: nn.Module, linears: dict[str, nn.Linear], states, captured) -> dict[str, torch.Tensor]:
    """{name: H} of each Linear in `layer` over all calibration batches (one float pass)."""
    sums = {name: None for name in linears}
    count = {name: 0 for name in linears}

    def hook(name):
        def accumulate(module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[name] = x.T @ x if sums[name] is None else sums[name] + x.T @ x
            count[name] += x.shape[0]
        return accumulate

    handles = [linear.register_forward_pre_hook(hook(name)) for name, linear in linears.items()]
    try:
        for x, (args, kwargs) in zip(states, captured):
            layer(x, *args[1:], **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: 2.0 * sums[name] / count[name] for name in linears}
