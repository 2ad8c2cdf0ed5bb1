"""Content-addressed archive: every accepted byte is kept under its SHA-256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from worker.durable import fsync_dir, write_atomic


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def archive_path(root: Path, sha256: str) -> Path:
    return root / sha256[:2] / sha256[2:4] / sha256


def store(root: Path, data: bytes, sha256: str | None = None) -> Path:
    """Write ``data`` once (idempotent); the file appears atomically and is durable when
    this returns, whoever wrote it."""
    sha256 = sha256 or sha256_bytes(data)
    target = archive_path(root, sha256)
    if target.exists():
        # Complete (it appeared by rename), but another door may have renamed it in a moment
        # ago and not yet made the rename durable: this arrival is acknowledged only once it is.
        fsync_dir(target.parent)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, data)
    return target


def load(path: str | os.PathLike, bind=None) -> bytes:
    """The archived bytes at a location: a file, or ``db:`` a blob (``bind``: an engine or
    session of the database that holds it; ``worker.storage.blobs``)."""
    from worker.storage.blobs import read_location

    return read_location(path if isinstance(path, str) else Path(path), bind)
