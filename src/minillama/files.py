"""Crash-safe file writing and checksums.

A single flipped bit in a torch or safetensors file loads silently with wrong values, so every
directory we write carries a `checksums.sha256` manifest (the format of `sha256sum`, so
`sha256sum -c checksums.sha256` works too) that loading verifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from minillama.errors import CheckpointError

MANIFEST = "checksums.sha256"


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new file inside `path` durable (no-op where directories can't be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_manifest(directory: str | os.PathLike) -> None:
    """Fsync every file in `directory` and record its sha256 in the manifest."""
    directory = Path(directory)
    lines = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        lines.append(f"{sha256_file(path)}  {path.relative_to(directory).as_posix()}\n")
    manifest = directory / MANIFEST
    manifest.write_text("".join(lines))
    with open(manifest, "rb+") as f:
        os.fsync(f.fileno())


def verify_manifest(directory: str | os.PathLike, required: bool = False) -> bool:
    """Check every file listed in the manifest; raise `CheckpointError` on the first mismatch.

    Returns False when there is no manifest (allowed unless `required`), True when all files match.
    """
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.exists():
        if required:
            raise CheckpointError(f"{directory} has no {MANIFEST}: it was not completely written")
        return False
    for line in manifest.read_text().splitlines():
        expected, _, name = line.partition("  ")
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the directory is incomplete; restore or re-create it")
        if sha256_file(path) != expected:
            raise CheckpointError(
                f"checksum mismatch for {path}: the file is corrupted; restore it or use another checkpoint"
            )
    return True


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `target` in one rename.

    The files written into it get a checksum manifest. A crash, Ctrl-C or full disk leaves
    `target` as it was (and at worst a `.tmp-*` directory beside it, never a half-written target).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; choose another directory or allow overwriting")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private (0700); give it the usual mode
    try:
        yield tmp
        for path in tmp.rglob("*"):  # safetensors writes 0600 files; make them readable as usual
            if path.is_file():
                os.chmod(path, 0o666 & ~umask)
        write_manifest(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file so readers see the old or the new content, never a partial one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
