"""Progress: a bar on a terminal; elsewhere (CI logs, `> log.txt`) a plain line every few seconds,
and nothing at all for work that ends sooner."""

from __future__ import annotations

import io
import logging
import sys
from typing import Any

log = logging.getLogger("minillama.progress")
PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} {percentage:.0f}% {elapsed}<{remaining}, {rate_fmt}{postfix}"


class _LogLines(io.TextIOBase):
    """What tqdm writes, as one log record per refresh."""

    def write(self, text: str) -> int:
        line = text.strip("\r\n ")
        if line:
            log.info(line)
        return len(text)

    def flush(self) -> None:
        pass


def progress_bar(*, enabled: bool = True, interval: float = 10.0, **kwargs: Any):
    """A `tqdm` bar (same arguments) on stderr when it is a terminal; when it is not, one plain
    log line every `interval` seconds instead of carriage-return redraws."""
    from tqdm.auto import tqdm

    if not enabled:
        return tqdm(disable=True, **kwargs)
    if sys.stderr.isatty():
        return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)
    return tqdm(file=_LogLines(), disable=False, mininterval=interval, delay=interval, bar_format=PLAIN_FORMAT,
                **kwargs)
