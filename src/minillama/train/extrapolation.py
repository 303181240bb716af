"""Length extrapolation: one checkpoint evaluated at several context lengths and RoPE scalings,
without retraining (`minillama eval --context-lengths`).

Every length reads the same stretch of text: the documents concatenated in order, each followed
by the end-of-text token (as training reads them), cut into `max_windows` windows of the longest
length and into proportionally more, shorter windows for the other lengths. A length's loss thus
differs from another's only by how much context each prediction had and by what RoPE made of
positions the model never trained on.

The factor for a length L, when the trained context (`max_position_embeddings`) is C, is L / C (at
least 1) for every scaling: the least stretch that brings every position of the window back
within the angles the model trained on; yarn and llama3 get original_max_position_embeddings C
(dynamic reads C from max_position_embeddings), llama3 low_freq_factor 1 and high_freq_factor 4,
transformers' usual values (Llama 3.1's). dynamic raises the base by
((factor · L / C) - (factor - 1))^(D / (D - 2)): with factor L / C as if the window were
(L/C)² - L/C + 1 contexts long (241 at 16×), with dynamic:1 exactly L / C (NTK-aware scaling by
the length ratio). NAME:F (e.g. yarn:16, dynamic:1) fixes the factor at F for every length.
Within the trained context every factor is 1: RoPE as trained.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minillama.errors import MiniLlamaError

SCALINGS = ("none", "linear", "dynamic", "yarn", "llama3")
DEFAULT_MAX_WINDOWS = 8
LLAMA3_FREQ_FACTORS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}  # transformers' usual values
KIND = "length-extrapolation"  # what the manifest of an --out directory names it
FILES = ("extrapolation.json", "extrapolation.md", "extrapolation.png")
FACTOR_RULE = ("factor = length / trained context (at least 1) for linear, dynamic, yarn and llama3; "
               "original_max_position_embeddings = trained context (yarn, llama3); llama3 low_freq_factor 1, "
               "high_freq_factor 4 (transformers' defaults); NAME:F fixes the factor at F")


@dataclass(frozen=True)
class Scaling:
    """A RoPE scaling to evaluate: `name` one of SCALINGS; `factor` fixed, or None for the rule
    in the module docstring."""

    name: str
    factor: float | None = None

    @property
    def label(self) -> str:
        return self.name if self.factor is None else f"{self.name}:{self.factor:g}"

    def factor_at(self, length: int, context: int) -> float | None:
        """The scaling factor for windows of `length` tokens (None: RoPE unscaled)."""
        if self.name == "none":
            return None
        if self.factor is not None:
            return self.factor
        return max(1.0, length / context)

    def rope_scaling(self, length: int, context: int) -> dict[str, Any] | None:
        """The `ModelConfig.rope_scaling` dict (transformers' form) for windows of `length` tokens."""
        factor = self.factor_at(length, context)
        if factor is None:
            return None
        scaling: dict[str, Any] = {"rope_type": self.name, "factor": factor}
        if self.name in ("yarn", "llama3"):
            scaling["original_max_position_embeddings"] = context
        if self.name == "llama3":
            scaling.update(LLAMA3_FREQ_FACTORS)
        return scaling


def parse_scaling(text: str) -> Scaling:
    """"yarn" (the factor by the length rule) or "yarn:16" (a fixed factor) -> `Scaling`."""
    name, colon, factor = text.strip().partition(":")
    if name not in SCALINGS:
        raise ValueError(f"unknown RoPE scaling {name!r}; choose from {', '.join(SCALINGS)} "
                         "(NAME:FACTOR fixes the factor, e.g. yarn:16)")
    if not colon:
        return Scaling(name)
    if name == "none":
        raise ValueError("none takes no factor (it is RoPE unscaled)")
    try:
        value = float(factor)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1):
        raise ValueError(f"the factor in {text!r} must be a number >= 1")
    return Scaling(name, value)


def evaluate_extrapolation(checkpoint: str | os.PathLike, context_lengths: Sequence[int],
                           scalings: Sequence[Scaling | str] = SCALINGS, dataset: str = "tinystories-sample",
                           split: str = "val", tokenizer_dir: str | os.PathLike | None = None,
                           max_windows: int | None = DEFAULT_MAX_WINDOWS, batch_size: int = 8, device: str = "auto",
                           progress: bool = True) -> dict[str, Any]:
    """Loss, perplexity and bits per byte of a checkpoint at each context length under each RoPE
    scaling, and the mean loss at each position of the windows (the model is not retrained).

    All lengths read the same first `max_windows` x max(context_lengths) + 1 tokens (None: as many
    whole longest windows as the text holds); windows of `batch_size` x trained-context tokens
    go through the model at a time. Returns a JSON-ready dict whose "results" has one entry per
    (length, scaling), lengths ascending, each with "per_position_loss": a list of `length`
    floats (position p: the mean loss of predicting token p + 1 from the p + 1 before it)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from minillama.data import windows_of
    from minillama.model.llama import RotaryEmbedding
    from minillama.progress import progress_bar
    from minillama.train.evaluate import bits_per_byte, load_model, load_text

    lengths = sorted(set(context_lengths))
    if not lengths or lengths[0] < 1:
        raise MiniLlamaError(f"context lengths must be positive token counts, got {list(context_lengths)}")
    scalings = list(dict.fromkeys(parse_scaling(s) if isinstance(s, str) else s for s in scalings))
    if not scalings:
        raise MiniLlamaError("no RoPE scaling to evaluate; name at least one of " + ", ".join(SCALINGS))
    checkpoint, model, target = load_model(checkpoint, device)
    if model.config.rope_scaling is not None:
        raise MiniLlamaError(f"{checkpoint} already scales RoPE ({model.config.rope_scaling}); context lengths "
                             "are measured on a model trained with plain RoPE (evaluate this one without them)")
    context = model.config.max_position_embeddings
    text = load_text(model, checkpoint, dataset, split, tokenizer_dir)
    longest = lengths[-1]
    windows = (len(text.tokens) - 1) // longest
    if windows == 0:
        raise MiniLlamaError(
            f"{text.dataset}{'' if text.split is None else ' (' + text.split + ')'} has {len(text.tokens):,} tokens "
            f"with its documents concatenated, too few for one window of {longest}; evaluate a longer text or "
            "shorter context lengths",
            remedy=("split", "train", "read the larger training split") if text.split == "val" else None)
    windows = min(windows, max_windows or windows)
    span = text.tokens[: windows * longest + 1]

    def use_rope(scaling: dict[str, Any] | None) -> None:
        # A new rotary embedding for the same weights: the model's config keeps what it was trained with.
        model.model.rotary_emb = RotaryEmbedding(dataclasses.replace(model.config, rope_scaling=scaling)).to(target)

    results = []
    total = len(scalings) * len(lengths) * (len(span) - 1)
    with progress_bar(enabled=progress, total=total, unit="tok", desc="context lengths") as bar, torch.no_grad():
        for length in lengths:
            per_batch = max(1, batch_size * context // length)
            for scaling in scalings:
                rope = scaling.rope_scaling(length, context)
                use_rope(rope)
                losses = []
                for inputs, targets in windows_of(span, per_batch, length):
                    logits = model(inputs.to(target)).logits
                    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.to(target).flatten(), reduction="none")
                    losses.append(loss.view(targets.shape).double().cpu())
                    bar.update(targets.numel())
                losses = torch.cat(losses)  # (windows of this length, length)
                mean = float(losses.mean())
                results.append({
                    "length": length, "scaling": scaling.label, "factor": scaling.factor_at(length, context),
                    "rope_scaling": rope, "windows": losses.shape[0], "predicted": losses.numel(),
                    "loss": mean, "perplexity": math.exp(min(mean, 50)),
                    "bits_per_byte": bits_per_byte(mean, losses.numel(), text),
                    "per_position_loss": np.round(losses.mean(0).numpy(), 5).tolist(),
                })
    return {"checkpoint": str(checkpoint), "dataset": text.dataset, "split": text.split,
            "trained_context": context, "head_dim": model.config.head_dim,
            "text": f"{text.documents:,} documents concatenated in order, each followed by the end-of-text token: "
                    f"{len(text.tokens):,} tokens, of which every length reads the first {len(span):,} "
                    f"({windows} windows of {longest})",
            "documents": text.documents, "tokens": len(text.tokens), "tokens_read": len(span),
            "windows_at_longest": windows, "factor_rule": FACTOR_RULE,
            "lengths": lengths, "scalings": [s.label for s in scalings], "results": results}


# ---- the table, the picture, the files ----------------------------------------------------------
def extrapolation_table(report: dict[str, Any]) -> str:
    """Markdown: one row per length, one column per scaling, "loss / bits per byte" and the factor."""
    cells = {(r["length"], r["scaling"]): r for r in report["results"]}
    windows = {r["length"]: r["windows"] for r in report["results"]}
    lines = [f"Loss (nats/token) / bits per byte, and the RoPE factor, of {report['checkpoint']} "
             f"(trained context {report['trained_context']}) on {report['dataset']}"
             f"{'' if report['split'] is None else ' ' + report['split']}.",
             f"Text: {report['text']}.", f"Factors: {report['factor_rule']}.", "",
             "| length | windows | " + " | ".join(report["scalings"]) + " |",
             "|---:|---:|" + "---|" * len(report["scalings"])]
    for length in report["lengths"]:
        row = []
        for label in report["scalings"]:
            r = cells[(length, label)]
            factor = "" if r["factor"] is None else f" ×{r['factor']:g}"
            row.append(f"{r['loss']:.3f} / {r['bits_per_byte']:.3f}{factor}")
        lines.append(f"| {length} | {windows[length]} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_extrapolation(report: dict[str, Any], out: Path) -> Path | None:
    """Left: mean loss against window length, one line per scaling. Right: loss by position in
    the longest windows (averaged over log-spaced bins of positions), the trained context marked.
    None without matplotlib."""
    import numpy as np

    from minillama.train.metrics import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return None
    context, longest = report["trained_context"], report["lengths"][-1]
    fig, (by_length, by_position) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    edges = _position_bins(longest)
    for label in report["scalings"]:
        rows = [r for r in report["results"] if r["scaling"] == label]
        by_length.plot([r["length"] for r in rows], [r["loss"] for r in rows], "o-", label=label, linewidth=1.5,
                       markersize=4)
        last = rows[-1]
        losses = np.asarray(last["per_position_loss"])
        centres, means = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            centres.append(math.sqrt(lo * hi))
            means.append(losses[lo - 1:hi - 1].mean())
        factor = "" if last["factor"] is None else f" (×{last['factor']:g})"
        by_position.plot(centres, means, label=label + factor, linewidth=1.5)
    for ax in (by_length, by_position):
        ax.axvline(context, color="gray", linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    by_length.text(context, 0.98, f" trained context {context}", transform=by_length.get_xaxis_transform(),
                   va="top", fontsize=8, color="gray")
    by_length.set_xticks(report["lengths"], [str(n) for n in report["lengths"]])
    by_length.set_xlabel("window length (tokens)")
    by_length.set_ylabel("mean loss (nats/token)")
    by_length.set_title("loss by context length", fontsize=10)
    by_length.legend(fontsize=8)
    by_position.set_xlabel(f"tokens seen (position + 1) in {longest}-token windows")
    by_position.set_ylabel("loss (nats/token)")
    by_position.set_title("loss by position", fontsize=10)
    by_position.legend(fontsize=8)
    return save_figure(fig, out)


def report_json(report: dict[str, Any]) -> str:
    """The report as JSON with one line per result (each holds a per-position list of `length` numbers)."""
    head = json.dumps({key: value for key, value in report.items() if key != "results"}, indent=1)
    results = ",\n".join("  " + json.dumps(result) for result in report["results"])
    return head[:-2] + ',\n "results": [\n' + results + "\n ]\n}\n"


def _position_bins(length: int, count: int = 48) -> list[int]:
    """Edges over tokens seen (position + 1, from 1 to length + 1): log-spaced, but no bin narrower
    than length / 256 positions, so a few windows still average to a readable curve."""
    import numpy as np

    width = max(1, length // 256)
    edges = [1]
    for edge in np.geomspace(1, length + 1, count).astype(int)[1:]:
        if edge - edges[-1] >= width:
            edges.append(int(edge))
    edges[-1] = length + 1
    return edges


def extrapolation_destination(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None, *,
                              overwrite: bool = False, inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """Where `save_extrapolation` will write, checked before any work: `out` (new, empty, an earlier
    extrapolation directory, anything but an input with `overwrite`), else the run directory the
    checkpoint belongs to (a run, its checkpoints/step-N, or an export inside it)."""
    from minillama.files import check_output
    from minillama.train.checkpoint import RUN_MARKERS, resolve_checkpoint

    if out is not None:
        check_output(out, KIND, overwrite=overwrite, inputs=inputs)
        return Path(out)
    model_dir = resolve_checkpoint(checkpoint).resolve()
    for directory in (model_dir, *model_dir.parents[:2]):
        if any((directory / marker).exists() for marker in RUN_MARKERS):
            return directory
    raise MiniLlamaError(f"{checkpoint} is not in a training run directory, where the table and plot would go; "
                         "name a directory for them", remedy=("out", "DIR", "write them there"))


def save_extrapolation(report: dict[str, Any], directory: Path, *, is_out: bool, overwrite: bool = False,
                       inputs: Sequence[str | os.PathLike | None] = ()) -> list[Path]:
    """extrapolation.json (the report), .md (the table) and .png (the plot, with matplotlib) in
    `directory`: a run directory gets the three files replaced one by one, atomically; an `--out`
    directory (`is_out`) is written whole as a checksummed directory of its own KIND."""
    from minillama.files import atomic_directory, atomic_write_text

    def write(into: Path) -> list[Path]:
        json_file, table_file, plot_file = (into / name for name in FILES)
        atomic_write_text(json_file, report_json(report))
        atomic_write_text(table_file, extrapolation_table(report))
        plotted = plot_extrapolation(report, plot_file)
        return [json_file, table_file] + ([plotted] if plotted else [])

    if not is_out:
        return write(directory)
    with atomic_directory(directory, KIND, overwrite=overwrite, inputs=inputs) as tmp:
        names = [path.name for path in write(tmp)]
    return [directory / name for name in names]
