"""Files a kill never leaves half-written, and the comparison of the settings they record."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(temporary path)`, then a rename onto `path`: a kill leaves the old file or none, never half."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.partial")
    write(partial)
    os.replace(partial, path)
    return path


def atomic_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def aside(path: Path) -> Path:
    """Where `atomic_dir` keeps the folder it replaces until the new one is in place."""
    return path.with_name(f"{path.name}.old")


def complete_dir(path: str | Path) -> Path:
    """The folder `atomic_dir` filled at `path`: `path`, or, when a replacement was killed between moving the
    old folder aside and renaming the new one in, the old one aside (a reader finds a whole folder either way)."""
    path = Path(path)
    return aside(path) if not path.exists() and aside(path).is_dir() else path


def restore_dir(path: str | Path) -> None:
    """Puts back the folder a killed `atomic_dir` replacement left aside, where no folder took its place."""
    path = Path(path)
    if not path.exists() and aside(path).is_dir():
        os.rename(aside(path), path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A folder filled under a temporary name and renamed to `path` when the block ends without an error (an
    error deletes it). A folder already at `path` is renamed aside first and deleted last, so at every instant
    a whole folder is at `path` or aside (`complete_dir`), and the next fill puts an aside one back
    (`restore_dir`); what a killed fill left is deleted by the next one."""
    path = Path(path)
    partial, old = path.with_name(f"{path.name}.partial"), aside(path)
    restore_dir(path)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)  # a killed replacement's: `path` is whole
        os.rename(path, old)
    os.rename(partial, path)
    shutil.rmtree(old, ignore_errors=True)


def diff_dicts(found: dict, wanted: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """`(dotted key, found value, wanted value)` for every leaf that differs; nested dicts by key."""
    differ = []
    for key in sorted(set(found) | set(wanted)):
        a, b = found.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differ += diff_dicts(a, b, f"{prefix}{key}.")
        elif a != b:
            differ.append((f"{prefix}{key}", a, b))
    return differ
