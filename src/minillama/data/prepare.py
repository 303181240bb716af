"""`prepare_dataset`: documents -> token ids -> `train.bin`, `val.bin`, `meta.json`.

The corpus streams through: documents are read one at a time, gathered into chunks of about
1 MiB of text, encoded by a pool of worker processes (results consumed in submission order, at
most two chunks per worker in flight) and appended to the token files. Memory therefore stays
flat whatever the corpus size. Each document's ids are followed by the EOS id, so documents are
separated (and terminated) by `<|endoftext|>`.

Every run records its inputs (tokenizer hash, content hash of the data, options) in `meta.json`;
a second run with the same inputs does nothing. Files are written under temporary names and
renamed at the end; the old `meta.json` is removed before the renames and the new one written
after them, so a crash at any moment leaves either the old complete set, or a directory without
`meta.json` that the next run rebuilds, never token files that `meta.json` misdescribes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from minillama import __version__
from minillama.data.sources import EOT, Source, resolve_dataset
from minillama.data.tokenfile import MAGIC, TokenFile, TokenFileWriter, dtype_for_vocab
from minillama.errors import MiniLlamaError
from minillama.files import atomic_write_text, check_output, fsync_dir
from minillama.hardware import available_cpus
from minillama.progress import progress_bar

log = logging.getLogger(__name__)

META_FORMAT = 1
TRAIN_FILE, VAL_FILE, META_FILE = "train.bin", "val.bin", "meta.json"
CHUNK_CHARS = 1 << 20  # characters of text per encoding task
# Below this much text, starting worker processes costs more than it saves (about 0.5 s against
# about 4 MB/s per core), so the default is to encode in this process.
PARALLEL_MIN_BYTES = 8 << 20
_STALE_TMP = re.compile(r"^\.(train\.bin|val\.bin|meta\.json)\.tmp-(\d+)$")


def tokenizer_fingerprint(tokenizer_dir: str | os.PathLike) -> str:
    """sha256 of the directory's `tokenizer.json` in canonical form (sorted keys, no spaces), so
    re-saving it with other formatting keeps the identity; for tokenizers saved by minillama it
    equals `minillama.tokenizer.Tokenizer.fingerprint()`."""
    path = _tokenizer_json(tokenizer_dir)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MiniLlamaError(f"{path} is not a valid tokenizer file ({exc}); re-create it with "
                             "`minillama tokenizer train`") from None
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _tokenizer_json(tokenizer_dir: str | os.PathLike) -> Path:
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{tokenizer_dir} is not a tokenizer directory (no tokenizer.json); train one with "
            "`minillama tokenizer train` or point --tokenizer at an existing one"
        )
    return path


def _load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exceptions for bad files
        raise MiniLlamaError(f"{path} is not a valid tokenizer file ({str(exc).strip()}); re-create it with "
                             "`minillama tokenizer train`") from None


# ---------------------------------------------------------------------------------------------
# Encoding: in this process, or in a pool of worker processes with one tokenizer each.


def _encode_documents(tokenizer, eos_id: int, docs: list[str]) -> tuple[np.ndarray, int]:
    """Ids of each document followed by EOS, concatenated; and the UTF-8 byte count of the text."""
    encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # fast: no offsets
    ids: list[int] = []
    for encoding in encode_batch(docs, add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(eos_id)
    nbytes = sum(len(doc.encode("utf-8")) for doc in docs)
    return np.array(ids, dtype=np.uint32), nbytes


_worker: tuple[object, int] | None = None


def _init_worker(tokenizer_json: str, eos_id: int) -> None:
    # One process per core already; the tokenizer's own thread pool would only contend with it.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # Ctrl-C is the parent's to handle: it stops feeding chunks and discards the temporary files.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _worker
    _worker = (_load_tokenizer(Path(tokenizer_json)), eos_id)


def _encode_in_worker(docs: list[str]) -> tuple[np.ndarray, int]:
    tokenizer, eos_id = _worker
    return _encode_documents(tokenizer, eos_id, docs)


def _encode_chunks(
    chunks: Iterable[tuple[str, list[str]]], tokenizer_json: Path, eos_id: int, num_workers: int
) -> Iterator[tuple[str, np.ndarray, int, int]]:
    """Yield (split, ids, documents, bytes) for each chunk, in input order."""
    if num_workers <= 1:
        tokenizer = _load_tokenizer(tokenizer_json)
        for split, docs in chunks:
            ids, nbytes = _encode_documents(tokenizer, eos_id, docs)
            yield split, ids, len(docs), nbytes
        return
    # spawn: forking a process that holds torch's or the tokenizer's threads is unsafe.
    pool = ProcessPoolExecutor(
        num_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(str(tokenizer_json), eos_id),
    )
    pending: deque = deque()

    def drain(keep: int):
        while len(pending) > keep:
            split, ndocs, future = pending.popleft()
            ids, nbytes = future.result()
            yield split, ids, ndocs, nbytes

    try:
        for split, docs in chunks:
            pending.append((split, len(docs), pool.submit(_encode_in_worker, docs)))
            yield from drain(2 * num_workers - 1)  # bounded read-ahead keeps memory flat
        yield from drain(0)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _chunk_documents(labelled_docs: Iterable[tuple[str, str]]) -> Iterator[tuple[str, list[str]]]:
    """Group (split, document) pairs into per-split chunks of about CHUNK_CHARS characters."""
    buffers: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for split, doc in labelled_docs:
        buffers.setdefault(split, []).append(doc)
        sizes[split] = sizes.get(split, 0) + len(doc)
        if sizes[split] >= CHUNK_CHARS:
            yield split, buffers.pop(split)
            sizes[split] = 0
    for split, docs in buffers.items():
        if docs:
            yield split, docs


def _labelled_documents(
    train: Source, val: Source | None, val_fraction: float
) -> Iterator[tuple[str, str]]:
    """Label each document "train" or "val". Without a val source, document i goes to val when
    floor((i + 1) * f) > floor(i * f): exactly a fraction f, spread evenly through the corpus."""
    if val is not None:
        for doc in train.documents():
            yield "train", doc
        for doc in val.documents():
            yield "val", doc
        return
    for i, doc in enumerate(train.documents()):
        yield ("val" if math.floor((i + 1) * val_fraction) > math.floor(i * val_fraction) else "train"), doc


# ---------------------------------------------------------------------------------------------
# Up-to-date checks and the final, atomic write.


def read_meta(out_dir: str | os.PathLike) -> dict | None:
    """The meta.json of a prepared directory; None when there is none."""
    path = Path(out_dir) / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or "inputs" not in meta:
        raise MiniLlamaError(f"{path} is not the meta.json of minillama token files; re-create them with "
                             "`minillama prepare --force`")
    return meta


def is_prepared_dir(directory: Path) -> bool:
    """Whether `directory` holds only what `prepare` writes (token files, meta.json, temporaries of
    a run that was killed), recognised by the meta.json, or without one by the token file headers."""
    names = [p.name for p in directory.iterdir()]
    if not all(name in (TRAIN_FILE, VAL_FILE, META_FILE) or _STALE_TMP.match(name) for name in names):
        return False
    if META_FILE in names:
        try:
            return read_meta(directory) is not None
        except MiniLlamaError:
            return False
    for name in set(names) & {TRAIN_FILE, VAL_FILE}:
        with open(directory / name, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return False
    return True


def check_prepared(out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike) -> dict:
    """The meta of complete token files in `out_dir` made with this tokenizer, for training on them
    as they are; a one-line error for anything else (they are never rewritten here)."""
    out_dir = Path(out_dir)
    meta = read_meta(out_dir)
    if meta is None or not _files_match(out_dir, meta):
        raise MiniLlamaError(f"{out_dir} holds no complete token files; prepare them with "
                             f"`minillama prepare --out {out_dir}`")
    fingerprint = tokenizer_fingerprint(tokenizer_dir)
    if meta["inputs"].get("tokenizer_hash") != fingerprint:
        raise MiniLlamaError(f"the token files in {out_dir} were made with another tokenizer "
                             f"({meta.get('tokenizer_dir')}) than {tokenizer_dir}; train with the one they were "
                             "made with")
    return meta


def _files_match(out_dir: Path, meta: dict) -> bool:
    try:
        return (
            len(TokenFile(out_dir / TRAIN_FILE)) == meta["train_tokens"]
            and len(TokenFile(out_dir / VAL_FILE)) == meta["val_tokens"]
        )
    except (OSError, MiniLlamaError, KeyError):
        return False


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete temporary files that a killed run left behind (their process no longer exists)."""
    for path in out_dir.iterdir():
        match = _STALE_TMP.match(path.name)
        if not match:
            continue
        try:
            os.kill(int(match.group(2)), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:  # a live process of another user
            pass


def prepare_dataset(
    tokenizer_dir: str | os.PathLike,
    dataset: str | os.PathLike | Source,
    out_dir: str | os.PathLike,
    val_dataset: str | os.PathLike | Source | None = None,
    val_fraction: float = 0.05,
    force: bool = False,
    num_workers: int | None = None,
    progress: bool = True,
    *,
    doc_separator: str = "auto",
    text_field: str = "text",
    dtype: str | None = None,
    utf8_errors: str = "strict",
) -> dict:
    """Encode a dataset into `out_dir/train.bin`, `out_dir/val.bin` and `out_dir/meta.json`.

    `dataset` is a registered name (`tinystories-sample`, `tinystories`), a local file or
    directory, or a source object. The validation set is `val_dataset` when given, else the
    dataset's own validation split (registered datasets), else a `val_fraction` of the documents.
    Returns the meta. With the same inputs as the existing files it does nothing; with another
    tokenizer it refuses unless `force`, as it refuses an `out_dir` holding anything but token
    files (`force` writes its three files there anyway; it never writes into an input).
    `num_workers` defaults to all cores (one process for less than 8 MiB of text); `dtype`
    (uint16 / uint32) to the smallest that holds the vocabulary. `utf8_errors="replace"` reads
    text that is not valid UTF-8 (or a lone surrogate in JSON) as U+FFFD instead of stopping.
    Worker processes are spawned, so a script that calls this needs the usual
    `if __name__ == "__main__":` guard (or `num_workers=1`).
    """
    out_dir = Path(out_dir)
    tokenizer_json, eos_id, vocab_size = _inspect_tokenizer(tokenizer_dir)
    np_dtype = dtype_for_vocab(vocab_size) if dtype in (None, "auto") else np.dtype(dtype)
    train_source, val_source = _sources(dataset, val_dataset, val_fraction, doc_separator, text_field, utf8_errors)
    check_output(out_dir, "data", overwrite=force, is_own=is_prepared_dir,
                 remedy=("force", None, "write the token files there anyway"),
                 inputs=[p for source in (train_source, val_source) for p in getattr(source, "paths", ())])
    inputs = {
        "format": META_FORMAT,
        "tokenizer_hash": tokenizer_fingerprint(tokenizer_dir),
        "dtype": np_dtype.name,
        "train_data": train_source.fingerprint(),
        "val_data": val_source.fingerprint() if val_source else None,
        "val_fraction": None if val_source else val_fraction,
        "doc_separator": doc_separator,
        "text_field": text_field,
        "utf8_errors": utf8_errors,
    }
    if not force and (up_to_date := _existing_meta(out_dir, inputs)) is not None:
        return up_to_date

    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir)
    size_hint = _size_hint(train_source, val_source)
    workers = num_workers
    if workers is None:
        small = size_hint is not None and size_hint < PARALLEL_MIN_BYTES
        workers = 1 if small else available_cpus()
    stats = _encode_to_files(
        _chunk_documents(_labelled_documents(train_source, val_source, val_fraction)),
        out_dir, np_dtype, tokenizer_json, eos_id, workers, size_hint, progress, train_source.describe(),
    )
    meta = {
        "format": META_FORMAT,
        "created_by": f"minillama {__version__}",
        "tokenizer_hash": inputs["tokenizer_hash"],
        "tokenizer_dir": str(Path(tokenizer_dir).resolve()),
        "vocab_size": vocab_size,
        "eos_token_id": eos_id,
        "dtype": np_dtype.name,
        "source": train_source.describe(),
        "val_source": val_source.describe() if val_source else f"{val_fraction:g} of the source's documents",
        "val_fraction": inputs["val_fraction"],
        **stats,
        "bytes_per_token": stats["train_bytes"] / stats["train_tokens"],
        "val_bytes_per_token": stats["val_bytes"] / stats["val_tokens"],
        "files": {"train": TRAIN_FILE, "val": VAL_FILE},
        "inputs": inputs,
    }
    atomic_write_text(out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
    return meta


def _inspect_tokenizer(tokenizer_dir) -> tuple[Path, int, int]:
    """(tokenizer.json path, EOS id, vocabulary size = largest id + 1)."""
    tokenizer_json = _tokenizer_json(tokenizer_dir)
    tokenizer = _load_tokenizer(tokenizer_json)
    eos_id = tokenizer.token_to_id(EOT)
    if eos_id is None:  # a BERT tokenizer: [SEP] ends each document, as RoBERTa's </s> does
        eos_id = tokenizer.token_to_id("[SEP]")
    if eos_id is None:
        raise MiniLlamaError(f"the tokenizer in {tokenizer_dir} has no {EOT} token (nor a BERT [SEP]) to separate "
                             "documents")
    return tokenizer_json, eos_id, max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1


def _sources(dataset, val_dataset, val_fraction: float, doc_separator: str, text_field: str, utf8_errors: str):
    """(train source, validation source or None when the split is by `val_fraction`)."""
    train_source, val_source = resolve_dataset(dataset, doc_separator, text_field, utf8_errors)
    if val_dataset is not None:
        val_train, val_own = resolve_dataset(val_dataset, doc_separator, text_field, utf8_errors)
        val_source = val_own or val_train
    if val_source is None and not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    return train_source, val_source


def _existing_meta(out_dir: Path, inputs: dict) -> dict | None:
    """The existing meta when `out_dir` is up to date for `inputs`; None when it must be (re)built."""
    old = read_meta(out_dir)
    if old is None:
        return None
    old_inputs = old.get("inputs", {})
    if old_inputs.get("tokenizer_hash") != inputs["tokenizer_hash"]:
        raise MiniLlamaError(
            f"{out_dir} holds token files made with another tokenizer (sha256 "
            f"{str(old_inputs.get('tokenizer_hash'))[:12]}..., this one {inputs['tokenizer_hash'][:12]}...); "
            "choose another directory, or re-encode them with this tokenizer: `minillama prepare --force`"
        )
    if old_inputs == inputs and _files_match(out_dir, old):
        log.info("%s is up to date (same tokenizer, data and options): nothing to do", out_dir)
        return old
    log.info("%s: the data or options changed, or the files are incomplete; preparing again", out_dir)
    return None


def _size_hint(*sources: Source | None) -> int | None:
    hints = [s.size_hint() for s in sources if s is not None]
    return None if None in hints else sum(hints)


def _encode_to_files(
    chunks, out_dir: Path, dtype: np.dtype, tokenizer_json: Path, eos_id: int, workers: int,
    total_bytes: int | None, progress: bool, description: str,
) -> dict:
    writers = {"train": TokenFileWriter(out_dir / TRAIN_FILE, dtype)}
    try:
        writers["val"] = TokenFileWriter(out_dir / VAL_FILE, dtype)
        counts = {split: {"documents": 0, "bytes": 0} for split in writers}
        with progress_bar(total=total_bytes, unit="B", unit_scale=True, desc="prepare", enabled=progress) as bar:
            for split, ids, ndocs, nbytes in _encode_chunks(chunks, tokenizer_json, eos_id, workers):
                writers[split].write(ids)
                counts[split]["documents"] += ndocs
                counts[split]["bytes"] += nbytes
                bar.update(nbytes)
                bar.set_postfix(tokens=f"{writers['train'].count + writers['val'].count:,}", refresh=False)
            bar.total = bar.n  # the size hint counts separators and markup too: end at 100 %
        if counts["train"]["documents"] == 0:
            raise MiniLlamaError(f"dataset {description} has no documents (empty files?)")
        if counts["val"]["documents"] == 0:
            raise MiniLlamaError(
                f"the validation split is empty ({counts['train']['documents']} documents in all); "
                "give a --val-dataset or a larger --val-fraction"
            )
        for writer in writers.values():
            writer.finish()
        # From here until meta.json is written the directory reads as incomplete, never as stale.
        with contextlib.suppress(FileNotFoundError):
            (out_dir / META_FILE).unlink()
            fsync_dir(out_dir)
        for writer in writers.values():
            writer.commit()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    stats = {}
    for split in ("train", "val"):
        stats[f"{split}_documents"] = counts[split]["documents"]
        stats[f"{split}_tokens"] = writers[split].count
        stats[f"{split}_bytes"] = counts[split]["bytes"]
    return stats
