"""Validation bits per byte of one float model and its quantized versions, each made by the CLI.

    python experiments/quantization.py                                   # the `make demo` model
    python experiments/quantization.py --checkpoint runs/s15/hf --data runs/s15/data --out runs/quant-s15

For a float model (and the token files it was trained on) it runs, into --out:

    int8/, int4-g32/, gptq-int4-g32/   minillama quantize --method int8 | int4 | gptq-int4
    qat/, qat-int4-g32/                minillama train --run.init_from MODEL --run.qat int4 for
                                       --qat-steps, then minillama quantize --method int4
    float-more/                        the same continued training without QAT: the float model
                                       QAT's result must be compared with (it trained longer)
    float-more-int4-g32/, float-more-gptq-int4-g32/
                                       float-more quantized without training: what QAT must beat
    quantization.json, .md             every directory's validation bits per byte, the change
                                       against float32, the file size and the command that made it

Every evaluation is `minillama eval`'s (all held-out stories, windows of --seq-len tokens).
Finished steps are not redone when it runs again. Results: docs/quantization.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from minillama.cli import main as minillama
from minillama.hardware import cpu_description
from minillama.train.checkpoint import resolve_checkpoint
from minillama.train.evaluate import evaluate_checkpoint


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/pipeline/hf", help="the float model")
    p.add_argument("--data", default="runs/pipeline/data", help="its token files (calibration and QAT)")
    p.add_argument("--out", default="runs/quant")
    p.add_argument("--group-size", type=int, default=32)
    p.add_argument("--qat-steps", type=int, default=3000)
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def run(argv: list[str], done: Path) -> str:
    """Run a minillama command unless `done` exists; returns the command line."""
    line = "minillama " + shlex.join(argv)
    if not done.exists():
        print(f"$ {line}", flush=True)
        if minillama(argv) != 0:
            raise SystemExit(f"failed: {line}")
    return line


def main() -> None:
    args = parse_args()
    out, g = Path(args.out), str(args.group_size)
    out.mkdir(parents=True, exist_ok=True)
    train = ["train", "--run.init_from", args.checkpoint, "--data.prepared", args.data, "--data.seq_len",
             str(args.seq_len), "--optim.lr", str(args.qat_lr), "--optim.warmup_steps", "20", "--budget.max_steps",
             str(args.qat_steps), "--run.threads", str(args.threads), "--run.progress", "false",
             "--run.eval_interval", str(args.qat_steps)]
    made = {"float32": (args.checkpoint, "the float model")}
    for method, name in (("int8", "int8"), ("int4", f"int4-g{g}"), ("gptq-int4", f"gptq-int4-g{g}")):
        extra = ["--calibration", args.data] if method == "gptq-int4" else []
        made[name] = (out / name, run(["quantize", "--checkpoint", args.checkpoint, "--method", method,
                                       "--group-size", g, *extra, "--out", str(out / name)], out / name))
    more = run([*train, "--run.out_dir", str(out / "float-more")], out / "float-more" / "checkpoints" / "latest")
    made["float-more"] = (out / "float-more", more)
    for method, name in (("int4", f"float-more-int4-g{g}"), ("gptq-int4", f"float-more-gptq-int4-g{g}")):
        extra = ["--calibration", args.data] if method == "gptq-int4" else []
        made[name] = (out / name, more + " && " + run(
            ["quantize", "--checkpoint", str(out / "float-more"), "--method", method, "--group-size", g, *extra,
             "--out", str(out / name)], out / name))
    qat = run([*train, "--run.qat", "int4", "--run.qat_group_size", g, "--run.out_dir", str(out / "qat")],
              out / "qat" / "checkpoints" / "latest")
    made[f"qat-int4-g{g}"] = (out / f"qat-int4-g{g}", qat + " && " + run(
        ["quantize", "--checkpoint", str(out / "qat"), "--method", "int4", "--group-size", g,
         "--out", str(out / f"qat-int4-g{g}")], out / f"qat-int4-g{g}"))

    rows = {}
    for name, (directory, command) in made.items():
        report = evaluate_checkpoint(directory, split="val", seq_len=args.seq_len)
        weights = sum(p.stat().st_size for p in resolve_checkpoint(directory).glob("*.safetensors"))
        rows[name] = {"bits_per_byte": report["bits_per_byte"], "loss": report["loss"], "bytes": weights,
                      "command": command}
        print(f"{name:18s} {report['bits_per_byte']:.4f} bits/byte", flush=True)
    base = rows["float32"]["bits_per_byte"]
    (out / "quantization.json").write_text(json.dumps({"host": cpu_description(), "rows": rows}, indent=2) + "\n")
    lines = [f"host: {cpu_description()}\n", "| model | val bits/byte | vs float32 | weights MB |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {r['bits_per_byte']:.4f} | {100 * (r['bits_per_byte'] / base - 1):+.2f}% | "
              f"{r['bytes'] / 1e6:.2f} |" for name, r in rows.items()]
    # QAT's target: close at least half of what the calibrated method leaves, both measured against the
    # float model trained for the same extra steps
    more, gptq = rows["float-more"]["bits_per_byte"], rows[f"float-more-gptq-int4-g{g}"]["bits_per_byte"]
    qat_bpb = rows[f"qat-int4-g{g}"]["bits_per_byte"]
    closed = (gptq - qat_bpb) / (gptq - more) if gptq != more else float("nan")
    lines += ["", f"after {args.qat_steps} more steps: round-to-nearest "
                  f"{100 * (rows[f'float-more-int4-g{g}']['bits_per_byte'] / more - 1):+.3f}%, GPTQ "
                  f"{100 * (gptq / more - 1):+.3f}%, QAT {100 * (qat_bpb / more - 1):+.3f}%: QAT closes "
                  f"{100 * closed:.0f}% of what GPTQ leaves (target: at least 50%)"]
    lines += ["", *[f"- {name}: `{r['command']}`" for name, r in rows.items()]]
    (out / "quantization.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
