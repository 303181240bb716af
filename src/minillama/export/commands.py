"""`minillama export` (ours -> transformers directory, or one GGUF file for llama.cpp) and
`minillama import` (transformers -> ours)."""

from __future__ import annotations

import argparse

from minillama.options import add_checkpoint_option, add_output_option

HF_DTYPES = ("float32", "bfloat16", "float16")
GGUF_DTYPES = ("f32", "f16", "q8_0", "q4_0")  # minillama.export.gguf.DTYPES, without importing numpy here


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export", help="write a transformers-loadable directory, or a GGUF file for llama.cpp (model + tokenizer)",
        description="Export a checkpoint to a directory that transformers.AutoModelForCausalLM and "
                    "AutoTokenizer load with no extra code (LlamaForCausalLM, or Qwen2ForCausalLM "
                    "when the model has q/k/v biases); a BERT checkpoint exports as BertForMaskedLM / "
                    "BertForSequenceClassification for AutoModelForMaskedLM / AutoModelForSequenceClassification. "
                    "--format gguf writes one .gguf file (model, tokenizer, chat template) that llama.cpp, "
                    "llama-cpp-python and Ollama run, its matrices in f32, f16, q8_0 or q4_0.")
    add_checkpoint_option(export)
    export.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint's, if it has one)")
    export.add_argument("--format", choices=["hf", "gguf"], default="hf",
                        help="hf: a transformers directory; gguf: one llama.cpp file (default: %(default)s)")
    add_output_option(export, "hf: the output directory: new, empty, or an earlier export (replaced atomically); "
                              "gguf: the .gguf file: new or an earlier GGUF file (replaced atomically)")
    export.add_argument("--dtype", choices=[*HF_DTYPES, *GGUF_DTYPES], default=None,
                        help="weight dtype: float32, bfloat16 or float16 for hf (default float32); f32, f16, "
                             "q8_0 or q4_0 for gguf (default f32; q8_0 / q4_0: llama.cpp's blocks of 32 weights "
                             "in 8 / 4 bits with one float16 scale)")
    export.set_defaults(func=run_export)

    imp = subparsers.add_parser(
        "import", help="read a local transformers Llama/Qwen2 directory into a minillama checkpoint",
        description="Import a local transformers Llama or Qwen2 model directory (safetensors). "
                    "Loading is strict: a missing or unexpected weight is an error naming it.")
    imp.add_argument("--hf", required=True, help="transformers model directory")
    add_output_option(imp, "model directory to write: new, empty, or an earlier model directory")
    imp.set_defaults(func=run_import)


def run_export(args: argparse.Namespace) -> int:
    import torch

    from minillama.export import save_hf
    from minillama.model import MiniLlama
    from minillama.tokenizer import Tokenizer, check_tokenizer_matches, find_tokenizer_dir
    from minillama.train.checkpoint import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    from minillama.bert import model_family

    if args.format == "gguf":
        return export_gguf(args, checkpoint)
    args.dtype = args.dtype or "float32"
    if args.dtype not in HF_DTYPES:
        raise ValueError(f"--dtype {args.dtype} is a GGUF type; a transformers export takes "
                         f"{', '.join(HF_DTYPES)} (or add --format gguf)")
    if model_family(checkpoint) == "bert":
        return export_bert(args, checkpoint)
    model = MiniLlama.from_pretrained(checkpoint, dtype=getattr(torch, args.dtype))
    tokenizer = None
    tokenizer_dir = find_tokenizer_dir(args.tokenizer, checkpoint)
    if args.tokenizer and tokenizer_dir is None:
        raise FileNotFoundError(f"{args.tokenizer} has no tokenizer.json; pass a tokenizer directory")
    if tokenizer_dir is not None:
        tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
        check_tokenizer_matches(tokenizer, model.config.vocab_size, checkpoint)
    out = save_hf(model, args.out, tokenizer=tokenizer, overwrite=args.overwrite,
                  inputs=(checkpoint, tokenizer_dir))
    print(f"exported to {out}" + ("" if tokenizer else " (no tokenizer found: pass --tokenizer DIR)"))
    return 0


def export_gguf(args: argparse.Namespace, checkpoint) -> int:
    """One .gguf file with the model and its tokenizer (`export/gguf.py`)."""
    from minillama.bert import model_family
    from minillama.export.gguf import save_gguf
    from minillama.model import MiniLlama
    from minillama.model.layout import quantization_config
    from minillama.tokenizer import Tokenizer, check_tokenizer_matches, find_tokenizer_dir

    dtype = {"float32": "f32", "float16": "f16"}.get(args.dtype, args.dtype or "f32")
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"--dtype {args.dtype} is not a GGUF type; --format gguf takes {', '.join(GGUF_DTYPES)}")
    if model_family(checkpoint) == "bert":
        raise ValueError(f"{checkpoint} is a BERT model; GGUF export takes minillama's decoder (Llama / Qwen2) models")
    if quantization_config(checkpoint) is not None:
        raise ValueError(f"{checkpoint} is a quantized minillama model; export the float checkpoint it came "
                         f"from: GGUF quantizes itself with --dtype q8_0 or q4_0")
    tokenizer_dir = find_tokenizer_dir(args.tokenizer, checkpoint)
    if tokenizer_dir is None:
        raise FileNotFoundError(f"{args.tokenizer or checkpoint} has no tokenizer.json, and a GGUF file carries "
                                "its tokenizer; pass --tokenizer DIR")
    model = MiniLlama.from_pretrained(checkpoint)
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    check_tokenizer_matches(tokenizer, model.config.vocab_size, checkpoint)
    out = save_gguf(model, args.out, tokenizer, dtype, overwrite=args.overwrite, inputs=(checkpoint, tokenizer_dir))
    print(f"exported {dtype} GGUF to {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def export_bert(args: argparse.Namespace, checkpoint) -> int:
    """A BERT checkpoint is already a transformers directory: the export is its model and tokenizer."""
    import torch

    from minillama.bert.io import save_bert
    from minillama.bert.model import load_bert_dir
    from minillama.bert.tokenizer import load_bert_tokenizer
    from minillama.tokenizer import check_tokenizer_matches, find_tokenizer_dir

    model = load_bert_dir(checkpoint).to(getattr(torch, args.dtype))
    tokenizer_dir = find_tokenizer_dir(args.tokenizer, checkpoint)
    tokenizer = load_bert_tokenizer(tokenizer_dir) if tokenizer_dir else None
    if tokenizer is not None:
        check_tokenizer_matches(tokenizer, model.config.vocab_size, checkpoint)
    out = save_bert(model, args.out, tokenizer, overwrite=args.overwrite, inputs=(checkpoint, tokenizer_dir))
    print(f"exported {model.architecture} to {out}" + ("" if tokenizer else " (no tokenizer found)"))
    return 0


def run_import(args: argparse.Namespace) -> int:
    from minillama.bert import model_family
    from minillama.export import load_hf

    if model_family(args.hf) == "bert":
        from minillama.bert.io import save_bert
        from minillama.bert.model import load_bert_dir

        bert = load_bert_dir(args.hf)
        save_bert(bert, args.out, overwrite=args.overwrite, inputs=(args.hf,))
        print(f"imported {bert.architecture} ({sum(p.numel() for p in bert.parameters()):,} parameters) "
              f"into {args.out}")
        return 0
    model = load_hf(args.hf)
    model.save_pretrained(args.out, overwrite=args.overwrite, inputs=(args.hf,))
    print(f"imported {model.num_parameters():,} parameters into {args.out}")
    return 0
