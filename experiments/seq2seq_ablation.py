"""Label smoothing 0 vs 0.1 and post-norm vs pre-norm for the English -> Chinese translator, at
equal budget (steps, batches, seed, schedule), on the shipped Tatoeba pairs.

    python experiments/seq2seq_ablation.py                        # 4 runs of 4,000 steps (docs/seq2seq.md)
    python experiments/seq2seq_ablation.py --steps 400 --runs post-ls0.1 pre-ls0.1
    python experiments/seq2seq_ablation.py --runs post-ls0 & python experiments/seq2seq_ablation.py --runs pre-ls0

Every run is `minillama translate train` with the defaults but for the norm placement and the label
smoothing, the same tokenizer (trained once, in OUT/tokenizer) and a step budget instead of a time
budget (so that a busy machine changes the time taken, not the result). Each run ends with BLEU /
chrF of greedy and beam search (4) on the first --test-sentences test sentences. Written to --out
(default runs/seq2seq-ablation): each run's directory, seq2seq_ablation.json / .md (the table of
all runs found there) and seq2seq_ablation.png (validation loss against step). Finished runs are
read back, not retrained. Results: docs/seq2seq.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path

from minillama.hardware import cpu_description
from minillama.seq2seq import data
from minillama.seq2seq.commands import translate_defaults
from minillama.seq2seq.train import TranslateSettings, train_translation
from minillama.train.metrics import read_metrics

log = logging.getLogger("seq2seq_ablation")
RUNS = {"post-ls0.1": (False, 0.1), "post-ls0": (False, 0.0), "pre-ls0.1": (True, 0.1), "pre-ls0": (True, 0.0)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/seq2seq-ablation")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--steps", type=int, default=4000, help="optimizer steps per run")
    p.add_argument("--test-sentences", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def train_one(name: str, args: argparse.Namespace, out: Path) -> dict:
    pre_norm, smoothing = RUNS[name]
    config = copy.deepcopy(translate_defaults())
    config.data.tokenizer = str(out / "tokenizer")
    config.optim.label_smoothing = smoothing
    config.budget.max_minutes, config.budget.max_steps = None, args.steps
    config.run.out_dir, config.run.threads, config.run.progress = str(out / name), args.threads, False
    config.run.eval_interval, config.run.checkpoint_interval, config.run.keep_last = 100, args.steps, 1
    config.validate()
    report_path = out / name / "report.json"
    if not report_path.is_file():
        settings = TranslateSettings(model={"normalize_before": pre_norm}, test_limit=args.test_sentences)
        train_translation(config, settings)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    records = read_metrics(out / name / "metrics.jsonl")
    return {"run": name, "pre_norm": pre_norm, "label_smoothing": smoothing,
            "val_curve": [(r["step"], r["val_loss"]) for r in records if "val_loss" in r],
            "greedy": {k: report["test"]["greedy"][k] for k in ("bleu", "chrf")},
            "beam4": {k: report["test"]["beam4"][k] for k in ("bleu", "chrf")}}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in results:
        steps, losses = zip(*r["val_curve"])
        ax.plot(steps, losses, color="tab:blue" if r["pre_norm"] else "tab:red",
                linestyle="-" if r["label_smoothing"] else "--", label=r["run"])
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats / target token, no smoothing)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: list[dict], args: argparse.Namespace) -> str:
    lines = [f"host: {cpu_description()}; tiny preset, {args.steps} steps of 64 pairs, English -> Chinese, "
             f"BLEU / chrF on the first {args.test_sentences} test sentences", "",
             "| norm | label smoothing | final validation loss | greedy BLEU | beam-4 BLEU | greedy chrF "
             "| beam-4 chrF |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {'pre' if r['pre_norm'] else 'post'} | {r['label_smoothing']} | {r['val_curve'][-1][1]:.3f} "
                     f"| {r['greedy']['bleu']:.2f} | {r['beam4']['bleu']:.2f} | {r['greedy']['chrf']:.2f} "
                     f"| {r['beam4']['chrf']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    if not (out / "tokenizer" / "tokenizer.json").is_file():
        splits = data.split_pairs(data.tatoeba_pairs())
        data.train_joint_tokenizer(splits["train"], translate_defaults().data.vocab_size, out / "tokenizer")
    for name in args.runs:
        train_one(name, args, out)
    results = [train_one(name, args, out) for name in RUNS if (out / name / "report.json").is_file()]
    (out / "seq2seq_ablation.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "seq2seq_ablation.md").write_text(table(results, args))
    plot(results, out / "seq2seq_ablation.png")
    print(table(results, args))


if __name__ == "__main__":
    main()
