"""`minillama train` and `minillama eval`."""

from __future__ import annotations

import argparse

from minillama.errors import MiniLlamaError
from minillama.options import add_checkpoint_option, add_output_option, comma_separated, positive_int
from minillama.train.config import add_config_arguments
from minillama.train.extrapolation import DEFAULT_MAX_WINDOWS, SCALINGS, parse_scaling


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="pretrain a model (default: the tiny preset on the embedded TinyStories, 5 minutes)",
        description="Pretrain a model. Settings come from the defaults, then --config FILE.toml, then "
                    "--section.key value options. With no arguments: train a tokenizer, prepare the "
                    "embedded TinyStories sample and train the tiny preset for 5 minutes into runs/tiny. "
                    "Runs resume from the latest checkpoint in run.out_dir. Multi-GPU / multi-node: "
                    "torchrun --nproc_per_node N -m minillama train ...")
    add_config_arguments(train)
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "eval", help="loss, perplexity and bits per byte of a checkpoint on a dataset",
        description="Evaluate a checkpoint: mean next-token loss (nats), perplexity and bits per UTF-8 "
                    "byte (comparable across tokenizers) on a dataset's validation documents. With "
                    "--context-lengths: the same at several window lengths, beyond the trained context too, "
                    "under several RoPE scalings (no retraining), written to the run directory (or --out) as "
                    "extrapolation.json, extrapolation.md (the table) and extrapolation.png (loss by length "
                    "and by position). Each scaling's factor is length / trained context (at least 1), with "
                    "original_max_position_embeddings = the trained context (llama3 with transformers' low/high "
                    "frequency factors 1 and 4); NAME:F fixes the factor at F for every length.")
    add_checkpoint_option(evaluate, "model (with its tokenizer files)")
    evaluate.add_argument("--dataset", default="tinystories-sample", help="dataset name or path")
    evaluate.add_argument("--split", default="val", choices=["val", "train"],
                          help="which part of a named dataset; a file path is evaluated whole")
    evaluate.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint's)")
    evaluate.add_argument("--seq-len", type=positive_int, help="window length (default: the model's context)")
    evaluate.add_argument("--batch-size", type=positive_int, default=8,
                          help="windows per forward pass (with --context-lengths: as many tokens as this many "
                               "windows of the trained context)")
    evaluate.add_argument("--device", default="auto")
    extrapolation = evaluate.add_argument_group(
        "length extrapolation", "every length reads the same text: the documents concatenated in order, with the "
                                "end-of-text token between them, cut into --max-windows windows of the longest length")
    extrapolation.add_argument("--context-lengths", type=comma_separated(positive_int), metavar="N,N,...",
                               help="window lengths to evaluate, e.g. 256,512,1024,2048,4096 (beyond the model's "
                                    "context is allowed here)")
    extrapolation.add_argument("--rope-scaling", type=comma_separated(parse_scaling), metavar="NAME,...",
                               help=f"RoPE scalings to compare: {', '.join(SCALINGS)} (default: all); "
                                    "NAME:F fixes the factor at F, e.g. yarn:16")
    extrapolation.add_argument("--max-windows", type=positive_int, metavar="N",
                               help=f"windows of the longest length to read (default: {DEFAULT_MAX_WINDOWS})")
    add_output_option(extrapolation, "write the table and plot here (default: the checkpoint's run directory)",
                      required=False, overwrite_help="let --out replace a directory that is not an earlier such output")
    evaluate.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from minillama.train.config import config_from_args
    from minillama.train.distributed import is_main_process
    from minillama.train.pretrain import pretrain

    config = config_from_args(args)
    result = pretrain(config)
    if not is_main_process():
        return 0
    status = "finished" if result.stopped_by == "budget" else "interrupted"
    print(f"{status} at step {result.step} ({result.tokens:,} tokens); checkpoint {result.checkpoint}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import json
    import math

    from minillama.train.evaluate import evaluate_checkpoint

    if args.context_lengths is not None:
        return run_extrapolation(args)
    for flag, value in (("--rope-scaling", args.rope_scaling), ("--max-windows", args.max_windows),
                        ("--out", args.out)):
        if value is not None:
            raise MiniLlamaError(f"{flag} goes with --context-lengths (length extrapolation); add the lengths, "
                                 "e.g. --context-lengths 256,512,1024")
    report = evaluate_checkpoint(args.checkpoint, args.dataset, split=args.split, tokenizer_dir=args.tokenizer,
                                 seq_len=args.seq_len, batch_size=args.batch_size, device=args.device)
    print(json.dumps(report, indent=2))
    return 0 if math.isfinite(report["loss"]) else 1


def run_extrapolation(args: argparse.Namespace) -> int:
    from pathlib import Path

    from minillama.train.extrapolation import (
        evaluate_extrapolation,
        extrapolation_destination,
        extrapolation_table,
        save_extrapolation,
    )

    if args.seq_len is not None:
        raise MiniLlamaError("--seq-len and --context-lengths both set the window length; give one "
                             "(--context-lengths may go beyond the model's context)")
    inputs = (args.checkpoint, args.tokenizer, args.dataset if Path(args.dataset).exists() else None)
    destination = extrapolation_destination(args.checkpoint, args.out, overwrite=args.overwrite, inputs=inputs)
    report = evaluate_extrapolation(args.checkpoint, args.context_lengths, args.rope_scaling or SCALINGS,
                                    dataset=args.dataset, split=args.split, tokenizer_dir=args.tokenizer,
                                    max_windows=args.max_windows or DEFAULT_MAX_WINDOWS, batch_size=args.batch_size,
                                    device=args.device)
    written = save_extrapolation(report, destination, is_out=args.out is not None, overwrite=args.overwrite,
                                 inputs=inputs)
    print(extrapolation_table(report))
    print("wrote " + ", ".join(str(path) for path in written))
    if not any(path.suffix == ".png" for path in written):
        print("no plot: matplotlib is not installed (pip install matplotlib)")
    return 0
