"""Validation bits per byte against sparsity: how much of a model magnitude pruning can remove.

    minillama prune --checkpoint runs/pipeline/hf --sweep --out runs/prune-sweep
    -> sweep.json, sweep.md (the table) and sweep.png (bits per byte against sparsity)
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from minillama.quant.prune import apply_masks, magnitude_masks

DEFAULT_SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def validation_bits_per_byte(model, text, seq_len: int, batch_size: int = 8) -> float:
    """Bits per byte of `model` on an `EvaluationText` (the windows `minillama eval` uses)."""
    from minillama.data import windows_of
    from minillama.train.evaluate import bits_per_byte
    from minillama.train.loop import evaluate_batches

    seq_len = min(seq_len, len(text.tokens) - 1)
    with torch.no_grad():
        loss, predicted = evaluate_batches(model.eval(), windows_of(text.tokens, batch_size, seq_len),
                                           torch.device("cpu"))
    return bits_per_byte(loss, predicted, text)


def prune_sweep(checkpoint: str | os.PathLike, sparsities=DEFAULT_SPARSITIES, dataset: str = "tinystories-sample",
                seq_len: int = 256, max_documents: int | None = None) -> list[dict]:
    """Rows {method, sparsity, bits_per_byte} for layer-wise and global magnitude pruning at each
    sparsity, and for 2:4, each pruned from the float model in `checkpoint`."""
    from minillama.model import MiniLlama
    from minillama.train.evaluate import load_text

    model = MiniLlama.from_pretrained(checkpoint).eval()
    text = load_text(model, Path(checkpoint), dataset, "val")
    if max_documents is not None:  # a quick sweep: the first documents' tokens and bytes
        text = _first_documents(text, max_documents)
    rows = []
    for method, levels in (("layer", sparsities), ("global", sparsities), ("2:4", (0.5,))):
        for sparsity in levels:
            pruned = copy.deepcopy(model)
            measured = apply_masks(pruned, magnitude_masks(pruned, sparsity, method))
            rows.append({"method": method, "sparsity": round(measured, 4),
                         "bits_per_byte": validation_bits_per_byte(pruned, text, seq_len)})
    return rows


def _first_documents(text, count: int):
    eos_positions = (text.tokens == text.tokens[-1]).nonzero()[0]  # every document ends with EOS
    end = int(eos_positions[min(count, len(eos_positions)) - 1]) + 1
    share = end / len(text.tokens)
    return text._replace(tokens=text.tokens[:end], documents=count, bytes=int(text.bytes * share))


def write_sweep(rows: list[dict], out: str | os.PathLike, title: str) -> None:
    """sweep.json, sweep.md and sweep.png into the directory `out` (already created)."""
    from minillama.train.metrics import pyplot, save_figure

    out = Path(out)
    (out / "sweep.json").write_text(json.dumps({"title": title, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    base = next(r["bits_per_byte"] for r in rows if r["sparsity"] == 0)
    lines = [f"{title}\n", "| method | sparsity | val bits/byte | change |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['method']} | {r['sparsity']:.0%} | {r['bits_per_byte']:.4f} | "
              f"{100 * (r['bits_per_byte'] / base - 1):+.1f}% |" for r in rows]
    (out / "sweep.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, style in (("layer", "o-"), ("global", "s--")):
        points = [(r["sparsity"], r["bits_per_byte"]) for r in rows if r["method"] == method]
        ax.plot(*zip(*points), style, label=f"magnitude, {method}")
    for r in rows:
        if r["method"] == "2:4":
            ax.plot([r["sparsity"]], [r["bits_per_byte"]], "r*", markersize=12, label="2:4 semi-structured")
    ax.set_xlabel("sparsity of the block weights")
    ax.set_ylabel("validation bits per byte")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out / "sweep.png")
