"""`minillama train` and `minillama eval`."""

from __future__ import annotations

import argparse

from minillama.options import add_checkpoint_option, positive_int
from minillama.train.config import add_config_arguments


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
                    "byte (comparable across tokenizers) on a dataset's validation documents.")
    add_checkpoint_option(evaluate, "model (with its tokenizer files)")
    evaluate.add_argument("--dataset", default="tinystories-sample", help="dataset name or path")
    evaluate.add_argument("--split", default="val", choices=["val", "train"],
                          help="which part of a named dataset; a file path is evaluated whole")
    evaluate.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint's)")
    evaluate.add_argument("--seq-len", type=positive_int, help="window length (default: the model's context)")
    evaluate.add_argument("--batch-size", type=positive_int, default=8)
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from minillama.train.config import config_from_args
    from minillama.train.pretrain import pretrain

    config = config_from_args(args)
    result = pretrain(config)
    status = "finished" if result.stopped_by == "budget" else "interrupted"
    print(f"{status} at step {result.step} ({result.tokens:,} tokens); checkpoint {result.checkpoint}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import json
    import math

    from minillama.train.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(args.checkpoint, args.dataset, split=args.split, tokenizer_dir=args.tokenizer,
                                 seq_len=args.seq_len, batch_size=args.batch_size, device=args.device)
    print(json.dumps(report, indent=2))
    return 0 if math.isfinite(report["loss"]) else 1
