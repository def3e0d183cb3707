"""Crash-safe file replacement, the one way this project writes keys, certificates and state.

Temp file in the same directory (created with the final mode), fsync, rename, fsync the directory: a power
cut at any instant leaves either the old or the new file, never a torn one or one with looser permissions.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(
    path: Path, data: bytes, mode: int = 0o600, before_rename: Callable[[], None] | None = None
) -> None:
    """``before_rename`` runs once the data is durable, before the rename: a power-cut test kills there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make the directory's entries durable: a rename or unlink survives a power cut only after this."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
