"""What the 5-minute demo learns under each setting, at the same wall-clock budget.

    python experiments/demo_budget.py --out runs/demo-budget --seeds 1337 2   # the table in docs/training.md
    python experiments/demo_budget.py --out runs/steps --variant "wsd=--optim.schedule wsd --budget.max_steps 2800"

Each variant is `minillama pipeline` (the demo: the `tiny` preset on the embedded TinyStories
sample) with its own settings added, for `--minutes` of training time, one run at a time: a time
budget measures the machine, and two runs at once would halve each other's steps. The first run
trains the tokenizer and prepares the token files; every later one reads them, so all runs see the
same tokens. The figure is the pipeline's own: bits per byte over every held-out story. The table
(markdown) goes to stdout and OUT/results.md, every report to OUT/results.json; a run directory
that already holds a report is read, not run again, so an interrupted sweep continues.
A variant with `--budget.max_steps N` compares at equal work instead, where the machine's speed
does not enter (two such sweeps may share the cores, each with `--run.threads 1`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from minillama.hardware import cpu_description

# name -> pipeline arguments on top of the demo's settings (configs/tiny.toml): the table in docs/training.md
VARIANTS = {
    "eager, AdamW, lr 2e-3 to 0.3x (the earlier demo)":
        "--run.compile false --optim.optimizer adamw --optim.lr 2e-3 --optim.min_lr_ratio 0.3",
    "compiled, AdamW, lr 2e-3 to 0.3x": "--optim.optimizer adamw --optim.lr 2e-3 --optim.min_lr_ratio 0.3",
    "compiled, Muon, lr 2e-3 to 0.3x": "--optim.lr 2e-3 --optim.min_lr_ratio 0.3",
    "compiled, Muon, lr 3e-3 to 0.1x (the demo)": "",
    "compiled, Muon, lr 4e-3 to 0.1x": "--optim.lr 4e-3",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo-budget", help="one run directory per variant and seed under it")
    p.add_argument("--minutes", type=float, default=5.0, help="training time of each run")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337], help="run.seed values (each variant runs each)")
    p.add_argument("--variant", action="append", metavar="NAME=ARGS",
                   help="a variant to run instead of the built-in list, e.g. 'wsd=--optim.schedule wsd'")
    return p.parse_args()


def run_variant(directory: Path, arguments: str, seed: int, minutes: float, shared: Path | None) -> dict:
    """One pipeline run (or its existing report): the report's figures."""
    report = directory / "report.json"
    if not report.exists():
        command = [sys.executable, "-m", "minillama", "pipeline", "--out", str(directory), "--minutes", str(minutes),
                   "--run.seed", str(seed), *shlex.split(arguments)]
        if shared is not None:  # the first run's tokenizer and token files
            command += ["--data.tokenizer", str(shared / "tokenizer"), "--data.prepared", str(shared / "data")]
        print("$", shlex.join(command), flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def main() -> None:
    args = parse_args()
    variants = dict(v.split("=", 1) for v in args.variant) if args.variant else VARIANTS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"host: {cpu_description()}", flush=True)
    shared = None
    results = []
    for index, (name, arguments) in enumerate(variants.items()):
        for seed in args.seeds:
            directory = out / f"v{index}-seed{seed}"
            report = run_variant(directory, arguments, seed, args.minutes, shared)
            if shared is None and (directory / "tokenizer").is_dir():  # it trained its own
                shared = directory
            results.append({"variant": name, "arguments": arguments, "seed": seed, **report})
            print(f"{name} (seed {seed}): {report['steps']} steps, {report['bits_per_byte']:.4f} bits per byte",
                  flush=True)
    lines = [f"host: {cpu_description()}; {args.minutes:g} minutes of training each", "",
             "| variant | arguments | steps | bits per byte (each seed) | mean |", "| --- | --- | ---: | ---: | ---: |"]
    for name, arguments in variants.items():
        rows = [r for r in results if r["variant"] == name]
        bpb = [r["bits_per_byte"] for r in rows]
        steps = "/".join(f"{r['steps']:,}" for r in rows)
        lines.append(f"| {name} | `{arguments or '-'}` | {steps} | {' / '.join(f'{b:.3f}' for b in bpb)} | "
                     f"{statistics.mean(bpb):.3f} |")
    table = "\n".join(lines)
    print("\n" + table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
