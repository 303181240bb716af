"""Where documents come from: the dataset registry, local files, and the Hugging Face hub.

A *source* yields documents (stripped strings, empty ones skipped) one at a time, so a corpus of
any size streams through in bounded memory, and has a `fingerprint()` of its content that tells
`prepare` whether its token files are up to date. A dataset is named by a registry name
(`tinystories-sample`, `tinystories`) or a local path:

- `.txt` / `.txt.gz`: documents separated by `<|endoftext|>` (in a line of its own or inline),
  by blank lines, or one per line (`doc_separator`; "auto" picks `<|endoftext|>` when the first
  MiB of the file contains it, else blank lines);
- `.jsonl` / `.jsonl.gz`: one JSON object per line, the document in `text_field`;
- `.parquet`: the `text_field` column;
- a directory: every such file in it, in sorted name order.

Text that is not valid UTF-8, or a JSON string holding a lone surrogate (`"\ud800"`: valid JSON,
common in scraped data, but no character), stops with the file and line named; with
`utf8_errors="replace"` it reads as U+FFFD instead.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from minillama.assets import ASSETS_DIR
from minillama.errors import MiniLlamaError
from minillama.files import sha256_file

EOT = "<|endoftext|>"
DOC_SEPARATORS = ("auto", "endoftext", "blank-line", "line")
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
UTF8_ERRORS = ("strict", "replace")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_REPAIR = ("utf8_errors", "replace", "read it as U+FFFD")
_AUTO_PEEK_CHARS = 1 << 20
_PARQUET_BATCH_ROWS = 1024


class Source(Protocol):
    def documents(self) -> Iterator[str]: ...

    def fingerprint(self) -> str: ...

    def describe(self) -> str: ...

    def size_hint(self) -> int | None: ...


def _format_of(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in TEXT_SUFFIXES:
        return "text"
    if last in JSONL_SUFFIXES:
        return "jsonl"
    if last in PARQUET_SUFFIXES and path.suffix.lower() != ".gz":
        return "parquet"
    return None


def _open_text(path: Path, utf8_errors: str = "strict") -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors=utf8_errors)
    return open(path, encoding="utf-8", errors=utf8_errors)


def _strip_all(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        text = text.strip()
        if text:
            yield text


def _split_endoftext(lines: Iterable[str]) -> Iterator[str]:
    parts: list[str] = []
    for line in lines:
        if EOT not in line:
            parts.append(line)
            continue
        *complete, rest = line.split(EOT)
        for piece in complete:
            parts.append(piece)
            yield "".join(parts)
            parts = []
        parts.append(rest)
    yield "".join(parts)


def _split_blank_lines(lines: Iterable[str]) -> Iterator[str]:
    parts: list[str] = []
    for line in lines:
        if line.strip():
            parts.append(line)
        elif parts:
            yield "".join(parts)
            parts = []
    yield "".join(parts)


def _resolve_separator(path: Path, doc_separator: str, utf8_errors: str) -> str:
    if doc_separator != "auto":
        return doc_separator
    with _open_text(path, utf8_errors) as f:
        head = f.read(_AUTO_PEEK_CHARS)
    return "endoftext" if EOT in head else "blank-line"


def _text_documents(path: Path, doc_separator: str, utf8_errors: str) -> Iterator[str]:
    separator = _resolve_separator(path, doc_separator, utf8_errors)
    with _open_text(path, utf8_errors) as f:
        if separator == "endoftext":
            yield from _strip_all(_split_endoftext(f))
        elif separator == "blank-line":
            yield from _strip_all(_split_blank_lines(f))
        else:
            yield from _strip_all(f)


def read_jsonl(path: str | os.PathLike, utf8_errors: str = "strict") -> Iterator[dict]:
    """The JSON objects of a .jsonl(.gz) file, one per non-empty line; a bad line is a one-line error
    naming it. Bytes that are not UTF-8 and lone surrogates in strings are errors too, unless
    `utf8_errors="replace"` (then they read as U+FFFD)."""
    path = Path(path)
    lineno = 0
    try:
        with _open_text(path, utf8_errors) as f:
            for lineno, line in enumerate(f, 1):  # noqa: B007 - read by the except clause
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise MiniLlamaError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise MiniLlamaError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
                if "\\u" in line:  # a lone surrogate can only come from an escape
                    record = _without_lone_surrogates(record, f"{path}:{lineno}", utf8_errors)
                yield record
    except UnicodeDecodeError as exc:
        raise MiniLlamaError(f"{path}:{lineno + 1}: not UTF-8 text ({exc.reason})", remedy=_REPAIR) from None


def _without_lone_surrogates(value: Any, where: str, utf8_errors: str) -> Any:
    """Strings of a JSON value with lone surrogates refused (strict) or replaced by U+FFFD."""
    if isinstance(value, str):
        found = _LONE_SURROGATE.search(value)
        if found is None:
            return value
        if utf8_errors == "strict":
            raise MiniLlamaError(f"{where}: a string holds a lone surrogate ({found.group()!a}), which is no "
                                 "character", remedy=_REPAIR)
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {k: _without_lone_surrogates(v, where, utf8_errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_lone_surrogates(v, where, utf8_errors) for v in value]
    return value


def _jsonl_documents(path: Path, text_field: str, utf8_errors: str) -> Iterator[str]:
    for lineno, record in enumerate(read_jsonl(path, utf8_errors), 1):
        text = record.get(text_field)
        if not isinstance(text, str):
            raise MiniLlamaError(
                f"{path}: record {lineno}: no string field {text_field!r} (has: {', '.join(record)}); "
                "name the text field with --text-field"
            )
        text = text.strip()
        if text:
            yield text


def _import_pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MiniLlamaError("reading .parquet files needs pyarrow: pip install 'minillama[data]'") from None
    return pq


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    pq = _import_pyarrow_parquet()
    parquet = pq.ParquetFile(path)
    if text_field not in parquet.schema_arrow.names:
        raise MiniLlamaError(
            f"{path} has no column {text_field!r} (has: {', '.join(parquet.schema_arrow.names)}); "
            "name the text column with --text-field"
        )
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_field]):
        yield from _strip_all(t for t in batch.column(0).to_pylist() if t is not None)


def _gzip_size(path: Path) -> int | None:
    """Uncompressed size from the gzip trailer (modulo 4 GiB, so only a hint for progress)."""
    try:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            return struct.unpack("<I", f.read(4))[0]
    except OSError:  # shorter than a gzip trailer: the read itself will report the problem
        return None


@dataclass(frozen=True)
class FileSource:
    """Documents from local files (see the module docstring for the formats)."""

    paths: tuple[Path, ...]
    doc_separator: str = "auto"
    text_field: str = "text"
    utf8_errors: str = "strict"

    def __post_init__(self) -> None:
        if self.doc_separator not in DOC_SEPARATORS:
            choices = ", ".join(DOC_SEPARATORS)
            raise ValueError(f"doc_separator must be one of {choices}, not {self.doc_separator!r}")
        if self.utf8_errors not in UTF8_ERRORS:
            raise ValueError(f"utf8_errors must be one of {', '.join(UTF8_ERRORS)}, not {self.utf8_errors!r}")

    @classmethod
    def from_path(cls, path: str | os.PathLike, doc_separator: str = "auto", text_field: str = "text",
                  utf8_errors: str = "strict"):
        path = Path(path).expanduser()
        if path.is_dir():
            files = tuple(sorted(p for p in path.iterdir() if p.is_file() and _format_of(p)))
            if not files:
                raise MiniLlamaError(f"directory {path} holds no .txt, .jsonl or .parquet files")
            return cls(files, doc_separator, text_field, utf8_errors)
        if not path.exists():
            raise FileNotFoundError(
                f"no dataset named {str(path)!r} and no such file or directory; "
                f"registered datasets: {', '.join(DATASETS)}"
            )
        if _format_of(path) is None:
            raise MiniLlamaError(f"{path}: unknown format; use .txt, .jsonl (either may be .gz) or .parquet")
        return cls((path,), doc_separator, text_field, utf8_errors)

    def documents(self) -> Iterator[str]:
        for path in self.paths:
            kind = _format_of(path)
            try:
                if kind == "text":
                    yield from _text_documents(path, self.doc_separator, self.utf8_errors)
                elif kind == "jsonl":
                    yield from _jsonl_documents(path, self.text_field, self.utf8_errors)
                else:
                    yield from _parquet_documents(path, self.text_field)
            except UnicodeDecodeError as exc:
                raise MiniLlamaError(f"{path} is not UTF-8 text ({exc.reason}); convert it",
                                     remedy=_REPAIR) from None

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in self.paths:
            digest.update(f"{path.name} {sha256_file(path)}\n".encode())
        return digest.hexdigest()

    def describe(self) -> str:
        return ", ".join(str(p) for p in self.paths)

    def size_hint(self) -> int | None:
        sizes = [_gzip_size(p) if p.suffix.lower() == ".gz" else p.stat().st_size for p in self.paths]
        return None if None in sizes else sum(sizes)


@dataclass(frozen=True)
class HubSource:
    """One split of a dataset loaded with `datasets.load_dataset` (downloaded once into its cache,
    then memory-mapped: reading it does not load it into RAM).

    `path` is a hub name (`roneneldan/TinyStories`) or a packaged builder (`parquet`, `json`)
    with `data_files`, which is how the tests run this same code on local files.
    """

    path: str
    split: str = "train"
    name: str | None = None
    data_files: Any = None
    text_field: str = "text"
    cache_dir: str | None = None

    def _load(self):
        try:
            import datasets
        except ImportError:
            raise MiniLlamaError(f"loading {self.path} needs datasets: pip install minillama[data]") from None
        try:
            dataset = datasets.load_dataset(
                self.path, self.name, split=self.split, data_files=self.data_files, cache_dir=self.cache_dir
            )
        except ConnectionError as exc:
            raise MiniLlamaError(
                f"could not download {self.path} ({exc}); it needs network access once, after which it is "
                "cached; offline, use the embedded `tinystories-sample` or a local file"
            ) from None
        if self.text_field not in dataset.column_names:
            columns = ", ".join(dataset.column_names)
            raise MiniLlamaError(f"{self.describe()} has no column {self.text_field!r} (has: {columns})")
        return dataset

    def documents(self) -> Iterator[str]:
        for batch in self._load().iter(batch_size=1000):
            yield from _strip_all(t for t in batch[self.text_field] if t is not None)

    def fingerprint(self) -> str:
        return self._load()._fingerprint

    def describe(self) -> str:
        name = f"/{self.name}" if self.name else ""
        files = f" {self.data_files}" if self.data_files else ""
        return f"hf:{self.path}{name}[{self.split}]{files}"

    def size_hint(self) -> int | None:
        return None


@dataclass(frozen=True)
class TatoebaSource:
    """One side ("en" or "zh") of the shipped Tatoeba English–Chinese pairs, one sentence per
    document, each distinct sentence once. `split="val"` is held out: the translations of the
    seq2seq family's validation and test English sentences (`seq2seq.data.split_pairs`, a split by
    SHA-256 of the English sentence, so it is the same on every machine); `split="train"` is every
    other sentence (a sentence that is also held out is left out of it)."""

    side: str = "zh"
    split: str = "train"

    def _sentences(self) -> list[str]:
        from minillama.seq2seq.data import split_pairs, tatoeba_pairs

        splits = split_pairs(tatoeba_pairs())
        held_out = dict.fromkeys(getattr(p, self.side) for p in splits["validation"] + splits["test"])
        if self.split == "val":
            return list(held_out)
        return [s for s in dict.fromkeys(getattr(p, self.side) for p in splits["train"]) if s not in held_out]

    def documents(self) -> Iterator[str]:
        yield from self._sentences()

    def fingerprint(self) -> str:
        from minillama.seq2seq.data import TATOEBA

        return hashlib.sha256(f"{sha256_file(ASSETS_DIR / TATOEBA)} {self.side} {self.split}".encode()).hexdigest()

    def describe(self) -> str:
        return f"tatoeba-{self.side}[{self.split}]"

    def size_hint(self) -> int | None:
        return None


@dataclass(frozen=True)
class RegisteredDataset:
    description: str
    train: Source
    val: Source | None = None


_SAMPLE_DIR = ASSETS_DIR / "tinystories"

DATASETS: dict[str, RegisteredDataset] = {
    "tinystories-sample": RegisteredDataset(
        "5,440 + 284 TinyStories shipped inside the package (4.6 MB of text, CDLA-Sharing-1.0)",
        train=FileSource((_SAMPLE_DIR / "tinystories_train.txt.gz",), doc_separator="endoftext"),
        val=FileSource((_SAMPLE_DIR / "tinystories_valid.txt.gz",), doc_separator="endoftext"),
    ),
    "tinystories": RegisteredDataset(
        "the full TinyStories (2.1M + 22K stories, about 1.9 GB; downloaded once by `datasets`)",
        train=HubSource("roneneldan/TinyStories", split="train"),
        val=HubSource("roneneldan/TinyStories", split="validation"),
    ),
    "tatoeba-zh": RegisteredDataset(
        "the Chinese side of the 29,155 shipped Tatoeba pairs (about 27k distinct sentences, 0.8 MB; "
        "validation: the translations of 1,500 held-out English sentences; CC-BY 2.0 France)",
        train=TatoebaSource("zh", "train"),
        val=TatoebaSource("zh", "val"),
    ),
}


def resolve_dataset(
    dataset: str | os.PathLike | Source, doc_separator: str = "auto", text_field: str = "text",
    utf8_errors: str = "strict",
) -> tuple[Source, Source | None]:
    """(train source, the dataset's own validation source or None) for a name, path or source."""
    if not isinstance(dataset, (str, os.PathLike)):
        return dataset, None
    if isinstance(dataset, str) and dataset in DATASETS:
        entry = DATASETS[dataset]
        return entry.train, entry.val
    source = FileSource.from_path(dataset, doc_separator, text_field, utf8_errors)
    return source, None


def load_documents(
    dataset: str | os.PathLike | Source = "tinystories-sample",
    split: str = "train",
    doc_separator: str = "auto",
    text_field: str = "text",
) -> Iterator[str]:
    """Stream the documents of a dataset (registry name, local path or source), one string each.

    `split="val"` gives a registered dataset's own validation documents.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    train, val = resolve_dataset(dataset, doc_separator, text_field)
    if split == "val":
        if val is None:
            raise MiniLlamaError(f"dataset {dataset!r} has no validation split of its own")
        return val.documents()
    return train.documents()


@contextlib.contextmanager
def dataset_text_files(
    dataset: str | os.PathLike | Source = "tinystories-sample", doc_separator: str = "auto",
    text_field: str = "text", utf8_errors: str = "strict",
) -> Iterator[list[Path]]:
    """Text files holding a dataset's training documents, for trainers that read files (the BPE
    trainer). Text files are used in place; other sources are streamed into one temporary
    `.txt` file (documents separated by `<|endoftext|>` lines) that is deleted afterwards."""
    train, _ = resolve_dataset(dataset, doc_separator, text_field, utf8_errors)
    if isinstance(train, FileSource) and all(_format_of(p) == "text" for p in train.paths):
        yield list(train.paths)
        return
    with tempfile.TemporaryDirectory(prefix="minillama-text-") as tmp:
        path = Path(tmp) / "documents.txt"
        with open(path, "w", encoding="utf-8") as f:
            for doc in train.documents():
                f.write(f"{doc}\n{EOT}\n")
        yield [path]
