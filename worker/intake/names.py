"""Names we were given: safe file names for files we write (spaces, unicode, ``..``), and
the original name as we record it (valid text that fits its column)."""

from __future__ import annotations

import re
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

#: Characters of an original file name we record (``submissions.original_name``, sidecars).
#: A Linux file name holds at most 255 bytes, so a name from the intake folder always fits;
#: a longer one sent by a caller is shortened, keeping its extension.
MAX_ORIGINAL_NAME = 255
#: Longest tail kept as an extension when a name is shortened.
_MAX_EXTENSION = 16


def safe_filename(name: str | None, fallback: str = "file", max_length: int = 120) -> str:
    """ASCII letters, digits, dot, dash and underscore only; never a path, never hidden."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    base = _UNSAFE.sub("_", base).strip("._-")
    base = re.sub(r"\.{2,}", ".", base)
    return (base or fallback)[:max_length]


def recorded_name(name: str | bytes | None, max_length: int = MAX_ORIGINAL_NAME) -> str | None:
    """The original name as it is stored and shown.

    Valid Unicode whatever the file system gave (bytes that are not UTF-8 become U+FFFD,
    so PostgreSQL and JSON accept it), control characters replaced (a listing on a
    terminal must not act on them), and at most ``max_length`` characters with the
    extension kept.
    """
    if name is None:
        return None
    if isinstance(name, str):
        try:
            raw = name.encode("utf-8", "surrogateescape")  # undecodable bytes from os.listdir
        except UnicodeEncodeError:
            raw = name.encode("utf-8", "replace")  # lone surrogates, e.g. from JSON
    else:
        raw = name
    text = _CONTROL.sub("\ufffd", raw.decode("utf-8", "replace"))
    return shorten(text, max_length) or None


def shorten(name: str, max_length: int) -> str:
    """``name`` cut to ``max_length`` characters, its extension (if short) kept."""
    if len(name) <= max_length:
        return name
    stem, dot, ext = name.rpartition(".")
    if dot and stem and 0 < len(ext) < _MAX_EXTENSION and len(ext) + 1 < max_length:
        return stem[: max_length - len(ext) - 1] + "." + ext
    return name[:max_length]
