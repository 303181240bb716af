"""The `minillama` command: one subcommand per pipeline stage.

Each stage's package has a `commands.py` with `register(subparsers)`, which adds its parser and
sets `func` (called with the parsed namespace, returning an exit code or None). Heavy imports
(torch, transformers) happen inside those functions, so `minillama --help` stays fast.
Library code raises exceptions; this is the one place that turns them into a short message:
one line on stderr, exit code 2 for bad input (1 for a failing disk or device), never a traceback
unless -v asks for it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
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
    "minillama.bert.commands",
    "minillama.seq2seq.commands",
    "minillama.export.commands",
    "minillama.quant.commands",
    "minillama.model.commands",
    "minillama.lab.commands",
    "minillama.serve.commands",
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line naming the (sub)command, like every other error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="minillama",
        description="Build, train, sample and export a small LLaMA-style language model.",
    )
    parser.add_argument("--version", action="version", version=f"minillama {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging and tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    _remember_parsers(parser)
    return parser


def _remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command records its own parser in the namespace, so an error names the right one."""
    parser.set_defaults(command_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _remember_parsers(subparser)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            message = f"unrecognized arguments: {' '.join(unknown)}"
            if hasattr(args, "config"):  # a training command: say which setting is unknown
                from minillama.train.config import explain_unknown

                message = explain_unknown(unknown) or message
            args.command_parser.error(message)
    except SystemExit as exc:  # a usage error, already printed; --help and --version exit as usual
        if not exc.code:
            raise
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        force=True)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (MiniLlamaError, ValueError, FileNotFoundError, FileExistsError, PermissionError,
            IsADirectoryError, NotADirectoryError) as exc:
        if args.verbose:
            raise
        print(f"error: {describe(exc, args.command_parser)}", file=sys.stderr)
        return 2
    except OSError as exc:  # full disk, unreadable file, ...
        if args.verbose:
            raise
        print(f"error: {exc.strerror or exc} ({exc.filename or ''})".rstrip(" ()"), file=sys.stderr)
        return 1


def describe(exc: BaseException, parser: argparse.ArgumentParser) -> str:
    """The error as one line; a `MiniLlamaError` remedy names the command's own flag, if it has one."""
    remedy = getattr(exc, "remedy", None)
    message = exc.message if remedy else str(exc)
    if remedy:
        setting, value, effect = remedy
        flag = option_for(parser, setting)
        if flag:
            message += f" (pass {flag}{'' if value is None else ' ' + value} to {effect})"
    return re.sub(r"\s*\n\s*", " ", message.strip())


def option_for(parser: argparse.ArgumentParser, setting: str) -> str | None:
    """The parser's flag for a setting: `--utf8-errors` (dest utf8_errors) or `--data.utf8_errors`."""
    for action in parser._actions:
        if action.dest == setting or action.dest.endswith("." + setting):
            return next((o for o in action.option_strings if o.startswith("--")), None)
    return None
