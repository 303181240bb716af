"""What several lab experiments need: shipped text as byte ids, random batches from it, and a short
training loop. The lab's models are small and often not a `MiniLlama` (an additive-attention layer,
a model without residuals), so this is the ten-line loop the experiment is about, not the `Trainer`."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from minillama.assets import asset_path


def story_bytes(split: str = "train", limit: int = 2_000_000) -> torch.Tensor:
    """The shipped TinyStories sample as byte ids (vocabulary 256), at most `limit` bytes. (n,) int64"""
    with gzip.open(asset_path(f"tinystories/tinystories_{'valid' if split == 'val' else split}.txt.gz")) as f:
        data = f.read(limit)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def random_windows(data: torch.Tensor, batch: int, seq: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (inputs, targets) pairs of random windows from `data`, targets shifted by one, the same
    windows for the same `seed`. Each (batch, seq) int64."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=generator)
        windows = torch.stack([data[s:s + seq + 1] for s in starts.tolist()])
        yield windows[:, :-1], windows[:, 1:]


def fit(model: torch.nn.Module, loss_of: Callable[[torch.nn.Module, tuple], torch.Tensor],
        batches: Iterator[tuple], steps: int, lr: float = 3e-3, weight_decay: float = 0.0,
        clip: float | None = 1.0) -> list[float]:
    """Train `model` for `steps` AdamW steps on `batches`; `loss_of(model, batch)` is the scalar loss.
    Returns the loss of every step (a diverged run shows inf/nan instead of raising)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, steps // 10)))
    model.train()
    losses = []
    for _, batch in zip(range(steps), batches):
        loss = loss_of(model, batch)
        losses.append(loss.item())
        if not torch.isfinite(loss):
            losses += [float("nan")] * (steps - len(losses))
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        schedule.step()
    model.eval()
    return losses


@torch.no_grad()
def mean_loss(model: torch.nn.Module, loss_of: Callable[[torch.nn.Module, tuple], torch.Tensor],
              batches: Iterator[tuple], count: int) -> float:
    """The mean of `loss_of` over `count` batches, in eval mode."""
    model.eval()
    return sum(loss_of(model, batch).item() for _, batch in zip(range(count), batches)) / count


def llama_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Next-token loss of a `MiniLlama` on (inputs, targets), both (B, T), through its fused head
    (targets already shifted by one)."""
    inputs, targets = batch
    return model(inputs, targets=targets).loss


def smooth(values: list[float], width: int = 20) -> list[float]:
    """The running mean of the last `width` values: a readable loss curve."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def figure_png(out: Path | None, name: str, draw) -> Path | None:
    """`draw(plt)` returns a figure, saved as out/NAME.png; None without `out` or matplotlib (then
    `draw` is not called)."""
    if out is None:
        return None
    from minillama.train.metrics import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return None
    return save_figure(draw(plt), out / f"{name}.png")


def loss_curves_png(out: Path | None, name: str, curves: dict[str, list[float]],
                    ylabel: str = "training loss (nats, smoothed)", title: str | None = None) -> Path | None:
    """Smoothed loss curves against the step, one per label, as out/NAME.png."""

    def draw(plt):
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
        for label, losses in curves.items():
            ax.plot(smooth(losses), label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        return fig

    return figure_png(out, name, draw)
