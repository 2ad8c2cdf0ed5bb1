"""The record every decoder returns: RGB pixels plus what the file said about them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas import ImageMetadata


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # HxWx3 uint8, RGB, EXIF orientation applied
    metadata: ImageMetadata  # from DICOM tags; empty ImageMetadata() for JPEG/PNG
    source_format: str  # "jpeg" | "png" | "dicom"
    transfer_syntax: str | None = None  # DICOM transfer syntax UID
    photometric: str | None = None  # DICOM PhotometricInterpretation as stored
    # What the file declares (after EXIF orientation), when the pixels were decoded smaller
    # (JPEG DCT scaling, ``worker.imaging.decode``); None: the size of ``rgb``.
    declared_width: int | None = None
    declared_height: int | None = None

    @property
    def width(self) -> int:
        """The image's width as the file declares it (recorded with the job)."""
        return self.declared_width if self.declared_width is not None else int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return self.declared_height if self.declared_height is not None else int(self.rgb.shape[0])
