"""Size limits every decoder enforces, and the checks that apply them.

The checks run on what the header claims, before any pixel is decoded, so a small file
claiming a huge image (decompression bomb) costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import RejectionReason
from worker.errors import InputRejected


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 200 * 1024 * 1024
    max_pixels: int = 50_000_000  # decompression-bomb guard, checked on the header
    min_side: int = 32


def check_byte_size(size: int, limits: DecodeLimits) -> None:
    """Reject empty and oversized files before they are read or parsed."""
    if size == 0:
        raise InputRejected(RejectionReason.EMPTY_FILE, "the file is empty (0 bytes)")
    if size > limits.max_bytes:
        raise InputRejected(
            RejectionReason.TOO_LARGE_FILE,
            f"the file is {size:,} bytes, more than the limit of {limits.max_bytes:,} bytes",
        )


def check_dimensions(rows: int, cols: int, limits: DecodeLimits) -> None:
    """Reject bombs and thumbnails from the header's dimensions alone."""
    if rows <= 0 or cols <= 0:
        raise InputRejected(
            RejectionReason.TRUNCATED, f"the image header gives an empty size ({cols} x {rows})"
        )
    if rows * cols > limits.max_pixels:
        raise InputRejected(
            RejectionReason.DECOMPRESSION_BOMB,
            f"the image claims {cols} x {rows} pixels, more than the limit of "
            f"{limits.max_pixels:,} pixels",
        )
    if min(rows, cols) < limits.min_side:
        raise InputRejected(
            RejectionReason.TOO_SMALL,
            f"the image is {cols} x {rows} pixels; both sides must be at least {limits.min_side}",
        )
