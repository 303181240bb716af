"""Value types for command-line options, so a bad number is a one-line usage error naming the flag."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, sizes, lengths)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    value = _int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text}")
    return value


def comma_separated(item: Callable[[str], T]) -> Callable[[str], tuple[T, ...]]:
    """A list given as "256,512,1024": each part checked by `item` (an option type such as
    `positive_int`, or a parser raising ValueError), the first bad one named."""

    def parse(text: str) -> tuple[T, ...]:
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(f"must be a comma-separated list with no empty item, got {text!r}")
        values = []
        for part in parts:
            try:
                values.append(item(part))
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise argparse.ArgumentTypeError(f"{exc} (in {text!r})") from None
        return tuple(values)

    return parse


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


OVERWRITE_HELP = "replace what --out holds even if minillama did not write it (never an input)"


def add_output_option(parser: argparse._ActionsContainer, help: str, required: bool = True, default: str | None = None,
                      overwrite_help: str = OVERWRITE_HELP) -> None:
    """`--out DIR` and `--overwrite`, the same pair in every command that writes: `--out` never destroys
    what the command did not write unless `--overwrite` says so (`files.check_output`)."""
    parser.add_argument("--out", required=required, default=default, metavar="DIR", help=help)
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)


def add_checkpoint_option(parser: argparse.ArgumentParser, what: str = "model", required: bool = True,
                          flag: str = "--checkpoint", group: argparse._ActionsContainer | None = None) -> None:
    """`--checkpoint DIR`, the same in every command: a directory holding a `what` (config.json +
    weights), or a run / checkpoints directory, meaning its latest checkpoint (`resolve_checkpoint`)."""
    (group or parser).add_argument(flag, required=required, metavar="DIR",
                                   help=f"the {what}: its directory, or a run / checkpoints directory (meaning the "
                                        "latest checkpoint)")
