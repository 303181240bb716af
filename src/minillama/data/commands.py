"""`minillama prepare`: encode a corpus into token files for training."""

from __future__ import annotations

import argparse
from pathlib import Path

from minillama.options import positive_int


def register(subparsers) -> None:
    from minillama.data.sources import DATASETS, DOC_SEPARATORS

    names = "; ".join(f"{name}: {entry.description}" for name, entry in DATASETS.items())
    parser = subparsers.add_parser(
        "prepare",
        help="encode a corpus into train/val token files",
        description=(
            "Tokenize a dataset (each document followed by <|endoftext|>) into OUT/train.bin, OUT/val.bin "
            "and OUT/meta.json. Streams the corpus in bounded memory over all cores; running it again "
            "with the same inputs does nothing. See docs/data.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--tokenizer", default=Path("runs/tokenizer"), type=Path, metavar="DIR",
                        help="tokenizer directory, with tokenizer.json (`minillama tokenizer train`)")
    parser.add_argument("--dataset", default="tinystories-sample", metavar="NAME|PATH",
                        help=f"a registered dataset ({names}) or a .txt[.gz] / .jsonl[.gz] / .parquet file "
                             "or a directory of them")
    parser.add_argument("--out", default=Path("runs/data"), type=Path, metavar="DIR", help="output directory")
    parser.add_argument("--val-dataset", default=None, metavar="NAME|PATH",
                        help="validation documents; without it, the dataset's own validation split, "
                             "else --val-fraction of its documents")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="fraction of documents held out for validation when there is no validation set")
    parser.add_argument("--doc-separator", choices=DOC_SEPARATORS, default="auto",
                        help="how .txt files separate documents "
                             "(auto: <|endoftext|> if the file has it, else blank lines)")
    parser.add_argument("--text-field", default="text", help="JSON field / parquet column holding the text")
    parser.add_argument("--token-dtype", dest="dtype", choices=("auto", "uint16", "uint32"), default="auto",
                        help="token id type (auto: uint16 when the vocabulary fits, else uint32)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="encoding processes (default: all cores; 1 encodes in this process)")
    parser.add_argument("--force", action="store_true",
                        help="re-encode even if OUT is up to date or was made with another tokenizer, and write "
                             "there even if it holds files minillama did not write (never into an input)")
    parser.add_argument("--utf8-errors", choices=("strict", "replace"), default="strict",
                        help="text that is not UTF-8, or a JSON lone surrogate: stop naming the file and line, "
                             "or read it as U+FFFD")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from minillama.data.prepare import prepare_dataset

    meta = prepare_dataset(
        args.tokenizer, args.dataset, args.out,
        val_dataset=args.val_dataset, val_fraction=args.val_fraction, force=args.force,
        num_workers=args.workers, progress=not args.no_progress,
        doc_separator=args.doc_separator, text_field=args.text_field, dtype=args.dtype,
        utf8_errors=args.utf8_errors,
    )
    for split in ("train", "val"):
        print(
            f"{split}: {meta[f'{split}_documents']:,} documents, {meta[f'{split}_tokens']:,} tokens "
            f"({meta[f'{split}_bytes'] / meta[f'{split}_tokens']:.2f} bytes/token, {meta['dtype']}) "
            f"-> {args.out / meta['files'][split]}"
        )
    return 0
