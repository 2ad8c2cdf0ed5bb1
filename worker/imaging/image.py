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
