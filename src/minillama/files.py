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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from minillama.errors import CheckpointError, MiniLlamaError, OutputError

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


MANIFEST_KIND = "# minillama "  # the manifest's first line: what minillama wrote the directory as


def write_manifest(directory: str | os.PathLike, kind: str | None = None) -> None:
    """Fsync every file in `directory` and record its sha256 in the manifest, whose first line
    names the `kind` of directory ("model", "tokenizer", "checkpoint", ...), if given. The kind
    line is a comment to `sha256sum -c`; it lets a later command recognise its own output."""
    directory = Path(directory)
    lines = [f"{MANIFEST_KIND}{kind}\n"] if kind else []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        lines.append(f"{sha256_file(path)}  {path.relative_to(directory).as_posix()}\n")
    manifest = directory / MANIFEST
    manifest.write_text("".join(lines))
    with open(manifest, "rb+") as f:
        os.fsync(f.fileno())


def read_manifest(directory: str | os.PathLike) -> tuple[str | None, dict[str, str]] | None:
    """(kind or None, {relative name: sha256}) of the directory's manifest; None without one."""
    manifest = Path(directory) / MANIFEST
    if not manifest.is_file():
        return None
    kind, entries = None, {}
    for line in manifest.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(MANIFEST_KIND):
            kind = line[len(MANIFEST_KIND):].strip() or None
        elif line and not line.startswith("#"):
            digest, _, name = line.partition("  ")
            entries[name] = digest
    return kind, entries


def update_manifest(directory: str | os.PathLike, names: list[str]) -> None:
    """Record the current sha256 of `names` in the directory's manifest (adding missing ones),
    keeping its kind line."""
    directory = Path(directory)
    kind, entries = read_manifest(directory) or (None, {})
    for name in names:
        entries[name] = sha256_file(directory / name)
    lines = [f"{MANIFEST_KIND}{kind}\n"] if kind else []
    lines += [f"{digest}  {name}\n" for name, digest in sorted(entries.items())]
    atomic_write_text(directory / MANIFEST, "".join(lines))


def verify_manifest(directory: str | os.PathLike, required: bool = False) -> bool:
    """Check every file listed in the manifest; raise `CheckpointError` on the first mismatch.

    Returns False when there is no manifest (allowed unless `required`), True when all files match.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        if required:
            raise CheckpointError(f"{directory} has no {MANIFEST}: it was not completely written")
        return False
    for name, expected in manifest[1].items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the directory is incomplete; restore or re-create it")
        if sha256_file(path) != expected:
            raise CheckpointError(
                f"checksum mismatch for {path}: the file is corrupted; restore it or use another checkpoint"
            )
    return True


def output_kind(directory: str | os.PathLike) -> str | None:
    """What minillama wrote `directory` as, by its manifest, when every file in it is one the
    manifest lists; None for anything else (no manifest, or files minillama did not write)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        return None
    kind, entries = manifest
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if not p.is_dir()}
    if not present <= set(entries) | {MANIFEST}:
        return None
    return kind or _kind_before_kind_lines(directory)


def _kind_before_kind_lines(directory: Path) -> str | None:
    """The kind of a directory written before manifests named it (minillama 0.1.0), by its files."""
    for name, kind in (("trainer_state.json", "checkpoint"), ("adapter_config.json", "adapter"),
                       ("config.json", "model"), ("tokenizer.json", "tokenizer")):
        if (directory / name).is_file():
            return kind
    return None


def check_output(target: str | os.PathLike, kind: str, *, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike | None] = (),
                 is_own: Callable[[Path], bool] | None = None,
                 remedy: tuple[str, str | None, str] = ("overwrite", None, "replace it")) -> None:
    """Refuse (`OutputError`) to write a `kind` output at `target` when that would destroy
    something minillama did not write there as that kind: a file, a non-empty directory of
    anything else. `overwrite` allows it, except for what is never replaced: an input of the
    command (or a directory holding one) and the current directory or a parent of it.
    `is_own(target)` recognises earlier output (default: the manifest names `kind`); `remedy` is
    how the caller's error names its `overwrite` setting."""
    target = Path(target)
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(f"{target} is the current directory or holds it; write the output to a new directory")
    for given in inputs:
        if given is not None and _inside(Path(given).resolve(), resolved):
            raise OutputError(f"{target} holds {given}, an input of this command; write the output elsewhere")
    if overwrite or not (target.exists() or target.is_symlink()):
        return
    if not target.is_dir():
        raise OutputError(f"{target} is a file, not a {kind} directory; choose another path", remedy=remedy)
    if not any(target.iterdir()):
        return
    if is_own(target) if is_own else output_kind(target) == kind:
        return
    found = output_kind(target)
    if found:
        what = f"is a minillama {found} directory, not a {kind} directory"
    else:
        names = sorted(p.name for p in target.iterdir())
        what = f"holds files that are not a {kind} directory minillama wrote ({', '.join(names[:4])}" + \
            (", ...)" if len(names) > 4 else ")")
    raise OutputError(f"{target} {what}; choose another path", remedy=remedy)


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, kind: str, *, overwrite: bool = False,
                     inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `target` in one rename.

    `target` must be new, empty, or minillama's own earlier output of the same `kind` (see
    `check_output`; `overwrite` replaces anything but an input). The files written get a checksum
    manifest naming `kind`. A crash, Ctrl-C or full disk leaves `target` as it was (and at worst
    a `.tmp-*` directory beside it, never a half-written target).
    """
    target = Path(target)
    check_output(target, kind, overwrite=overwrite, inputs=inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private (0700); give it the usual mode
    try:
        yield tmp
        for path in tmp.rglob("*"):  # safetensors writes 0600 files; make them readable as usual
            if path.is_file():
                os.chmod(path, 0o666 & ~umask)
        write_manifest(tmp, kind)
        if target.exists() or target.is_symlink():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(tmp, target)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
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


class DirectoryLock:
    """One process at a time in a directory: an exclusive `flock` on `directory/run.lock`, which
    holds the owner's PID. The OS releases it when the process ends, however it ends (kill -9
    included), so a stale file never blocks the next run."""

    NAME = "run.lock"

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / self.NAME
        self._file = None  # a file object: garbage collection closes it, and so releases the lock

    def acquire(self) -> DirectoryLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        if self._file is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+b")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read(32).decode("ascii", "replace").strip() or "unknown"
            f.close()
            raise MiniLlamaError(f"{self.directory} is in use by another minillama process (PID {holder}); "
                                 "wait for it to end, or choose another run directory") from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n".encode())
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file releases the flock
            self._file = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
