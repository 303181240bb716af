"""Pre-norm against post-norm at equal budget, on the embedded TinyStories sample.

    python experiments/norm_placement.py                    # {pre, post} x {4, 12 layers} x {warmup, none}
    python experiments/norm_placement.py --placements pre post sandwich --steps 600

Every run trains the `tiny` preset's shape with only the depth and the norm placement changed, on
the same token files, seed, batches and learning-rate schedule (AdamW, cosine to 0.3 x lr, with
or without a linear warmup): equal steps and tokens. A run that meets a non-finite loss stops and
is reported as diverged. Written to --out (default runs/norm-placement):

    tokenizer/, data/          shared by every run
    <placement>-<L>L-<warmup|no-warmup>/      each run's directory (checkpoints, metrics.jsonl, loss.png)
    norm_placement.json, .md   final validation loss (over the whole validation split) per run
    norm_placement.png         validation loss against step, one panel per depth

Running it again resumes: finished runs are read back, not retrained. Results: docs/attention.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from pathlib import Path

from minillama.errors import MiniLlamaError
from minillama.hardware import cpu_description
from minillama.train.config import TrainConfig
from minillama.train.distributed import Distributed
from minillama.train.metrics import read_metrics
from minillama.train.pretrain import ensure_data, pretrain

log = logging.getLogger("norm_placement")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/norm-placement")
    p.add_argument("--placements", nargs="+", default=["pre", "post"], choices=["pre", "post", "sandwich"])
    p.add_argument("--layers", type=int, nargs="+", default=[4, 12])
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=30, help="warmup steps of the runs with warmup")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-interval", type=int, default=25)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args()


def run_config(args: argparse.Namespace, out: Path, placement: str, layers: int, warmup: int) -> TrainConfig:
    config = TrainConfig()
    config.model.preset = "tiny"
    config.model.overrides = {"num_hidden_layers": layers, "norm_placement": placement}
    config.data = dataclasses.replace(config.data, tokenizer=str(out / "tokenizer"), prepared=str(out / "data"),
                                      seq_len=args.seq_len, batch_size=args.batch_size)
    config.optim = dataclasses.replace(config.optim, lr=args.lr, warmup_steps=warmup)
    config.budget = dataclasses.replace(config.budget, max_steps=args.steps)
    name = f"{placement}-{layers}L-{'warmup' if warmup else 'no-warmup'}"
    # every validation batch at each evaluation: the final figure is the whole split's loss
    config.run = dataclasses.replace(config.run, out_dir=str(out / name), precision="float32", threads=args.threads,
                                     eval_interval=args.eval_interval, eval_batches=10**6,
                                     checkpoint_interval=args.steps, keep_last=1, progress=False)
    return config


def train_one(config: TrainConfig) -> dict:
    """Train (or read back) one run: its final validation loss and validation curve."""
    out = Path(config.run.out_dir)
    diverged = None
    try:
        pretrain(config)
    except MiniLlamaError as exc:  # a non-finite loss: the run stops, and that is a result
        diverged = str(exc).split(";")[0]
        log.warning("%s: %s", out.name, diverged)
    records = read_metrics(out / "metrics.jsonl")
    curve = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    final = curve[-1][1] if curve and not diverged and curve[-1][0] == config.budget.max_steps else None
    return {"run": out.name, "placement": config.model.overrides["norm_placement"],
            "layers": config.model.overrides["num_hidden_layers"], "warmup_steps": config.optim.warmup_steps,
            "final_val_loss": final, "diverged": diverged, "val_curve": curve}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({r["layers"] for r in results})
    fig, axes = plt.subplots(1, len(depths), figsize=(6 * len(depths), 4.2), sharey=True, squeeze=False)
    colors = {"pre": "tab:blue", "post": "tab:red", "sandwich": "tab:green"}
    for ax, depth in zip(axes[0], depths):
        for r in (r for r in results if r["layers"] == depth and r["val_curve"]):
            steps, losses = zip(*r["val_curve"])
            ax.plot(steps, losses, color=colors[r["placement"]], linestyle="-" if r["warmup_steps"] else "--",
                    label=f"{r['placement']}, {'warmup' if r['warmup_steps'] else 'no warmup'}")
        ax.set_title(f"{depth} layers")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("validation loss")
    finite = [loss for r in results for _, loss in r["val_curve"] if math.isfinite(loss)]
    if finite:
        axes[0][0].set_ylim(min(finite) - 0.1, min(max(finite), min(finite) + 3))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: list[dict], args: argparse.Namespace) -> str:
    lines = [f"host: {cpu_description()}; tiny preset shape, {args.steps} steps of {args.batch_size} x "
             f"{args.seq_len} tokens, lr {args.lr}, warmup {args.warmup} or 0",
             "", "| layers | placement | warmup | final validation loss |", "|---|---|---|---|"]
    for r in results:
        loss = f"{r['final_val_loss']:.4f}" if r["final_val_loss"] is not None else f"diverged ({r['diverged']})"
        lines.append(f"| {r['layers']} | {r['placement']} | {r['warmup_steps']} | {loss} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    shared = TrainConfig()
    shared.run.out_dir = str(out)
    ensure_data(shared, Distributed.from_env("cpu", args.threads))  # tokenizer/ and data/, once
    results = [train_one(run_config(args, out, placement, layers, warmup))
               for layers in args.layers for placement in args.placements for warmup in (args.warmup, 0)]
    (out / "norm_placement.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "norm_placement.md").write_text(table(results, args))
    plot(results, out / "norm_placement.png")
    print(table(results, args))
    print(f"plot: {out / 'norm_placement.png'}")


if __name__ == "__main__":
    main()
