"""Metadata dropped into the intake folder with an image: a JSON sidecar or a manifest.

* A **sidecar** has the image's stem and ``.json``: ``lesion.jpg`` + ``lesion.json``. It
  holds the keys of the HTTP API's ``metadata`` (:class:`schemas.ImageMetadata`), flat or
  under ``"metadata"``: ``{"patient_id": "P1", "laterality": "L", "body_site": "back"}``.
* A **manifest** is ``manifest.csv`` in a folder (a camera export): a header row with
  ``file_name`` and any of the same keys, then one row per image file in that folder.

A sidecar's keys win over its manifest row's. Reasons for a refusal name the key and the
rule, never a value (values are patient data).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pydantic import ValidationError

from schemas import ImageMetadata

SIDECAR_SUFFIX = ".json"
MANIFEST_NAME = "manifest.csv"
#: Header of the manifest column that names each row's file (the first one present wins).
NAME_COLUMNS = ("file_name", "filename", "file")
#: A sidecar or manifest larger than this is refused unread (they hold a few short fields).
MAX_METADATA_BYTES = 1024 * 1024


class MetadataRefused(Exception):
    """A sidecar or manifest that cannot be used; ``reason`` says why (no values)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_sidecar(name: str) -> bool:
    return name.lower().endswith(SIDECAR_SUFFIX) and len(name) > len(SIDECAR_SUFFIX)


def is_manifest(name: str) -> bool:
    return name.lower() == MANIFEST_NAME


def is_companion(name: str) -> bool:
    """A file that carries metadata for images, never an image itself."""
    return is_sidecar(name) or is_manifest(name)


def stem(name: str) -> str:
    """``lesion.jpg`` -> ``lesion``; a name without a suffix is its own stem."""
    base, dot, _ext = name.rpartition(".")
    return base if dot and base else name


def sidecar_name(image_name: str) -> str:
    return stem(image_name) + SIDECAR_SUFFIX


def _fields_error(exc: ValidationError, where: str) -> str:
    """Which keys were refused and why: pydantic's messages without the input (hidden)."""
    allowed = ", ".join(ImageMetadata.model_fields)
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        key = ".".join(str(p) for p in err.get("loc", ())) or "(the object)"
        if err.get("type") == "extra_forbidden":
            parts.append(f"{key!r} is not a metadata key (allowed: {allowed})")
        else:
            parts.append(f"{key}: {err.get('msg', 'invalid')}")
    return f"{where}: " + "; ".join(parts)


def _metadata(values: dict, where: str) -> ImageMetadata:
    try:
        return ImageMetadata.model_validate(values)
    except ValidationError as exc:
        raise MetadataRefused(_fields_error(exc, where)) from None


def parse_sidecar(data: bytes) -> ImageMetadata:
    """The metadata of one sidecar, or :class:`MetadataRefused`."""
    if len(data) > MAX_METADATA_BYTES:
        raise MetadataRefused(f"the sidecar is larger than {MAX_METADATA_BYTES:,} bytes")
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise MetadataRefused("the sidecar is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise MetadataRefused(f"the sidecar is not valid JSON ({exc.msg} at line {exc.lineno}, "
                              f"column {exc.colno})") from None
    if isinstance(doc, dict) and set(doc) == {"metadata"}:
        doc = doc["metadata"]
    if not isinstance(doc, dict):
        raise MetadataRefused("the sidecar must be a JSON object of metadata keys "
                              "(as the HTTP API's \"metadata\")")
    return _metadata(doc, "the sidecar")


def parse_manifest(data: bytes) -> dict[str, ImageMetadata]:
    """File name -> metadata, one per row, or :class:`MetadataRefused` for the whole file."""
    if len(data) > MAX_METADATA_BYTES:
        raise MetadataRefused(f"the manifest is larger than {MAX_METADATA_BYTES:,} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MetadataRefused("the manifest is not UTF-8 text") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip() for h in (reader.fieldnames or [])]
        name_column = next((c for c in NAME_COLUMNS if c in header), None)
        if name_column is None:
            raise MetadataRefused("the manifest has no file_name column in its header row")
        rows = list(reader)
    except csv.Error as exc:
        raise MetadataRefused(f"the manifest is not valid CSV ({exc})") from None
    by_name: dict[str, ImageMetadata] = {}
    for number, row in enumerate(rows, start=2):
        if None in row:
            raise MetadataRefused(f"the manifest's line {number} has more cells than its header")
        cells = {k.strip(): (v or "").strip() for k, v in row.items()}
        name = cells.pop(name_column)
        if not name and not any(cells.values()):
            continue  # a blank line
        if not name:
            raise MetadataRefused(f"the manifest's line {number} names no file")
        if name in by_name:
            raise MetadataRefused(f"the manifest names one file twice (line {number})")
        by_name[name] = _metadata({k: v for k, v in cells.items() if v},
                                  f"the manifest's line {number}")
    return by_name


def combined(row: ImageMetadata | None, sidecar: ImageMetadata | None) -> ImageMetadata:
    """The sidecar's fields over the manifest row's."""
    base = row or ImageMetadata()
    return sidecar.merged_over(base) if sidecar is not None else base


def read_small(path: Path) -> bytes:
    """A sidecar or manifest's bytes (bounded: one byte more than the limit says "too large")."""
    with open(path, "rb") as f:
        return f.read(MAX_METADATA_BYTES + 1)
