"""`minillama export` (ours -> transformers directory) and `minillama import` (the reverse)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export", help="write a transformers-loadable directory (model + tokenizer)",
        description="Export a checkpoint to a directory that transformers.AutoModelForCausalLM and "
                    "AutoTokenizer load with no extra code (LlamaForCausalLM, or Qwen2ForCausalLM "
                    "when the model has q/k/v biases).")
    export.add_argument("--checkpoint", required=True, help="model directory to export")
    export.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint's, if it has one)")
    export.add_argument("--out", required=True, help="output directory (replaced atomically)")
    export.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="weight dtype in the export (default: %(default)s)")
    export.set_defaults(func=run_export)

    imp = subparsers.add_parser(
        "import", help="read a local transformers Llama/Qwen2 directory into a minillama checkpoint",
        description="Import a local transformers Llama or Qwen2 model directory (safetensors). "
                    "Loading is strict: a missing or unexpected weight is an error naming it.")
    imp.add_argument("--hf", required=True, help="transformers model directory")
    imp.add_argument("--out", required=True, help="minillama checkpoint directory to write")
    imp.set_defaults(func=run_import)


def find_tokenizer_dir(*candidates: str | Path | None) -> Path | None:
    """The first directory that holds a tokenizer.json."""
    for candidate in candidates:
        if candidate and (Path(candidate) / "tokenizer.json").is_file():
            return Path(candidate)
    return None


def run_export(args: argparse.Namespace) -> int:
    import torch

    from minillama.export import save_hf
    from minillama.model import MiniLlama

    model = MiniLlama.from_pretrained(args.checkpoint, dtype=getattr(torch, args.dtype))
    tokenizer = None
    tokenizer_dir = find_tokenizer_dir(args.tokenizer, args.checkpoint)
    if args.tokenizer and tokenizer_dir is None:
        raise FileNotFoundError(f"{args.tokenizer} has no tokenizer.json; pass a tokenizer directory")
    if tokenizer_dir is not None:
        from minillama.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    out = save_hf(model, args.out, tokenizer=tokenizer)
    print(f"exported to {out}" + ("" if tokenizer else " (no tokenizer found: pass --tokenizer DIR)"))
    return 0


def run_import(args: argparse.Namespace) -> int:
    from minillama.export import load_hf

    model = load_hf(args.hf)
    model.save_pretrained(args.out)
    print(f"imported {model.num_parameters():,} parameters into {args.out}")
    return 0
