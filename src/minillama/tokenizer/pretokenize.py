"""Pre-tokenization: the GPT-2 regex, special-token splitting, the byte <-> unicode table of
byte-level BPE, and reading a corpus in chunks that can be counted independently.

A chunk boundary must never change how the text is pre-tokenized. Two kinds of position are
safe cut points (see `SpecialSplitter.safe_cut`):
- the end of a special token: text on each side of a special token is pre-tokenized separately
  anyway;
- a non-space character followed by a whitespace character: no GPT-2 pre-token contains both a
  non-space character and the whitespace that follows it, and no pattern looks behind, so the
  pre-tokens on either side are the same whether or not the text is cut there.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import regex

from minillama.errors import MiniLlamaError

# GPT-2's pre-tokenizer pattern (also the one `tokenizers`' ByteLevel pre-tokenizer uses).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# A non-space character followed by a whitespace character: the match's end is a safe cut point.
_SAFE_CUT = regex.compile(r"(?r)\S(?=\s)")  # searched backwards: the last one
_SAFE_CUT_FORWARD = regex.compile(r"\S(?=\s)")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


@functools.lru_cache(maxsize=8)
def compile_pattern(pattern: str) -> regex.Pattern:
    return regex.compile(pattern)


def _gpt2_ascii_pattern() -> re.Pattern:
    """GPT-2's pattern spelled for ASCII-only text, for the standard `re` engine (about twice as
    fast as `regex` with Unicode classes). On ASCII text \\p{L} is [A-Za-z], \\p{N} is [0-9], and
    \\s is what `regex` says among the ASCII characters (\\t\\n\\v\\f\\r and space, not \\x1c-\\x1f)."""
    space = "".join(f"\\x{b:02x}" for b in range(128) if regex.match(r"\s", chr(b)))
    return re.compile(rf"'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^A-Za-z0-9{space}]+"
                      rf"|[{space}]+(?![^{space}])|[{space}]+")


@functools.lru_cache(maxsize=8)
def pretokenizer(pattern: str = GPT2_PATTERN) -> Callable[[str], list[str]]:
    """`findall` for `pattern`: text -> pre-tokens. For GPT-2's pattern, ASCII stretches of the
    text take a faster path that gives the same pre-tokens: only the stretch around each
    non-ASCII character, bounded by safe cut points (see module doc), goes through `regex`."""
    findall = compile_pattern(pattern).findall
    if pattern != GPT2_PATTERN:
        return findall
    ascii_findall = _gpt2_ascii_pattern().findall

    def split(text: str) -> list[str]:
        if text.isascii():
            return ascii_findall(text)
        out: list[str] = []
        pos = 0
        for m in _NON_ASCII.finditer(text):
            if m.end() <= pos:
                continue  # inside the stretch already handled
            first = max(m.start(), pos)
            before = _SAFE_CUT.search(text, pos, first + 1)  # last safe cut at or before it
            start = before.end() if before else pos
            after = _SAFE_CUT_FORWARD.search(text, m.end() - 1)  # first safe cut after it
            end = after.end() if after else len(text)
            out += ascii_findall(text, pos, start)
            out += findall(text, start, end)
            pos = end
        out += ascii_findall(text, pos)
        return out

    return split


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: every byte maps to a printable character, so a token's bytes become a string
    with no spaces or control characters (space is 'Ġ', newline 'Ċ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


BYTE_TO_CHAR: dict[int, str] = _bytes_to_unicode()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_CHAR.items()}
_TO_UNICODE = str.maketrans({chr(b): c for b, c in BYTE_TO_CHAR.items()})


def bytes_to_token_str(token: bytes) -> str:
    """A token's bytes as its byte-level string ('Ġthe' for b' the'), as in tokenizer.json."""
    return token.decode("latin-1").translate(_TO_UNICODE)


def token_str_to_bytes(token: str) -> bytes:
    try:
        return bytes(CHAR_TO_BYTE[c] for c in token)
    except KeyError as exc:
        raise ValueError(f"{token!r} is not a byte-level BPE token (character {exc.args[0]!r})") from None


class SpecialSplitter:
    """Splits text at special tokens. Where special tokens overlap, the longest one wins (at the
    leftmost position where any matches), as in `tokenizers`."""

    def __init__(self, special_tokens: Sequence[str]):
        self.special_tokens = list(dict.fromkeys(special_tokens))
        self.max_len = max((len(s) for s in self.special_tokens), default=0)
        by_length = sorted(self.special_tokens, key=len, reverse=True)
        self.regex = re.compile("|".join(map(re.escape, by_length))) if by_length else None

    def split(self, text: str) -> list[str]:
        """The text between special tokens (the special tokens dropped)."""
        return self.regex.split(text) if self.regex else [text]

    def parts(self, text: str) -> Iterator[tuple[str, bool]]:
        """(piece, is_special) in order; ordinary pieces are never empty."""
        if self.regex is None:
            if text:
                yield text, False
            return
        start = 0
        for m in self.regex.finditer(text):
            if m.start() > start:
                yield text[start:m.start()], False
            yield m.group(), True
            start = m.end()
        if start < len(text):
            yield text[start:], False

    def special_cut(self, text: str) -> tuple[int, int]:
        """`(cut, limit)`: `cut` is the end of the last special token in `text` known to be
        complete (0 if none) and no special token that starts at or before `limit` can change
        with more text (none longer can start there); beyond `limit` nothing is settled."""
        limit = len(text) - max(self.max_len, 1)
        cut = 0
        if self.regex is not None and limit > 0:
            for m in self.regex.finditer(text):
                if m.start() > limit:
                    break
                cut = m.end()
        return cut, limit

    def safe_cut(self, text: str) -> int:
        """The largest position p such that the GPT-2 pre-tokens of `text[:p]` are those of the
        whole, whatever follows `text`; 0 if there is none yet."""
        cut, limit = self.special_cut(text)
        if limit <= 0:
            return 0
        # A later whitespace boundary outside any special token is better (smaller remainder).
        m = _SAFE_CUT.search(text, cut, limit + 1)
        return m.end() if m else cut


# Reading corpora -----------------------------------------------------------------------------------

def as_path_list(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(inputs, (str, os.PathLike)):
        paths = [Path(inputs)]
    else:
        paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError("no input files given")
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"input file not found: {path}")
        if not path.is_file():
            raise MiniLlamaError(f"input {path} is not a regular file")
        if not os.access(path, os.R_OK):
            raise PermissionError(f"input file {path} is not readable (check its permissions)")
    return paths


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def estimated_text_bytes(paths: Sequence[Path]) -> int:
    """Uncompressed size of the inputs (a gzip file records it, modulo 4 GiB, in its last 4 bytes)."""
    total = 0
    for path in paths:
        size = path.stat().st_size
        if _is_gzip(path) and size >= 18:
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                isize = struct.unpack("<I", f.read(4))[0]
            size = max(isize, size)
        total += size
    return total


def iter_text(path: Path, block_bytes: int = 1 << 20, errors: str = "strict") -> Iterator[str]:
    """Decode a plain or gzip-compressed UTF-8 file block by block.

    `errors="strict"` raises a one-line `MiniLlamaError` naming the byte offset of the first
    invalid byte; `errors="replace"` turns invalid bytes into U+FFFD.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    offset = 0
    try:
        with (gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")) as f:
            while block := f.read(block_bytes):
                try:
                    text = decoder.decode(block)
                except UnicodeDecodeError as exc:
                    raise _utf8_error(path, offset + exc.start) from None
                offset += len(block)
                if text:
                    yield text
            try:
                tail = decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise _utf8_error(path, offset) from None
            if tail:
                yield tail
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise MiniLlamaError(f"cannot read {path}: {exc} (the gzip file is truncated or corrupted)") from None
    except OSError as exc:
        raise MiniLlamaError(f"cannot read {path}: {exc.strerror or exc}") from None


def _utf8_error(path: Path, offset: int) -> MiniLlamaError:
    return MiniLlamaError(
        f"{path} is not valid UTF-8 (first bad byte near offset {offset}); convert it to UTF-8 "
        "(e.g. `iconv -f latin1 -t utf-8`)", remedy=("utf8_errors", "replace", "read such bytes as U+FFFD"))


def iter_chunks(
    paths: Sequence[Path], splitter: SpecialSplitter, chunk_chars: int, errors: str = "strict"
) -> Iterator[str]:
    """Text in chunks of about `chunk_chars` characters, each cut at a safe point (see module doc),
    so that counting pre-tokens chunk by chunk equals counting them over the whole text. Memory
    stays bounded by a few chunks whatever the file size. Files never share a chunk."""
    for path in paths:
        buffer = ""
        for block in iter_text(path, errors=errors):
            buffer += block
            while len(buffer) >= chunk_chars:
                window = chunk_chars
                cut = splitter.safe_cut(buffer[:window])
                while cut == 0 and window < len(buffer):  # no safe point yet: look further
                    window *= 2
                    cut = splitter.safe_cut(buffer[:window])
                if cut == 0:
                    break  # no safe point yet (one huge pre-token): keep reading
                yield buffer[:cut]
                buffer = buffer[cut:]
        if buffer:
            yield buffer


def count_pretokens(text: str, special_tokens: Sequence[str], pattern: str = GPT2_PATTERN) -> dict[str, int]:
    """How often each pre-token occurs in `text`, special tokens split out and not counted."""
    from collections import Counter

    counts: Counter[str] = Counter()
    findall = pretokenizer(pattern)
    for piece in _splitter(tuple(special_tokens)).split(text):
        if piece:
            counts.update(findall(piece))
    return counts


@functools.lru_cache(maxsize=8)
def _splitter(special_tokens: tuple[str, ...]) -> SpecialSplitter:
    return SpecialSplitter(special_tokens)
