"""Errors a user can fix. The CLI prints them as one line; library callers catch them."""

from __future__ import annotations


class MiniLlamaError(Exception):
    """A problem with the user's input, files or settings; the message names the fix.

    `remedy` = (setting, value, effect) names a library setting that fixes it, e.g.
    ("utf8_errors", "replace", "read it as U+FFFD"); value None means a switch turned on. Library
    callers read "(set utf8_errors='replace' to read it as U+FFFD)"; the CLI spells the setting as
    the running command's own flag ("--utf8-errors replace" in `prepare`, "--data.utf8_errors
    replace" in `train`), and leaves the remedy out where the command has no such flag.
    """

    def __init__(self, message: str, remedy: tuple[str, str | None, str] | None = None):
        super().__init__(message)
        self.message, self.remedy = message, remedy

    def __str__(self) -> str:
        if self.remedy is None:
            return self.message
        setting, value, effect = self.remedy
        return f"{self.message} (set {setting}={True if value is None else value!r} to {effect})"


class CheckpointError(MiniLlamaError):
    """A checkpoint directory is missing, incomplete, corrupted or incompatible."""


class OutputError(MiniLlamaError):
    """Writing an output would destroy something minillama did not write (or an input)."""
