"""`minillama quantize`: a float checkpoint -> a quantized model directory every command loads."""

from __future__ import annotations

import argparse
from pathlib import Path

from minillama.options import add_checkpoint_option, positive_int


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
    parser.add_argument("--calibration-len", type=positive_int, default=256, metavar="T",
                        help="gptq-int4: tokens per window, at most the model's context (default: %(default)s)")
    parser.add_argument("--damp", type=float, default=0.01,
                        help="gptq-int4: Hessian dampening, a fraction of its mean diagonal (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="calibration sample seed (default: %(default)s)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output model directory: new, empty or an earlier model directory (replaced atomically)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what --out holds even if minillama did not write it (never an input)")
    parser.set_defaults(func=run_quantize)


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

    seq_len = args.calibration_len
    if seq_len > model.config.max_position_embeddings:
        raise MiniLlamaError(f"--calibration-len {seq_len} is longer than the model's context "
                             f"({model.config.max_position_embeddings})")
    tokens = calibration_tokens(args.calibration, tokenizer_dir, model.config.vocab_size,
                                args.calibration_sequences * seq_len, args.seed)
    return calibration_windows(tokens, args.calibration_sequences, seq_len, args.seed)
