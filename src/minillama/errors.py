"""Errors a user can fix. The CLI prints them as one line; library callers catch them."""


class MiniLlamaError(Exception):
    """A problem with the user's input, files or settings; the message names the fix."""


class CheckpointError(MiniLlamaError):
    """A checkpoint directory is missing, incomplete, corrupted or incompatible."""
