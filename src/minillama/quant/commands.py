"""`minillama quantize`: a float checkpoint -> a quantized model directory every command loads;
`minillama prune`: magnitude / 2:4 pruning of one, or a sweep of sparsities."""

from __future__ import annotations

import argparse
from pathlib import Path

from minillama.options import add_checkpoint_option, add_output_option, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize", help="int8 / int4 / GPTQ int4 weights: a smaller model directory that every command loads",
        description="Quantize every Linear of the decoder blocks (and the LM head with --head): int8 per output "
                    "channel, int4 in groups with zero points (round to nearest), or GPTQ int4 calibrated on "
                    "training text. The output is a model directory (config.json with quantization_config, "
                    "safetensors, tokenizer, checksums) for sample, chat, serve and eval.")
    add_checkpoint_option(parser, "float model")
    parser.add_argument("--method", required=True, metavar="METHOD",
                        help="int8, int4 (round to nearest) or gptq-int4")
    parser.add_argument("--group-size", type=positive_int, default=32,
                        help="int4: input features per scale and zero point, 32, 64 or 128 (default: %(default)s)")
    parser.add_argument("--head", action="store_true", help="quantize the LM head too (untied from the embedding)")
    parser.add_argument("--calibration", default="tinystories-sample", metavar="DATA",
                        help="gptq-int4: training text (a dataset name or file) or a prepared data directory / "
                             "train.bin (default: %(default)s)")
    parser.add_argument("--calibration-sequences", type=positive_int, default=256, metavar="N",
                        help="gptq-int4: windows of calibration text (default: %(default)s)")
    parser.add_argument("--calibration-len", type=positive_int, default=None, metavar="T",
                        help="gptq-int4: tokens per window, at most the model's context (default: 256 or the "
                             "context if shorter)")
    parser.add_argument("--damp", type=float, default=0.01,
                        help="gptq-int4: Hessian dampening, a fraction of its mean diagonal (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="calibration sample seed (default: %(default)s)")
    add_output_option(parser, "output model directory: new, empty or an earlier model directory (replaced atomically)")
    parser.set_defaults(func=run_quantize)

    prune = subparsers.add_parser(
        "prune", help="magnitude pruning (per layer, global, 2:4) of the block weights, or a sparsity sweep",
        description="Zero the smallest weights of every decoder block's Linear: per layer or with one global "
                    "threshold, or 2:4 semi-structured (2 kept in every 4). Writes a float model directory "
                    "(fine-tune it with `minillama train --run.init_from DIR --run.keep_sparsity true`), or with "
                    "--sweep a table (sweep.md, sweep.json) and a plot (sweep.png) of validation bits per byte "
                    "against sparsity.")
    add_checkpoint_option(prune, "float model")
    prune.add_argument("--method", choices=("layer", "global", "2:4"), default="layer",
                       help="magnitude per layer, one global threshold, or 2:4 semi-structured (default: %(default)s)")
    prune.add_argument("--sparsity", type=float, default=0.5,
                       help="fraction of the block weights to zero, in [0, 1) (default: %(default)s)")
    prune.add_argument("--sweep", action="store_true",
                       help="evaluate layer and global pruning at 0%%, 10%%, ... 90%% and 2:4 instead")
    prune.add_argument("--max-documents", type=positive_int, default=None, metavar="N",
                       help="--sweep: evaluate on the first N validation stories only (default: all)")
    prune.add_argument("--seq-len", type=positive_int, default=256, help="--sweep: evaluation window (default: 256)")
    add_output_option(prune, "output directory: new, empty or an earlier one of the same kind (replaced atomically)")
    prune.set_defaults(func=run_prune)


def run_quantize(args: argparse.Namespace) -> int:
    from minillama.files import check_output
    from minillama.model import MiniLlama
    from minillama.quant.model import METHODS, QuantizationError, check_quantizable, quantize_model, save_quantized
    from minillama.tokenizer import find_tokenizer_dir
    from minillama.train.checkpoint import resolve_checkpoint

    if args.method not in METHODS:  # before loading anything
        raise QuantizationError(f"unknown quantization method {args.method!r}; choose one of {', '.join(METHODS)}")
    checkpoint = resolve_checkpoint(args.checkpoint)
    check_output(args.out, "model", overwrite=args.overwrite, inputs=(checkpoint,))
    model = MiniLlama.from_pretrained(checkpoint).eval()
    check_quantizable(model, args.method, args.group_size, args.head)
    tokenizer_dir = find_tokenizer_dir(checkpoint)
    calibration = None
    if args.method == "gptq-int4":
        calibration = _calibration(args, model, tokenizer_dir or checkpoint)
    quantization = quantize_model(model, args.method, args.group_size, args.head, calibration, args.damp)
    save_quantized(model, quantization, args.out, tokenizer_dir, overwrite=args.overwrite, inputs=(checkpoint,))
    size = sum(path.stat().st_size for path in Path(args.out).glob("*.safetensors"))
    print(f"quantized {len(quantization['modules'])} Linear layers ({args.method}"
          + (f", group size {args.group_size}" if quantization["bits"] == 4 else "")
          + f") into {args.out} (weights {size / 1e6:.2f} MB)")
    return 0


def _calibration(args: argparse.Namespace, model, tokenizer_dir):
    from minillama.errors import MiniLlamaError
    from minillama.quant.calibration import calibration_tokens, calibration_windows

    seq_len = args.calibration_len or min(256, model.config.max_position_embeddings)
    if seq_len > model.config.max_position_embeddings:
        raise MiniLlamaError(f"--calibration-len {seq_len} is longer than the model's context "
                             f"({model.config.max_position_embeddings})")
    tokens = calibration_tokens(args.calibration, tokenizer_dir, model.config.vocab_size,
                                args.calibration_sequences * seq_len, args.seed)
    return calibration_windows(tokens, args.calibration_sequences, seq_len, args.seed)


def run_prune(args: argparse.Namespace) -> int:
    from minillama.files import atomic_directory, check_output
    from minillama.model import MiniLlama
    from minillama.quant.model import check_quantizable
    from minillama.quant.prune import apply_masks, magnitude_masks
    from minillama.tokenizer import find_tokenizer_dir
    from minillama.train.checkpoint import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    kind = "prune-sweep" if args.sweep else "model"
    check_output(args.out, kind, overwrite=args.overwrite, inputs=(checkpoint,))
    model = MiniLlama.from_pretrained(checkpoint).eval()
    check_quantizable(model, "int8", 32)  # refuses an already quantized model
    if args.sweep:
        from minillama.quant.sweep import prune_sweep, write_sweep

        rows = prune_sweep(checkpoint, seq_len=args.seq_len, max_documents=args.max_documents)
        documents = f"first {args.max_documents}" if args.max_documents else "all"
        title = f"magnitude pruning of {checkpoint} ({documents} validation stories, windows of {args.seq_len})"
        with atomic_directory(args.out, kind, overwrite=args.overwrite, inputs=(checkpoint,)) as tmp:
            write_sweep(rows, tmp, title)
        print((Path(args.out) / "sweep.md").read_text(encoding="utf-8"), end="")
        return 0
    sparsity = apply_masks(model, magnitude_masks(model, args.sparsity, args.method))
    model.save_pretrained(args.out, overwrite=args.overwrite, inputs=(checkpoint,))
    tokenizer_dir = find_tokenizer_dir(checkpoint)
    if tokenizer_dir is not None:
        from minillama.tokenizer import Tokenizer

        Tokenizer.from_pretrained(tokenizer_dir).save_pretrained(args.out)
    print(f"pruned {sparsity:.1%} of the block weights ({args.method}) into {args.out}")
    return 0
