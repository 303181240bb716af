"""Data shipped inside the package, so everything runs offline. Provenance and licences are in
the README.md of each folder."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent


def asset_path(relative: str) -> Path:
    """Path of a shipped file, e.g. `asset_path("tinystories/tinystories_train.txt.gz")`."""
    path = ASSETS_DIR / relative
    if not path.is_file():
        available = sorted(p.relative_to(ASSETS_DIR).as_posix() for p in ASSETS_DIR.rglob("*.gz"))
        raise FileNotFoundError(f"no shipped asset {relative!r}; available: {', '.join(available)}")
    return path
