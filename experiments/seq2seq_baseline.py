"""minillama's English -> Chinese translator against the field's own libraries at equal time:
transformers' MarianMTModel and a translator on torch.nn.Transformer, side by side.

    python experiments/seq2seq_baseline.py                         # 16 minutes each on 2 threads
    python experiments/seq2seq_baseline.py --minutes 0.1 --test-sentences 20 --preset debug   # a smoke run
    python experiments/seq2seq_baseline.py --systems marian nn-transformer --tokenizer runs/translate/tokenizer

Every system trains for the same --minutes of training steps (evaluations not counted) on --threads
threads, on the shipped Tatoeba split, with the same tokenizer (trained once into OUT/tokenizer, or
--tokenizer), shape (--preset, default `tiny`), batches (seq2seq.data's length-bucketed batches of
the same size and seed), AdamW with the same groups, warmup + cosine schedule (its length estimated
from the time budget as the Trainer does), gradient clipping and label smoothing: those of
`minillama translate train` (seq2seq.commands.translate_defaults).

    minillama        `minillama translate train` itself (seq2seq.train.train_translation: the Trainer)
    marian           transformers' MarianMTModel of the same config, transformers' initialisation,
                     trained by the plain loop below (its logits, torch's cross-entropy with smoothing)
    marian-same-init the same, started from minillama's initial weights (not run by default)
    nn-transformer   torch.nn.Transformer (post-norm), tied scaled embeddings, sinusoidal positions,
                     tied output projection + bias (seq2seq.reference.TorchTransformerMT), the plain loop

Then each translates the first --test-sentences test sentences greedily (ours: generate_ids with its
cache; Marian: generate(num_beams=1); nn.Transformer: a loop without cache), scored by
seq2seq.evaluate.score (sacrebleu BLEU with `zh` tokenization and chrF, every reference). Written to
--out (default runs/seq2seq-baseline): each system's directory with result.json (minillama's also
holds its run: checkpoints, metrics, model, report.json), seq2seq_baseline.json / .md (the table of
every system found there) and seq2seq_baseline.png (validation loss against training minutes).
Finished systems are read back, not retrained.

What stays unequal: the loss (ours fuses the head and the smoothed cross-entropy; the baselines
build the (tokens, vocabulary) logits, as their libraries do); `marian` starts from transformers'
initialisation (normal, std 0.02; `marian-same-init` removes that difference), nn.Transformer from
its own Xavier (ours is Xavier too, but over q, k, v separately) and trains an output bias (ours
has Marian's fixed zero bias); nn.Transformer's greedy loop has no cache, so its decode seconds
measure that loop, not the model. Systems run one after another: equal minutes mean equal work
only on a machine whose load does not change between them (run nothing else meanwhile, and not
two systems at once).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minillama.files import atomic_write_text
from minillama.hardware import cpu_description
from minillama.model.config import IGNORE_INDEX
from minillama.seq2seq import data
from minillama.seq2seq.commands import translate_defaults
from minillama.seq2seq.config import config_from_preset
from minillama.seq2seq.evaluate import score, translate_with
from minillama.seq2seq.reference import MarianTranslator, TorchTransformerMT
from minillama.seq2seq.train import TranslateSettings, build_model, train_translation, translation_loss, validation_loss
from minillama.train.config import TrainConfig
from minillama.train.loop import CALIBRATION_STEPS
from minillama.train.metrics import read_metrics
from minillama.train.optim import build_optimizers, learning_rate

log = logging.getLogger("seq2seq_baseline")
SYSTEMS = ("minillama", "marian", "nn-transformer", "marian-same-init")
DEFAULT_SYSTEMS = SYSTEMS[:3]
DIRECTION = "en-zh"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/seq2seq-baseline")
    p.add_argument("--systems", nargs="+", default=list(DEFAULT_SYSTEMS), choices=SYSTEMS)
    p.add_argument("--minutes", type=float, default=16.0, help="training minutes per system")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--preset", default="tiny", help="seq2seq/config.py shape (default: %(default)s)")
    p.add_argument("--test-sentences", type=int, default=1000)
    p.add_argument("--tokenizer", help="a tokenizer directory (default: train one into OUT/tokenizer)")
    return p.parse_args(argv)


@dataclass
class Setup:
    """What every system shares: the training config, tokenizer, encoded splits and test sentences."""

    config: TrainConfig
    preset: str
    tokenizer: Any
    train: list[data.TranslationExample]
    validation: list[data.TranslationExample]
    test: list[tuple[str, list[str]]]


def prepare(args: argparse.Namespace, out: Path) -> Setup:
    """translate_defaults() with the time budget, threads and tokenizer; the tokenizer trained once
    as `translate train` trains it (on the training split, the preset's positions as its limit)."""
    from minillama.tokenizer import Tokenizer

    config = copy.deepcopy(translate_defaults())
    config.budget.max_minutes, config.run.threads, config.run.progress = args.minutes, args.threads, False
    config.validate()
    splits = data.split_pairs(data.tatoeba_pairs())
    max_len = config_from_preset(args.preset).max_position_embeddings
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else out / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        data.train_joint_tokenizer(splits["train"], config.data.vocab_size, tokenizer_dir, model_max_length=max_len)
    config.data.tokenizer = str(tokenizer_dir)
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    train, _ = data.encode_pairs(tokenizer, data.oriented(splits["train"], DIRECTION), max_len)
    validation, _ = data.encode_pairs(tokenizer, data.oriented(splits["validation"], DIRECTION), max_len)
    test = data.with_references(data.oriented(splits["test"], DIRECTION))[:args.test_sentences]
    return Setup(config, args.preset, tokenizer, train, validation, test)


def batches(setup: Setup, pad_token_id: int) -> data.LengthBucketedBatches:
    """The Trainer's batches for `translate train`: the same order for the same seed."""
    return data.LengthBucketedBatches(setup.train, setup.config.data.batch_size,
                                      partial(data.collate, pad_token_id=pad_token_id), seed=setup.config.run.seed)


def target_tokens(setup: Setup, steps: int) -> int:
    """Target tokens (EOS included) in the first `steps` batches: the batch order replayed without
    building the tensors."""
    replay = data.LengthBucketedBatches(setup.train, setup.config.data.batch_size,
                                        lambda rows: {"tokens": sum(len(e.labels) for e in rows)},
                                        seed=setup.config.run.seed)
    return sum(next(replay)["tokens"] for _ in range(steps))


def fresh_model(setup: Setup) -> Any:
    """minillama's model for the preset and tokenizer, built after seeding as `translate train` builds it."""
    torch.manual_seed(setup.config.run.seed)
    return build_model(TranslateSettings(preset=setup.preset), setup.tokenizer)


def build_baseline(name: str, setup: Setup) -> nn.Module:
    ours = fresh_model(setup)  # its config (and for marian-same-init its weights)
    torch.manual_seed(setup.config.run.seed)
    if name == "nn-transformer":
        return TorchTransformerMT(ours.config)
    return MarianTranslator(ours.config, ours.state_dict() if name == "marian-same-init" else None)


# ---- training ------------------------------------------------------------------------------------
def train_plain(model: nn.Module, train_batches: Any, config: TrainConfig,
                evaluate: Callable[[nn.Module], float]) -> dict[str, Any]:
    """The plain loop a library user writes: AdamW (minillama's build_optimizers: fused, no decay on
    1-D parameters), warmup + cosine (train.optim.learning_rate), clipping, label smoothing, until
    `config.budget.max_minutes` of training steps (or `max_steps` steps, for tests). Like the Trainer,
    it times steps 5 to 20 to turn the time budget into the schedule's length, re-estimates it every
    `eval_interval` steps, evaluates then and at the end, and counts no evaluation in the budget."""
    (optimizer,) = build_optimizers(model, config.optim, "cpu")
    run, clip, max_steps = config.run, config.optim.grad_clip or math.inf, config.budget.max_steps
    budget = math.inf if max_steps else config.budget.max_minutes * 60
    calibrate_from, calibrate_to = CALIBRATION_STEPS
    step, tokens, elapsed, calibration_elapsed, total = 0, 0, 0.0, 0.0, max_steps
    curve, loss = [], math.nan
    model.train()
    while elapsed < budget and not (total and step >= total):
        started = time.perf_counter()
        lr = learning_rate(step, total or 10**9, config.optim)
        batch = next(train_batches)
        loss_tensor = translation_loss(model, batch, config.optim.label_smoothing)
        loss_tensor.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip, foreach=True)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(loss_tensor.detach())
        step += 1
        tokens += int((batch["labels"] != IGNORE_INDEX).sum())
        elapsed += time.perf_counter() - started
        if step == calibrate_from:  # the first steps are slow (allocation, warm-up)
            calibration_elapsed = elapsed
        elif not max_steps and (step == calibrate_to or (step > calibrate_to and step % run.eval_interval == 0)):
            per_step = (elapsed - calibration_elapsed) / (step - calibrate_from)
            total = step + max(1, int((budget - elapsed) / per_step))
        if step % run.eval_interval == 0 or elapsed >= budget or (total and step >= total):
            model.eval()
            curve.append((step, round(elapsed, 1), evaluate(model)))
            model.train()
    model.eval()
    return {"steps": step, "train_seconds": round(elapsed, 1), "target_tokens": tokens, "train_loss": loss,
            "val_curve": curve}


def greedy(model: nn.Module, decode: Callable, setup: Setup) -> dict[str, Any]:
    """BLEU / chrF of greedy translations of the test sentences, the seconds they took, a few examples."""
    sources, references = [s for s, _ in setup.test], [r for _, r in setup.test]
    started = time.perf_counter()
    hypotheses = translate_with(decode, model, setup.tokenizer, sources, batch_size=setup.config.data.batch_size,
                                truncate=True)
    seconds = time.perf_counter() - started
    return {**score(hypotheses, references, DIRECTION.split("-")[1]), "seconds": round(seconds, 1),
            "examples": [{"source": s, "translation": h, "references": r}
                         for s, h, r in list(zip(sources, hypotheses, references))[:5]]}


def run_minillama(setup: Setup, out_dir: Path) -> dict[str, Any]:
    """`minillama translate train` with the shared settings, greedy scoring only."""
    config = copy.deepcopy(setup.config)
    config.run.out_dir = str(out_dir)
    settings = TranslateSettings(DIRECTION, preset=setup.preset, beams=(1,), test_limit=len(setup.test))
    report = train_translation(config, settings)
    state = json.loads((Path(report["checkpoint"]) / "trainer_state.json").read_text(encoding="utf-8"))
    seconds = state["elapsed"]  # the Trainer's training time at its last step (report.json rounds it)
    tokens = target_tokens(setup, report["steps"])
    curve = [(r["step"], round(r["elapsed"], 1), r["val_loss"]) for r in read_metrics(out_dir / "metrics.jsonl")
             if "val_loss" in r]
    return {"steps": report["steps"], "train_seconds": round(seconds, 1), "target_tokens": tokens,
            "train_loss": report["train_loss"], "val_curve": curve, "parameters": report["parameters"],
            "greedy": report["test"]["greedy"]}


def run_baseline(name: str, setup: Setup) -> dict[str, Any]:
    model = build_baseline(name, setup)
    config, pad = setup.config, model.config.pad_token_id

    def evaluate(m: nn.Module) -> float:
        return validation_loss(m, setup.validation, config.data.batch_size, pad, torch.device("cpu"),
                               config.run.eval_batches)

    result = train_plain(model, batches(setup, pad), config, evaluate)
    return {**result, "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "greedy": greedy(model, model.greedy_ids, setup)}


def run_system(name: str, setup: Setup, out: Path) -> dict[str, Any]:
    """Train and score `name`, or read back its report when it has one."""
    report_path = out / name / "result.json"
    if not report_path.is_file():
        torch.set_num_threads(setup.config.run.threads)
        budget = setup.config.budget
        log.info("%s: training for %s on %d thread(s)", name,
                 f"{budget.max_steps} steps" if budget.max_steps else f"{budget.max_minutes:g} minutes",
                 setup.config.run.threads)
        result = run_minillama(setup, out / name) if name == "minillama" else run_baseline(name, setup)
        result = {"system": name, "minutes": setup.config.budget.max_minutes, "threads": setup.config.run.threads,
                  "preset": setup.preset, "test_sentences": len(setup.test), **result,
                  "tokens_per_s": round(result["target_tokens"] / max(result["train_seconds"], 1e-9), 1),
                  "val_loss": result["val_curve"][-1][2] if result["val_curve"] else None}
        report_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(report_path, json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        log.info("%s: %d steps, validation loss %.3f, greedy BLEU %.2f", name, result["steps"],
                 result["val_loss"], result["greedy"]["bleu"])
    return json.loads(report_path.read_text(encoding="utf-8"))


# ---- the table and the curves -----------------------------------------------------------------------------------
def table(results: list[dict[str, Any]], host: str) -> str:
    lines = [f"host: {host}; English -> Chinese (Tatoeba), greedy BLEU (sacrebleu zh) / chrF on the first "
             "test sentences, every system the same tokenizer, shape, batches, optimizer and schedule", "",
             "| system | preset | budget x threads | steps | target tokens/s | final validation loss | greedy BLEU "
             "| greedy chrF | test sentences | decode s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        val = "-" if r["val_loss"] is None else f"{r['val_loss']:.3f}"
        budget = f"{r['minutes']:g} min" if r["minutes"] else f"{r['steps']} steps"
        lines.append(f"| {r['system']} | {r['preset']} | {budget} x {r['threads']} | {r['steps']} "
                     f"| {r['tokens_per_s']:,.0f} | {val} | {r['greedy']['bleu']:.2f} | {r['greedy']['chrf']:.2f} "
                     f"| {r['test_sentences']} | {r['greedy']['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Validation loss against training seconds, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in results:
        if r["val_curve"]:
            _, seconds, losses = zip(*r["val_curve"])
            ax.plot([t / 60 for t in seconds], losses, marker=".", label=r["system"])
    ax.set_xlabel("training minutes")
    ax.set_ylabel("validation loss (nats / target token, no smoothing)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(out: Path, host: str) -> list[dict[str, Any]]:
    """seq2seq_baseline.json / .md / .png of every finished system in `out`; returns their results."""
    results = [json.loads((out / name / "result.json").read_text(encoding="utf-8")) for name in SYSTEMS
               if (out / name / "result.json").is_file()]
    atomic_write_text(out / "seq2seq_baseline.json", json.dumps({"host": host, "results": results}, indent=1,
                                                                ensure_ascii=False) + "\n")
    atomic_write_text(out / "seq2seq_baseline.md", table(results, host))
    plot(results, out / "seq2seq_baseline.png")
    return results


def main(argv: list[str] | None = None) -> None:
    import transformers

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    transformers.logging.set_verbosity_error()  # generate's note that max_new_tokens overrides max_length
    host = f"{cpu_description()}; torch {torch.__version__}, transformers {transformers.__version__}"
    print(f"host: {host}")
    out = Path(args.out)
    setup = prepare(args, out)
    for name in args.systems:
        run_system(name, setup, out)
    print(table(write_results(out, host), host))


if __name__ == "__main__":
    main()
