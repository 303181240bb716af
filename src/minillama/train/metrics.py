"""Metrics: one JSON object per line in OUT/metrics.jsonl, and the loss curve as OUT/loss.png
(`pyplot` and `save_figure` draw the other commands' pictures too)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends records to a JSONL file (resumed runs append; records past the resume step, left by
    a crash, are dropped so the curve has no duplicate steps). Optional TensorBoard / wandb."""

    def __init__(self, out_dir: Path, resume_step: int = 0, tensorboard: bool = False, wandb: bool = False,
                 run_config: dict[str, Any] | None = None):
        self.path = out_dir / "metrics.jsonl"
        self.plot_path = out_dir / "loss.png"
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.writers = []
        if tensorboard:  # installed: `TrainConfig.validate` checked
            from torch.utils.tensorboard import SummaryWriter

            self.writers.append(("tensorboard", SummaryWriter(str(out_dir / "tensorboard"))))
        if wandb:
            import wandb as wandb_module

            wandb_module.init(project="minillama", config=run_config, dir=str(out_dir))
            self.writers.append(("wandb", wandb_module))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        for kind, writer in self.writers:
            if kind == "tensorboard":
                for key, value in numbers.items():
                    writer.add_scalar(key, value, record["step"])
            else:
                writer.log(numbers, step=record["step"])

    def plot(self) -> Path | None:
        return plot_loss_curve(read_metrics(self.path), self.plot_path)

    def close(self) -> None:
        for kind, writer in self.writers:
            writer.close() if kind == "tensorboard" else writer.finish()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut short by a crash
            continue
    return records


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (no display needed), or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig, out: Path) -> Path:
    """Write a figure as PNG atomically (readers see the old picture or the new one) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out


def plot_loss_curve(records: list[dict[str, Any]], out: Path) -> Path | None:
    """Train and validation loss against tokens seen, written atomically. None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    train = [(r["tokens"], r["loss"]) for r in records if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", linewidth=1.5, markersize=3)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out)
