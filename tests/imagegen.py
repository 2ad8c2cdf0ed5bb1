"""Image and DICOM fixtures generated in code (no files on disk, no network).

Shared by many test modules: ``from tests.imagegen import lesion_rgb, dicom_bytes, ...``.
Everything is deterministic. The DICOM files are real Part 10 files (preamble, file meta,
patient/study/series/SOP tags) that dcmtk's ``dcmdump`` reads.
"""

from __future__ import annotations

import functools
import struct
import zlib
from io import BytesIO

import numpy as np
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space

DERMOSCOPY_SOP = "1.2.840.10008.5.1.4.1.1.77.1.7"
VL_PHOTOGRAPHIC_SOP = "1.2.840.10008.5.1.4.1.1.77.1.4"
SECONDARY_CAPTURE_SOP = "1.2.840.10008.5.1.4.1.1.7"
CT_SOP = "1.2.840.10008.5.1.4.1.1.2"

#: (transfer syntax, photometric interpretation) pairs that ``dicom_bytes`` encodes and
#: ``worker.imaging.decode`` must read back. All are legal DICOM combinations.
DICOM_MATRIX: tuple[tuple[str, str], ...] = (
    (uid.ExplicitVRLittleEndian, "RGB"),
    (uid.ExplicitVRLittleEndian, "YBR_FULL"),
    (uid.ExplicitVRLittleEndian, "YBR_FULL_422"),  # native 4:2:2 layout (Y1 Y2 Cb Cr)
    (uid.ImplicitVRLittleEndian, "RGB"),
    (uid.JPEGBaseline8Bit, "YBR_FULL_422"),  # what cameras and most modalities write
    (uid.JPEGBaseline8Bit, "YBR_FULL"),  # 4:4:4 YCbCr
    (uid.JPEGBaseline8Bit, "RGB"),  # JPEG without colour transform (Adobe APP14 0)
    (uid.JPEGLSLossless, "RGB"),
    (uid.JPEGLSNearLossless, "RGB"),
    (uid.JPEG2000Lossless, "RGB"),
    (uid.JPEG2000Lossless, "YBR_RCT"),
    (uid.JPEG2000, "YBR_ICT"),
    (uid.RLELossless, "RGB"),
    (uid.RLELossless, "YBR_FULL"),
)

#: Transfer syntaxes whose round trip is lossy (decoded pixels differ from the source).
LOSSY_SYNTAXES = frozenset({uid.JPEGBaseline8Bit, uid.JPEGLSNearLossless, uid.JPEG2000})

#: Maximum absolute error per sample of JPEG-LS near-lossless fixtures.
JLS_NEAR_ERROR = 2

DEFAULT_DICOM_METADATA: dict[str, object] = {
    "PatientID": "TEST-0001",
    "PatientName": "Doe^Jane",
    "AccessionNumber": "ACC0001",
    "StudyDate": "20261120",
    "BodyPartExamined": "BACK",
    "ImageLaterality": "L",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.1.1",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.1.1.1",
}

SKIN_RGB = (222, 170, 140)
LESION_RGB = (105, 62, 45)


# --------------------------------------------------------------------------- pictures


def lesion_rgb(size: tuple[int, int] = (240, 320), seed: int = 0) -> np.ndarray:
    """A dermoscopy-like HxWx3 uint8 picture: noisy skin, a dark irregular blob in the middle."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h / 2 + rng.uniform(-0.05, 0.05) * h, w / 2 + rng.uniform(-0.05, 0.05) * w
    # Skin: base tone, gentle illumination falloff towards the corners, sensor noise.
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    light = 1.0 - 0.12 * r**2
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        img[..., c] = SKIN_RGB[c] * light
    img += rng.normal(0, 5, size=(h, w, 3)).astype(np.float32)
    # Lesion: radius in polar coordinates perturbed by a few random harmonics.
    theta = np.arctan2(yy - cy, xx - cx)
    radius = 0.22 * min(h, w)
    edge = np.ones_like(theta)
    for k in range(2, 7):
        edge += rng.uniform(0.03, 0.12) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    dist = np.hypot(yy - cy, xx - cx) / (radius * edge)
    inside = np.clip((1.15 - dist) / 0.3, 0.0, 1.0)  # soft border
    mottle = 1.0 + 0.15 * np.sin(xx / 7.0 + rng.uniform(0, 6)) * np.sin(yy / 9.0)
    for c in range(3):
        img[..., c] = img[..., c] * (1 - inside) + LESION_RGB[c] * mottle * inside
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


#: Colour patches of ``colour_patches_rgb``: name -> RGB.
PATCH_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "green": (20, 200, 40),
    "blue": (30, 40, 210),
    "skin": SKIN_RGB,
    "brown": LESION_RGB,
    "grey": (128, 128, 128),
}


def colour_patches_rgb(block: int = 64) -> np.ndarray:
    """Flat colour blocks (2 rows x 3 columns) aligned to JPEG MCUs: catches RGB/YBR mix-ups."""
    names = list(PATCH_COLOURS)
    img = np.zeros((2 * block, 3 * block, 3), np.uint8)
    for i, name in enumerate(names):
        r, c = divmod(i, 3)
        img[r * block : (r + 1) * block, c * block : (c + 1) * block] = PATCH_COLOURS[name]
    return img


def patch_centre(name: str, block: int = 64) -> tuple[int, int]:
    """(row, col) of the centre of one patch of ``colour_patches_rgb``."""
    r, c = divmod(list(PATCH_COLOURS).index(name), 3)
    return r * block + block // 2, c * block + block // 2


# --------------------------------------------------------------------------- JPEG / PNG


def jpeg_bytes(
    rgb: np.ndarray,
    quality: int = 92,
    exif_orientation: int | None = None,
    subsampling: int = -1,
) -> bytes:
    """Encode with Pillow (YCbCr 4:2:0 by default); optionally tag an EXIF orientation."""
    img = Image.fromarray(rgb)
    kwargs: dict[str, object] = {"quality": quality, "subsampling": subsampling}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    buf = BytesIO()
    img.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def png_bytes(rgb: np.ndarray) -> bytes:
    """Lossless PNG of an HxWx3 (RGB), HxWx4 (RGBA) or HxW (greyscale) uint8/uint16 array."""
    buf = BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


@functools.lru_cache(maxsize=4)
def bomb_png_bytes(width: int = 20000, height: int = 20000) -> bytes:
    """A valid greyscale PNG of a huge all-black image: ~400 kB on disk, 400 MP decoded.

    Written chunk by chunk with zlib so generating it never holds the image in memory.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    row = b"\x00" * (width + 1)  # filter byte 0 + black pixels
    rows_per_block = max(1, min(height, (1 << 20) // len(row)))
    blocks, rest = divmod(height, rows_per_block)
    # Raw deflate, fully flushed after each block: every block compresses to the same
    # bytes, so one compressed block is repeated instead of compressing 400 MB of zeros.
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(row * rows_per_block) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.compress(row * rest) + comp.flush(zlib.Z_FINISH)
    total = len(row) * height
    adler = ((total % 65521) << 16) | 1  # Adler-32 of `total` zero bytes
    idat = b"\x78\xda" + block * blocks + tail + struct.pack(">I", adler)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def truncated_jpeg_bytes() -> bytes:
    """A JPEG of ``lesion_rgb()`` cut off at 60 % of its length."""
    data = jpeg_bytes(lesion_rgb())
    return data[: int(len(data) * 0.6)]


def garbage_bytes(n: int = 4096, seed: int = 1) -> bytes:
    """Random bytes that start with no known magic number."""
    data = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    return b"GARBAGE!" + data[8:]


# --------------------------------------------------------------------------- DICOM


def _base_dataset(
    sop_class: str, transfer_syntax: str, metadata: dict[str, object] | None
) -> Dataset:
    ds = Dataset()
    values = dict(DEFAULT_DICOM_METADATA)
    values.update(metadata or {})
    ds.SOPClassUID = sop_class
    ds.Modality = "XC"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "melanoma-triage tests"
    for keyword, value in values.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
            continue
        setattr(ds, keyword, value)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3.4")
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.9999"
    ds.file_meta = meta
    return ds


def _to_bytes(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _set_image_pixel_module(
    ds: Dataset, rows: int, cols: int, photometric: str, samples: int = 3, bits: int = 8
) -> None:
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if samples > 1:
        ds.PlanarConfiguration = 0


def _ybr_full_422_native(rgb: np.ndarray) -> bytes:
    """Uncompressed YBR_FULL_422: per pair of pixels Y1 Y2 Cb Cr (chroma averaged)."""
    if rgb.shape[1] % 2:
        raise ValueError("YBR_FULL_422 needs an even number of columns")
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL").astype(np.uint16)
    y = ybr[..., 0].reshape(rgb.shape[0], -1, 2)
    cb = ((ybr[:, 0::2, 1] + ybr[:, 1::2, 1] + 1) // 2)[..., None]
    cr = ((ybr[:, 0::2, 2] + ybr[:, 1::2, 2] + 1) // 2)[..., None]
    return np.concatenate([y, cb, cr], axis=2).astype(np.uint8).tobytes()


def _pillow_jpeg(rgb: np.ndarray, photometric: str, quality: int) -> bytes:
    buf = BytesIO()
    img = Image.fromarray(rgb)
    if photometric == "YBR_FULL_422":
        img.save(buf, format="JPEG", quality=quality, subsampling=1)  # 4:2:2
    elif photometric == "YBR_FULL":
        img.save(buf, format="JPEG", quality=quality, subsampling=0)  # 4:4:4
    elif photometric == "RGB":
        img.save(buf, format="JPEG", quality=quality, keep_rgb=True)  # no colour transform
    else:
        raise ValueError(f"JPEG baseline fixture cannot write {photometric}")
    return buf.getvalue()


def dicom_bytes(
    rgb: np.ndarray,
    transfer_syntax: str = uid.ExplicitVRLittleEndian,
    photometric: str = "RGB",
    sop_class: str = DERMOSCOPY_SOP,
    metadata: dict[str, object] | None = None,
    jpeg_quality: int = 92,
) -> bytes:
    """A DICOM Part 10 file holding ``rgb`` (HxWx3 uint8) in the given encoding.

    ``metadata`` maps DICOM keywords to values and overrides the defaults in
    ``DEFAULT_DICOM_METADATA``; a value of None removes that element.
    """
    if (transfer_syntax, photometric) not in DICOM_MATRIX:
        raise ValueError(f"not a supported fixture combination: {transfer_syntax} {photometric}")
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    rows, cols = rgb.shape[:2]
    ds = _base_dataset(sop_class, transfer_syntax, metadata)
    _set_image_pixel_module(ds, rows, cols, photometric)
    ts = uid.UID(transfer_syntax)

    if not ts.is_compressed:
        if photometric == "RGB":
            ds.PixelData = rgb.tobytes()
        elif photometric == "YBR_FULL":
            ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").tobytes()
        else:  # YBR_FULL_422
            ds.PixelData = _ybr_full_422_native(rgb)
        return _to_bytes(ds)

    if ts == uid.JPEGBaseline8Bit:
        ds.PixelData = encapsulate([_pillow_jpeg(rgb, photometric, jpeg_quality)])
        ds.LossyImageCompression = "01"
        return _to_bytes(ds)

    kwargs: dict[str, object] = {}
    arr = rgb
    if photometric == "YBR_FULL":  # RLE stores whatever samples it is given
        arr = convert_color_space(rgb, "RGB", "YBR_FULL")
    if ts == uid.JPEGLSNearLossless:
        kwargs["jls_error"] = JLS_NEAR_ERROR
    if ts == uid.JPEG2000:
        kwargs["j2k_cr"] = [10]
    # YBR_RCT / YBR_ICT: the input stays RGB, the encoder applies the colour transform.
    ds.compress(ts, arr, generate_instance_uid=False, **kwargs)
    if ts in LOSSY_SYNTAXES:
        ds.LossyImageCompression = "01"
    return _to_bytes(ds)


def dicom_without_pixels() -> bytes:
    """A dermoscopy DICOM with the image pixel module but no Pixel Data."""
    ds = _base_dataset(DERMOSCOPY_SOP, uid.ExplicitVRLittleEndian, None)
    _set_image_pixel_module(ds, 64, 64, "RGB")
    return _to_bytes(ds)


def dicom_monochrome16(rows: int = 64, cols: int = 64) -> bytes:
    """A 16-bit MONOCHROME2 Secondary Capture (looks like a CT/MR screenshot)."""
    ds = _base_dataset(SECONDARY_CAPTURE_SOP, uid.ExplicitVRLittleEndian, None)
    _set_image_pixel_module(ds, rows, cols, "MONOCHROME2", samples=1, bits=16)
    ramp = (np.arange(rows * cols, dtype=np.uint16) * 13).reshape(rows, cols)
    ds.PixelData = ramp.tobytes()
    return _to_bytes(ds)


def dicom_multiframe(frames: int = 2) -> bytes:
    """A dermoscopy DICOM with ``frames`` 8-bit RGB frames."""
    rgb = lesion_rgb((64, 64))
    ds = _base_dataset(DERMOSCOPY_SOP, uid.ExplicitVRLittleEndian, None)
    _set_image_pixel_module(ds, 64, 64, "RGB")
    ds.NumberOfFrames = frames
    ds.PixelData = rgb.tobytes() * frames
    return _to_bytes(ds)


def dicom_bytes_with_sizes(rows: int, cols: int) -> bytes:
    """An RGB dermoscopy DICOM whose header claims ``rows`` x ``cols`` but holds 1 pixel.

    For bomb and too-small guards, which must fire before any pixel decoding.
    """
    ds = _base_dataset(DERMOSCOPY_SOP, uid.ExplicitVRLittleEndian, None)
    _set_image_pixel_module(ds, rows, cols, "RGB")
    ds.PixelData = b"\x00\x00\x00\x00"
    return _to_bytes(ds)


def truncated_dicom_bytes() -> bytes:
    """An uncompressed RGB dermoscopy DICOM cut off in the middle of its Pixel Data."""
    data = dicom_bytes(lesion_rgb((64, 64)))
    return data[: len(data) - 64 * 64]


def corrupt_dicom_bytes() -> bytes:
    """A 'DICM' preamble followed by bytes that are not a DICOM data set."""
    return b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + garbage_bytes(256)[8:]


def main(names: list[str]) -> None:
    """``python -m tests.imagegen a.jpg b.jpg``: synthetic lesion photographs (not real
    lesions) to try the service with; each name gives its own picture, always the same."""
    for name in names:
        with open(name, "wb") as f:
            f.write(jpeg_bytes(lesion_rgb((600, 800), seed=zlib.crc32(name.encode()) % 100_000)))
        print(name)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
