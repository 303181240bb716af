"""Per-rank memory of DDP and ZeRO stages 1-3: what each rank holds, as the trainer measures it.

    OMP_NUM_THREADS=1 python benchmarks/bench_zero_memory.py                    # stories42M shape, 2 and 4 processes
    OMP_NUM_THREADS=1 python benchmarks/bench_zero_memory.py --preset debug --processes 2

Trains the given shape for two steps under `torchrun` (CPU, gloo) once per (stage, processes) and
prints the trainer's own memory record (metrics.jsonl, written after the first step): bytes of
parameters (between steps, and gathered between a forward and its backward), gradients and
optimizer state held by rank 0 as local shards, next to DDP's whole copies, and rank 0's peak
resident memory. Only bytes are reported: on a shared CPU the step times mean nothing.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from minillama.assets import asset_path
from minillama.hardware import cpu_description

STAGES = ("ddp", "zero1", "zero2", "zero3")


def corpus(root: Path) -> tuple[Path, Path]:
    """A 512-token BPE and token files of a few hundred stories (the shape's vocabulary is set apart)."""
    from minillama.data import prepare_dataset
    from minillama.tokenizer import train_tokenizer

    with gzip.open(asset_path("tinystories/tinystories_train.txt.gz"), "rt", encoding="utf-8") as f:
        text = "".join(itertools.islice(f, 3000))
    (root / "stories.txt").write_text(text[: text.rindex("<|endoftext|>") + 14], encoding="utf-8")
    train_tokenizer(root / "stories.txt", 512, out_dir=root / "tokenizer")
    prepare_dataset(root / "tokenizer", root / "stories.txt", root / "data", val_fraction=0.1, progress=False)
    return root / "tokenizer", root / "data"


def measure(root: Path, tokenizer: Path, data: Path, preset: str, vocab: int, stage: str, processes: int) -> dict:
    out = root / f"{stage}-{processes}"
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    command = [torchrun, "--standalone", f"--nproc_per_node={processes}", "-m", "minillama", "train",
               "--model.preset", preset, "--model.vocab_size", str(vocab), "--run.out_dir", str(out),
               "--data.tokenizer", str(tokenizer), "--data.prepared", str(data), "--data.seq_len", "64",
               "--data.batch_size", "1", "--budget.max_steps", "2", "--run.precision", "float32",
               "--run.progress", "false", "--run.parallel", stage, "--run.threads", "1",
               "--run.eval_batches", "1", "--run.plot", "false"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(out)
    return next(r["memory"] for r in records if "memory" in r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="stories42M")
    parser.add_argument("--vocab-size", type=int, default=4096, help="as configs/stories42M.toml")
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    print(f"host: {cpu_description()}; CPU, gloo, float32 (AdamW: two float32 moments a parameter)")
    mib = 2**20
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer, data = corpus(root)
        print(f"\n{args.preset} shape, vocab {args.vocab_size}; MiB held by rank 0 (DDP's whole copy: ratio)")
        print("| processes | stage | parameters between steps | parameters in a step | gradients | optimizer state "
              "| total between steps | peak RSS |")
        print("|---|---|---|---|---|---|---|---|")
        for processes in args.processes:
            for stage in STAGES:
                m = measure(root, tokenizer, data, args.preset, args.vocab_size, stage, processes)

                def cell(held: int, whole: int) -> str:
                    return f"{held / mib:.1f} ({held / whole:.2f})"

                held = m["params_bytes"] + m["grads_bytes"] + m["optimizer_bytes"]
                whole = m["ddp_params_bytes"] + m["ddp_grads_bytes"] + m["ddp_optimizer_bytes"]
                print(f"| {processes} | {stage} | {cell(m['params_bytes'], m['ddp_params_bytes'])} "
                      f"| {cell(m['params_in_step_bytes'], m['ddp_params_bytes'])} "
                      f"| {cell(m['grads_bytes'], m['ddp_grads_bytes'])} "
                      f"| {cell(m['optimizer_bytes'], m['ddp_optimizer_bytes'])} | {cell(held, whole)} "
                      f"| {m['max_rss_bytes'] / mib:.0f} |", flush=True)


if __name__ == "__main__":
    main()
