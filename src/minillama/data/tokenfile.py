"""Token files: a 64-byte header, then the token ids as one flat little-endian array.

Layout (all integers little-endian):

    offset  size  field
    0       8     magic b"MLTOKENS"
    8       4     format version (1)
    12      4     dtype code: 1 = uint16, 2 = uint32
    16      8     number of tokens
    24      40    zero padding, so the ids start at a 64-byte-aligned offset
    64      ...   the ids

This is nanoGPT's / llama2.c's flat `.bin` with a header in front: the header makes a file
self-describing (no guessing the dtype) and lets a reader detect a truncated file, because the
file size must equal 64 + count * itemsize. Readers memory-map the ids, so a corpus larger than
RAM costs only page cache.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

import numpy as np

from minillama.errors import MiniLlamaError
from minillama.files import fsync_dir

MAGIC = b"MLTOKENS"
VERSION = 1
HEADER_SIZE = 64
_HEADER = struct.Struct("<8sIIQ")
DTYPE_CODES = {np.dtype(np.uint16): 1, np.dtype(np.uint32): 2}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The smallest supported dtype that holds every id below `vocab_size`."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _check_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in DTYPE_CODES:
        raise ValueError(f"token files hold uint16 or uint32 ids, not {dtype}")
    return dtype


def _pack_header(dtype: np.dtype, count: int) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, DTYPE_CODES[dtype], count).ljust(HEADER_SIZE, b"\0")


class TokenFile:
    """A read-only view of a token file; `tokens` is a numpy memmap of the ids."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no token file at {self.path}; create it with `minillama prepare`")
        with open(self.path, "rb") as f:
            header = f.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE or header[:8] != MAGIC:
            raise MiniLlamaError(f"{self.path} is not a minillama token file (bad header); re-create it")
        _, version, code, count = _HEADER.unpack_from(header)
        if version != VERSION:
            raise MiniLlamaError(
                f"{self.path} has token file version {version}, this minillama reads {VERSION}; "
                "re-create it with `minillama prepare --force`"
            )
        if code not in CODE_DTYPES:
            raise MiniLlamaError(f"{self.path} has an unknown dtype code {code}; re-create it")
        self.dtype = CODE_DTYPES[code]
        expected = HEADER_SIZE + count * self.dtype.itemsize
        actual = self.path.stat().st_size
        if actual != expected:
            raise MiniLlamaError(
                f"{self.path} is {actual} bytes but its header promises {count} tokens ({expected} bytes): "
                "the file is truncated or corrupted; re-create it with `minillama prepare --force`"
            )
        if count:
            self.tokens = np.memmap(self.path, dtype=self.dtype, mode="r", offset=HEADER_SIZE, shape=(count,))
        else:  # mmap refuses empty ranges
            self.tokens = np.empty(0, dtype=self.dtype)

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, tokens={len(self)}, dtype={self.dtype})"


class TokenFileWriter:
    """Streams ids into a temporary sibling of `path`; `commit()` moves it under the final name.

    Until `commit()` nothing exists under `path`, so a crash or an exception never leaves a
    half-written token file there (at worst a hidden `.NAME.tmp-PID` file beside it, which the
    next `minillama prepare` removes). Used as a context manager, an exception discards the file.
    """

    def __init__(self, path: str | os.PathLike, dtype):
        self.path = Path(path)
        self.dtype = _check_dtype(dtype)
        self.max_id = np.iinfo(self.dtype).max
        self.count = 0
        self.tmp_path = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._file = open(self.tmp_path, "wb")
        self._file.write(_pack_header(self.dtype, 0))
        self._finished = False

    def write(self, ids) -> None:
        ids = np.asarray(ids)
        if ids.size == 0:
            return
        if ids.min() < 0 or ids.max() > self.max_id:
            bad = int(ids.max()) if ids.max() > self.max_id else int(ids.min())
            raise MiniLlamaError(
                f"token id {bad} does not fit {self.dtype} (0..{self.max_id}) in {self.path.name}; "
                "prepare with dtype uint32 (`minillama prepare --token-dtype uint32`)"
            )
        self._file.write(ids.astype(self.dtype, copy=False).tobytes())
        self.count += ids.size

    def finish(self) -> None:
        """Write the final header and make the temporary file durable (it keeps its temporary name)."""
        if self._finished:
            return
        self._file.seek(0)
        self._file.write(_pack_header(self.dtype, self.count))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._finished = True

    def commit(self) -> None:
        """Finish, then rename the file to its final name in one atomic step."""
        self.finish()
        os.replace(self.tmp_path, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp_path.unlink()

    def __enter__(self) -> TokenFileWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_token_file(path: str | os.PathLike, ids, dtype=None) -> TokenFile:
    """Write `ids` (any integer sequence) as a token file atomically and open it.

    `dtype` defaults to uint16 when every id fits, else uint32.
    """
    ids = np.asarray(ids)
    if dtype is None:
        dtype = dtype_for_vocab(int(ids.max()) + 1 if ids.size else 0)
    with TokenFileWriter(path, dtype) as writer:
        writer.write(ids)
    return TokenFile(path)
