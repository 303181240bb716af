"""Attention questions: scaling, scoring functions, heads, dropout, biases, cost, sharing, depth, KV heads."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from minillama.lab.registry import Experiment, LabResult


def attention_scaling(out: Path | None, quick: bool) -> LabResult:
    """Random unit-variance queries and keys: q·k has variance d_k, so unscaled scores grow like √d_k,
    softmax saturates (entropy → 0) and its gradient vanishes; 1/√d_k keeps both constant, while
    1/d_k over-corrects (attention flattens towards uniform as d_k grows)."""
    dims = (16, 64, 256) if quick else (16, 64, 256, 1024)
    seq = 64
    scalings = {"none": lambda d: 1.0, "1/sqrt(d_k)": lambda d: d ** -0.5, "1/d_k": lambda d: 1.0 / d}
    rows, facts = [], {name: {"entropy": [], "grad": []} for name in scalings}
    for d in dims:
        q, k = torch.randn(256, seq, d), torch.randn(256, seq, d)
        row = [d]
        for name, scale in scalings.items():
            scores = (q @ k.transpose(-1, -2) * scale(d)).requires_grad_()  # (batch, seq, seq)
            probs = scores.softmax(-1)
            entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean().item() / math.log(seq)
            (probs * torch.randn_like(probs)).sum().backward()  # a random upstream gradient
            grad = scores.grad.norm(dim=-1).mean().item()
            facts[name]["entropy"].append(entropy)
            facts[name]["grad"].append(grad)
            row += [entropy, grad]
        rows.append(row)
    columns = ["d_k"] + [f"{what} ({name})" for name in scalings for what in ("entropy", "grad")]
    figure = _plot_scaling(out, dims, facts) if out else None
    return LabResult(
        columns, rows, figure=figure, facts={"dims": list(dims), **facts},
        conclusion="Without scaling, attention entropy (as a fraction of uniform) and the softmax gradient "
                   "collapse as d_k grows; 1/sqrt(d_k) keeps both the same at every d_k; 1/d_k drifts "
                   "towards uniform attention. So the scale must grow like sqrt(d_k), the std of q·k.")


def _plot_scaling(out: Path, dims, facts) -> Path | None:
    from minillama.train.metrics import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=110)
    for name, values in facts.items():
        axes[0].plot(dims, values["entropy"], "o-", label=name)
        axes[1].plot(dims, values["grad"], "o-", label=name)
    for ax, label in zip(axes, ("attention entropy / log(seq)", "softmax gradient norm")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("d_k")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend()
    return save_figure(fig, out / "attention-scaling.png")


EXPERIMENTS = (
    Experiment("attention-scaling", "attention",
               "Why scale q·k by 1/sqrt(d_k), and must it be sqrt(d_k)?", attention_scaling),
)
