"""Vocabulary extension, measured: teach an English model Chinese with and without new tokens.

    OMP_NUM_THREADS=1 python experiments/vocab_extension.py          # the table and plot in docs/tokenizer.md
    python experiments/vocab_extension.py --base-steps 1000 --steps 500 --add 3000
    OMP_NUM_THREADS=1 python experiments/vocab_extension.py --base-data tinystories-sample:0.9,tatoeba-zh:0.1 \
        --out runs/vocab-extension-zh-base     # a base that read some Chinese as bytes

1. A 2,048-token byte-level BPE on the shipped TinyStories sample (English), extended with --add
   tokens learned on the training split of the shipped Tatoeba Chinese sentences (`tatoeba-zh`).
   Bytes per token before and after, on the held-out Chinese sentences and the TinyStories
   validation stories.
2. An English base model (the `tiny` shape with --layers layers) pretrained for --base-steps on
   TinyStories (or on --base-data: a mixture in which it also reads some Chinese, as UTF-8 bytes).
3. Continued pretraining of that model for the same --steps, on the same mixture
   (tinystories-sample:0.5,tatoeba-zh:0.5), seed and schedule, four ways: without extension (the old
   tokenizer: Chinese as UTF-8 bytes), and extended with the new rows initialised random, mean and
   subword-mean (`minillama model resize-vocab`). Equal steps and equal tokens per step: an extended
   model sees about as many more Chinese characters as its tokens are longer. A fifth run
   (--warmup-steps) starts like subword but trains only the new rows for its first steps
   (`--optim.trainable new-embeddings`), then everything for the rest of the same budget.
4. Bits per byte (tokenizer-independent) on the held-out Chinese and English text, of the start
   model and of every checkpoint.

Written to --out (default runs/vocab-extension): tok-en/, tok-ext/, base/, resized-<init>/,
cpt-<variant>/ (with points.json, its evaluations), vocab_extension.json and .md (the tables),
vocab_extension.png (the curves).
Finished steps are not redone when run again.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import torch

from minillama.cli import main as cli
from minillama.hardware import cpu_description

log = logging.getLogger("vocab_extension")
VARIANTS = ("none", "random", "mean", "subword")
MIXTURE = "tinystories-sample:0.5,tatoeba-zh:0.5"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/vocab-extension")
    p.add_argument("--vocab-size", type=int, default=2048, help="the English tokenizer's size")
    p.add_argument("--add", type=int, default=2048, help="Chinese tokens to add")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--base-steps", type=int, default=400)
    p.add_argument("--base-data", default="tinystories-sample",
                   help="the base model's corpus, e.g. tinystories-sample:0.9,tatoeba-zh:0.1 for a base that read "
                        "some Chinese as UTF-8 bytes before its vocabulary is extended")
    p.add_argument("--steps", type=int, default=300, help="continued-pretraining steps per variant")
    p.add_argument("--checkpoints", type=int, default=6, help="evaluated checkpoints per variant")
    p.add_argument("--warmup-steps", type=int, default=100,
                   help="a fifth run: subword init, these steps training only the new rows, then the rest "
                        "of --steps training everything (0: leave it out)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--en-eval-batches", type=int, default=20, help="English validation batches (Chinese: all)")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def train(args, out: Path, steps: int, dataset: str, *extra: str) -> None:
    argv = ["train", "--run.out_dir", str(out), "--data.dataset", dataset, "--data.seq_len", str(args.seq_len),
            "--data.batch_size", str(args.batch_size), "--budget.max_steps", str(steps),
            "--optim.lr", str(args.lr), "--run.threads", str(args.threads), "--run.progress", "false",
            "--run.plot", "false", "--run.eval_interval", str(steps), "--run.eval_batches", "5",
            "--run.checkpoint_interval", str(max(1, steps // args.checkpoints)), "--run.keep_last", "100", *extra]
    if cli(argv) != 0:
        raise SystemExit(f"training in {out} failed")


def bytes_per_token(tokenizer, text: str) -> float:
    return len(text.encode("utf-8")) / len(tokenizer.encode(text))


def evaluate(model_dir: Path, val: dict[str, tuple], args) -> dict[str, float]:
    """Bits per byte of the model in `model_dir` on each validation token file."""
    from minillama.data.loader import windows_of
    from minillama.model import MiniLlama
    from minillama.train.loop import evaluate_batches

    model = MiniLlama.from_pretrained(model_dir).eval()
    result = {}
    with torch.no_grad():
        for name, (tokens, meta, max_batches) in val.items():
            batches = windows_of(tokens, 16, args.seq_len, max_batches=max_batches)
            loss, _ = evaluate_batches(model, batches, torch.device("cpu"))
            result[name] = loss / math.log(2) * meta["val_tokens"] / meta["val_bytes"]
    return result


def validation_files(run: Path, args) -> dict[str, tuple]:
    from minillama.data import TokenFile, read_meta

    files = {}
    parts = (("zh", "1-tatoeba-zh", None), ("en", "0-tinystories-sample", args.en_eval_batches))
    for name, folder, max_batches in parts:
        path = run / "data-mixture" / folder
        files[name] = (TokenFile(path / "val.bin").tokens, read_meta(path), max_batches)
    return files


def variant_name(variant: str) -> str:
    if variant == "none":
        return "no extension (bytes)"
    if variant == "subword+warmup":
        return "extended, subword init, new rows alone first"
    return f"extended, {variant} init"


def steps_of(run: Path, offset: int = 0) -> list[tuple[int, Path]]:
    """(offset + step, directory) of each checkpoint of a run."""
    from minillama.train.checkpoint import list_checkpoints, step_of

    return [(offset + step_of(c), c) for c in list_checkpoints(run / "checkpoints")]


def evaluated(run: Path, models: list[tuple[int, Path]], args) -> list[dict]:
    """[{"step", "zh", "en"}] of each (continued-pretraining step, model directory), cached in
    run/points.json."""
    cache = run / "points.json"
    points = json.loads(cache.read_text()) if cache.is_file() else {}
    val = None
    for step, model_dir in models:
        if str(step) not in points:
            val = val or validation_files(run, args)
            points[str(step)] = {"step": step, **evaluate(model_dir, val, args)}
            cache.write_text(json.dumps(points, indent=1))
    result = sorted(points.values(), key=lambda p: p["step"])
    log.info("%s: %s", run.name, result)
    return result


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant, points in curves.items():
        steps = [p["step"] for p in points]
        label = variant_name(variant)
        axes[0].plot(steps, [p["zh"] for p in points], marker="o", label=label)
        axes[1].plot(steps, [p["en"] for p in points], marker="o", label=label)
    axes[0].set_yscale("log")  # the byte-level start (about 19 bits per byte) would flatten the rest
    axes[0].set_title("Chinese (held-out Tatoeba sentences), log scale")
    axes[1].set_title("English (TinyStories validation): forgetting")
    for ax in axes:
        ax.set_xlabel("continued-pretraining step")
        ax.set_ylabel("bits per byte")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Continued pretraining on tinystories-sample:0.5,tatoeba-zh:0.5 at equal steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from minillama.data.sources import DATASETS, dataset_text_files
    from minillama.model.resize import resize_model_dir
    from minillama.tokenizer import Tokenizer, train_tokenizer
    from minillama.tokenizer.extend import extend_tokenizer
    from minillama.train.checkpoint import list_checkpoints, resolve_checkpoint

    log.info("host: %s (shared machine: wall-clock times are not measured here)", cpu_description())
    if not (out / "tok-en" / "tokenizer.json").is_file():
        train_tokenizer(None, args.vocab_size, out_dir=out / "tok-en", workers=1)
    if not (out / "tok-ext" / "tokenizer.json").is_file():
        with dataset_text_files("tatoeba-zh") as paths:
            extend_tokenizer(out / "tok-en", paths, args.add, out / "tok-ext")
    old, new = Tokenizer.from_pretrained(out / "tok-en"), Tokenizer.from_pretrained(out / "tok-ext")
    zh_text = "\n".join(DATASETS["tatoeba-zh"].val.documents())
    en_text = "\n".join(DATASETS["tinystories-sample"].val.documents())
    compression = {"zh": {"before": bytes_per_token(old, zh_text), "after": bytes_per_token(new, zh_text)},
                   "en": {"before": bytes_per_token(old, en_text), "after": bytes_per_token(new, en_text)},
                   "en_ids_identical": old.encode(en_text) == new.encode(en_text),
                   "vocab": [old.vocab_size, new.vocab_size]}
    log.info("bytes/token: %s", compression)

    if not list_checkpoints(out / "base" / "checkpoints"):
        train(args, out / "base", args.base_steps, args.base_data, "--data.tokenizer", str(out / "tok-en"),
              "--model.preset", "tiny", "--model.num_hidden_layers", str(args.layers))
    base = resolve_checkpoint(out / "base")
    starts = {"none": base}
    for init in VARIANTS[1:]:
        resized = out / f"resized-{init}"
        if not (resized / "config.json").is_file():
            resize_model_dir(base, out / "tok-ext", init, resized)
        starts[init] = resized

    def finished(run: Path, steps: int) -> bool:
        return any(p.name == f"step-{steps:06d}" for p in list_checkpoints(run / "checkpoints"))

    curves: dict[str, list[dict]] = {}
    earlier = out / "vocab_extension.json"  # evaluations of an earlier invocation: not redone
    for variant, points in (json.loads(earlier.read_text())["curves"] if earlier.is_file() else {}).items():
        cache = out / f"cpt-{variant.replace('+', '-')}" / "points.json"
        if cache.parent.is_dir() and not cache.is_file():
            cache.write_text(json.dumps({str(p["step"]): p for p in points}, indent=1))
    for variant, start in starts.items():
        run = out / f"cpt-{variant}"
        if not finished(run, args.steps):
            train(args, run, args.steps, MIXTURE, "--run.init_from", str(start))
        curves[variant] = evaluated(run, [(0, start), *steps_of(run)], args)
    if args.warmup_steps:  # subword init, the new rows alone first, then everything: the same steps in all
        first, run = out / "cpt-subword-warmup-embeddings", out / "cpt-subword-warmup"
        if not finished(first, args.warmup_steps):
            train(args, first, args.warmup_steps, MIXTURE, "--run.init_from", str(starts["subword"]),
                  "--optim.trainable", "new-embeddings")
        if not finished(run, args.steps - args.warmup_steps):
            train(args, run, args.steps - args.warmup_steps, MIXTURE, "--run.init_from", str(resolve_checkpoint(first)))
        models = [(0, starts["subword"]), *steps_of(first), *steps_of(run, args.warmup_steps)]
        curves["subword+warmup"] = evaluated(run, models, args)

    results = {"args": vars(args), "compression": compression, "curves": curves}
    (out / "vocab_extension.json").write_text(json.dumps(results, indent=1) + "\n")
    rows = ["| continued pretraining | Chinese bits/byte at step 0 | at the end | English bits/byte at step 0 "
            "| at the end |", "|---|---|---|---|---|"]
    for variant, points in curves.items():
        name = variant_name(variant)
        rows.append(f"| {name} | {points[0]['zh']:.3f} | {points[-1]['zh']:.3f} | {points[0]['en']:.3f} "
                    f"| {points[-1]['en']:.3f} |")
    c = compression
    table = (f"| bytes per token | {old.vocab_size} tokens | {new.vocab_size} tokens (extended) | ratio |\n"
             f"|---|---|---|---|\n"
             f"| Chinese (held-out Tatoeba) | {c['zh']['before']:.2f} | {c['zh']['after']:.2f} | "
             f"{c['zh']['after'] / c['zh']['before']:.2f}x |\n"
             f"| English (TinyStories validation) | {c['en']['before']:.2f} | {c['en']['after']:.2f} | "
             f"{c['en']['after'] / c['en']['before']:.2f}x (ids identical: {c['en_ids_identical']}) |\n\n"
             + "\n".join(rows) + "\n")
    (out / "vocab_extension.md").write_text(table)
    plot(curves, out / "vocab_extension.png")
    print(table)


if __name__ == "__main__":
    main()
