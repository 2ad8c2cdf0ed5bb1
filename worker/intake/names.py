"""Safe file names for files we write from names we were given (spaces, unicode, ``..``)."""

from __future__ import annotations

import re
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str | None, fallback: str = "file", max_length: int = 120) -> str:
    """ASCII letters, digits, dot, dash and underscore only; never a path, never hidden."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    base = _UNSAFE.sub("_", base).strip("._-")
    base = re.sub(r"\.{2,}", ".", base)
    return (base or fallback)[:max_length]
