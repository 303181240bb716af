"""The `minillama` command: one subcommand per pipeline stage.

Each stage's package has a `commands.py` with `register(subparsers)`, which adds its parser and
sets `func` (called with the parsed namespace, returning an exit code or None). Heavy imports
(torch, transformers) happen inside those functions, so `minillama --help` stays fast.
Library code raises exceptions; this is the one place that turns them into a short message.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from minillama import __version__
from minillama.errors import MiniLlamaError

# Order is the order shown by `minillama --help`: the pipeline from left to right.
COMMAND_MODULES = (
    "minillama.pipeline",
    "minillama.tokenizer.commands",
    "minillama.data.commands",
    "minillama.train.commands",
    "minillama.generate.commands",
    "minillama.finetune.commands",
    "minillama.export.commands",
    "minillama.model.commands",
    "minillama.serve.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minillama",
        description="Build, train, sample and export a small LLaMA-style language model.",
    )
    parser.add_argument("--version", action="version", version=f"minillama {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # stage not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `train` takes any --model.FIELD override, so it receives the options argparse does not know.
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "accepts_unknown", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        if getattr(args, "accepts_unknown", False):
            return args.func(args, unknown) or 0
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (MiniLlamaError, ValueError, FileNotFoundError, FileExistsError, PermissionError) as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # full disk, unreadable file, ...
        if args.verbose:
            raise
        print(f"error: {exc.strerror or exc} ({exc.filename or ''})".rstrip(" ()"), file=sys.stderr)
        return 1
