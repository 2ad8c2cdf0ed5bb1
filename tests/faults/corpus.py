"""The bad and odd input corpus of issue 9, generated in code: each kind knows how to put
itself into an intake folder and what the service must make of it.

An outcome is one of:

* ``"report"``: exactly one job, done, with a PDF report (for kinds that know their full
  content, the archived image is that content, never a half-written prefix);
* ``"rejected:<code>"``: exactly one job, rejected, ``jobs.error_code == <code>`` (a value
  of ``schemas.RejectionReason``);
* ``"left alone"``: no job; the entry stays where it was put (a partial upload, a hidden
  file, an empty folder).

Usage::

    ctx = CorpusContext(intake_dir=settings.intake_dir, outside_dir=tmp_path / "outside",
                        max_file_bytes=settings.max_file_bytes)
    placed = place_all(ctx)                      # {kind name: Placed}
    ...                                          # run the service until every job is final
    wait_writers(placed.values())
    assert mismatches(engine, KINDS, placed) == {}

Every kind has unique content (distinct seeds), so no two kinds are accidental duplicates
of each other; only the ``duplicate_two_names`` kind is a duplicate on purpose.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import uid

from schemas import RejectionReason
from tests.imagegen import (
    CT_SOP,
    bomb_png_bytes,
    corrupt_dicom_bytes,
    dicom_bytes,
    dicom_bytes_with_sizes,
    dicom_monochrome16,
    dicom_multiframe,
    dicom_without_pixels,
    garbage_bytes,
    jpeg_bytes,
    lesion_rgb,
    png_bytes,
)

REPORT = "report"
LEFT_ALONE = "left alone"

#: Strings from the corpus that identify a (fictitious) patient: none may appear in logs,
#: ``jobs.error`` or rejection sidecars. The accession number is in report file names by
#: design; a test that greps logs must still not find it there.
SENSITIVE_MARKERS: tuple[str, ...] = ("DOE^JANE", "Doe^Jane", "1234567", "TEST-0001", "ACC0001")


def rejected(code: RejectionReason) -> str:
    return f"rejected:{RejectionReason(code).value}"


@dataclass(frozen=True)
class CorpusContext:
    """Where and how big: the intake folder, a folder outside it for link targets, limits."""

    intake_dir: Path
    outside_dir: Path
    max_file_bytes: int = 200 * 1024 * 1024
    stall_s: float = 6.0  # the stalled writer's pause: longer than a short stability window
    claim_timeout_s: float = 60.0  # how long the append-after-claim writer waits for a claim


@dataclass
class Placed:
    """What one kind put into the intake folder."""

    kind: str
    paths: list[Path]  # entries created under the intake folder (checked with lexists)
    original_names: list[str]  # the names the service sees (base names)
    sha256: str | None = None  # the content the service must archive, when it is known
    writers: list[threading.Thread] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)  # raised in writer threads

    def wait(self, timeout: float | None = None) -> None:
        """Join background writers; re-raise the first error one of them hit."""
        for thread in self.writers:
            thread.join(timeout)
        if self.errors:
            raise self.errors[0]


@dataclass(frozen=True)
class Kind:
    name: str
    expect: str  # "report" | "rejected:<code>" | "left alone"
    make: Callable[[CorpusContext], Placed]
    note: str = ""
    #: The service's decoder is known to give another answer today (issue 9); the
    #: expectation is the target, the note says what happens now.
    known_gap: str = ""
    #: Bytes whose decoding decides the outcome (for the quick decoder check), if any.
    content: Callable[[], bytes] | None = None
    #: Returns a reason why this kind cannot be made on this machine, or None.
    unavailable: Callable[[], str | None] = lambda: None

    @property
    def jobs(self) -> int:
        """Distinct jobs the kind must end as."""
        return 0 if self.expect == LEFT_ALONE else 1

    @property
    def code(self) -> RejectionReason | None:
        return RejectionReason(self.expect.split(":", 1)[1]) if self.expect.startswith("rejected:") else None


# --------------------------------------------------------------------------- bytes


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def good_jpeg(seed: int) -> bytes:
    return jpeg_bytes(lesion_rgb(seed=seed))


def good_png(seed: int) -> bytes:
    return png_bytes(lesion_rgb(seed=seed))


def good_dicom(seed: int, **kwargs) -> bytes:
    return dicom_bytes(lesion_rgb((128, 128), seed=seed), **kwargs)


def _pil_bytes(seed: int, fmt: str, mode: str = "RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(lesion_rgb(seed=seed)).convert(mode).save(buf, format=fmt, **save)
    return buf.getvalue()


def _jpeg_claiming(width: int, height: int, seed: int) -> bytes:
    """A small real JPEG whose SOF0 header is patched to claim ``width`` x ``height``."""
    data = bytearray(good_jpeg(seed))
    at = data.index(b"\xff\xc0")  # baseline SOF: FF C0, length(2), precision(1), Y(2), X(2)
    data[at + 5 : at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def _dicom_with_ts(seed: int, ts_field: bytes) -> bytes:
    """A good uncompressed DICOM whose 20-byte Transfer Syntax UID value is replaced."""
    data = good_dicom(seed)
    old = uid.ExplicitVRLittleEndian.encode() + b"\x00"  # 19 characters, padded to 20
    patched = data.replace(old, ts_field, 1)
    if len(ts_field) != len(old) or patched == data:
        raise ValueError("the transfer syntax must be replaced by a value of the same length")
    return patched


def _dicom_16bit_colour(seed: int) -> bytes:
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(good_dicom(seed)))
    rgb16 = lesion_rgb((128, 128), seed=seed).astype(np.uint16) * 257
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelData = rgb16.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _overlong_ids_dicom() -> bytes:
    with warnings.catch_warnings():  # pydicom warns that the values break their VR limits
        warnings.simplefilter("ignore")
        return good_dicom(133, metadata={"AccessionNumber": "A" * 100, "PatientID": "P" * 100})


def _pdf() -> bytes:
    return (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("lesion.jpg", good_jpeg(901))
    return buf.getvalue()


def _elf() -> bytes:
    header = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00\x01\x00\x00\x00"
    return header + b"\x00" * 40


def _heic() -> bytes:
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + garbage_bytes(512, seed=77)[8:]


# --------------------------------------------------------------------------- makers


def _write(ctx: CorpusContext, kind: str, relative: str | bytes, data: bytes) -> Placed:
    """Write ``data`` at ``relative`` under the intake folder (bytes names may be non-UTF-8)."""
    target = os.path.join(os.fsencode(ctx.intake_dir), os.fsencode(relative))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as fh:
        fh.write(data)
    path = Path(os.fsdecode(target))
    return Placed(kind, [path], [path.name], _sha(data))


def _file_kind(name: str, expect: str, data: Callable[[], bytes], filename: str | bytes | None = None,
               note: str = "", known_gap: str = "", check: bool = True, by_content: bool = True) -> Kind:
    """A kind that is one regular file with the given content. ``by_content=False``: its
    content is not unique in the corpus, so the service's outcome is found by name only."""
    filename = filename if filename is not None else f"{name}.jpg"

    def make(ctx: CorpusContext) -> Placed:
        placed = _write(ctx, name, filename, data())
        if not by_content:
            placed.sha256 = None
        return placed

    return Kind(name, expect, make, note=note, known_gap=known_gap, content=data if check else None)


def _too_large(ctx: CorpusContext) -> Placed:
    """A sparse file one byte over the limit: a JPEG header, then a hole (costs no disk)."""
    path = ctx.intake_dir / "too_large_sparse.jpg"
    with open(path, "wb") as fh:
        fh.write(good_jpeg(160)[:1024])
        fh.truncate(ctx.max_file_bytes + 1)
    return Placed("too_large_sparse", [path], [path.name], sha256=None)


# --------------------------------------------------------------------------- kinds


def _image_kinds() -> list[Kind]:
    """JPEG, PNG and files disguised as them: one regular file each; the decoder alone
    decides (checked without services)."""
    R, TR, NAI = REPORT, rejected(RejectionReason.TRUNCATED), rejected(RejectionReason.NOT_AN_IMAGE)
    BOMB = rejected(RejectionReason.DECOMPRESSION_BOMB)
    j = good_jpeg(101)
    p = good_png(102)
    return [
        _file_kind("good_jpeg", R, lambda: good_jpeg(100)),
        _file_kind("good_png", R, lambda: good_png(105), "good_png.png"),
        _file_kind("empty", rejected(RejectionReason.EMPTY_FILE), lambda: b""),
        _file_kind("one_byte", NAI, lambda: b"\xff"),
        _file_kind("jpeg_soi_only", NAI, lambda: j[:3], note="3 bytes: the JPEG signature alone"),
        _file_kind("jpeg_cut_20_bytes", NAI, lambda: j[:20]),
        _file_kind("jpeg_cut_in_header", TR, lambda: j[:200]),
        _file_kind("jpeg_cut_30pc", TR, lambda: _cut(j, 0.3)),
        _file_kind("jpeg_cut_60pc", TR, lambda: _cut(j, 0.6)),
        _file_kind("jpeg_missing_eoi", TR, lambda: j[:-2], note="all but the last 2 bytes"),
        _file_kind("png_signature_only", NAI, lambda: p[:8], "png_signature_only.png"),
        _file_kind("png_cut_in_ihdr", TR, lambda: p[:16], "png_cut_in_ihdr.png"),
        _file_kind("png_cut_50pc", TR, lambda: _cut(p, 0.5), "png_cut_50pc.png"),
        _file_kind("png_without_iend", R, lambda: good_png(109)[:-12], "png_without_iend.png",
                   note="pixel data complete, only the IEND chunk missing: decodable"),
        _file_kind("pdf_named_jpg", NAI, _pdf),
        _file_kind("zip_named_jpg", NAI, _zip),
        _file_kind("text_named_jpg", NAI, lambda: b"this is not an image\n" * 20),
        _file_kind("html_error_page_named_jpg", NAI, lambda: b"<html><body>404 Not Found</body></html>\n"),
        _file_kind("elf_named_jpg", NAI, _elf),
        _file_kind("gif_named_jpg", NAI, lambda: _pil_bytes(110, "GIF")),
        _file_kind("bmp_named_jpg", NAI, lambda: _pil_bytes(111, "BMP")),
        _file_kind("tiff_named_jpg", NAI, lambda: _pil_bytes(112, "TIFF")),
        _file_kind("webp_named_jpg", NAI, lambda: _pil_bytes(113, "WEBP")),
        _file_kind("heic_named_jpg", NAI, _heic),
        _file_kind("random_garbage", NAI, lambda: garbage_bytes(4096, seed=114)),
        _file_kind("png_bomb_20000x20000", BOMB, lambda: bomb_png_bytes(20000, 20000), "png_bomb.png"),
        _file_kind("jpeg_bomb_60000x60000", BOMB, lambda: _jpeg_claiming(60000, 60000, 115)),
        _file_kind("jpeg_too_small_8x8", rejected(RejectionReason.TOO_SMALL),
                   lambda: jpeg_bytes(lesion_rgb((8, 8), seed=116))),
        _file_kind("greyscale_jpeg", R, lambda: _pil_bytes(117, "JPEG", "L")),
        _file_kind("cmyk_jpeg", R, lambda: _pil_bytes(118, "JPEG", "CMYK")),
        _file_kind("progressive_jpeg", R, lambda: _pil_bytes(119, "JPEG", progressive=True)),
        _file_kind("exif_rotated_jpeg", R, lambda: jpeg_bytes(lesion_rgb(seed=120), exif_orientation=6)),
        _file_kind("jpeg_with_trailing_garbage", R, lambda: good_jpeg(121) + garbage_bytes(300, seed=121)),
        _file_kind("rgba_png", R, lambda: _pil_bytes(122, "PNG", "RGBA"), "rgba.png"),
        _file_kind("palette_png", R, lambda: _pil_bytes(123, "PNG", "P"), "palette.png"),
        _file_kind("png_16bit_grey", R, lambda: png_bytes(
            (lesion_rgb(seed=124)[..., 0].astype(np.uint16) * 257)), "grey16.png"),
    ]


def _dicom_kinds() -> list[Kind]:
    """DICOM variants: one regular file each; the decoder alone decides."""
    R, TR, NAI = REPORT, rejected(RejectionReason.TRUNCATED), rejected(RejectionReason.NOT_AN_IMAGE)
    DI, DU = rejected(RejectionReason.DICOM_INVALID), rejected(RejectionReason.DICOM_UNSUPPORTED)
    d = good_dicom(103)
    dj = good_dicom(104, transfer_syntax=uid.JPEGBaseline8Bit, photometric="YBR_FULL_422")
    return [
        _file_kind("good_dicom", R, lambda: good_dicom(106), "good_dicom.dcm"),
        _file_kind("good_dicom_jpeg_baseline", R, lambda: good_dicom(
            107, transfer_syntax=uid.JPEGBaseline8Bit, photometric="YBR_FULL_422"), "good_dicom_jpeg.dcm"),
        _file_kind("good_dicom_rle", R, lambda: good_dicom(108, transfer_syntax=uid.RLELossless), "rle.dcm"),
        _file_kind("dicom_no_preamble", NAI, lambda: good_dicom(125)[132:], "no_preamble.dcm",
                   note="a bare data set without the Part 10 preamble and DICM: not accepted"),
        _file_kind("dicom_preamble_only", rejected(RejectionReason.DICOM_INVALID),
                   lambda: b"\x00" * 128 + b"DICM", "preamble_only.dcm"),
        _file_kind("dicom_cut_in_file_meta", DI, lambda: d[:140], "cut_meta.dcm"),
        _file_kind("dicom_cut_before_pixel_data", TR, lambda: d[:400], "cut_header.dcm",
                   known_gap="rejected as dicom_no_pixel_data today"),
        _file_kind("dicom_no_pixel_data", rejected(RejectionReason.DICOM_NO_PIXEL_DATA),
                   dicom_without_pixels, "no_pixels.dcm"),
        _file_kind("dicom_truncated_pixel_data", TR, lambda: _cut(good_dicom(126), 0.7), "cut_pixels.dcm"),
        _file_kind("dicom_jpeg_fragment_cut", TR, lambda: _cut(dj, 0.8), "cut_fragment.dcm",
                   known_gap="rejected as dicom_no_pixel_data today"),
        _file_kind("dicom_big_endian_syntax", DU, lambda: _dicom_with_ts(127, b"1.2.840.10008.1.2.2\x00"),
                   "big_endian.dcm"),
        _file_kind("dicom_unknown_syntax", DU, lambda: _dicom_with_ts(128, b"1.2.3.4.5.6.7.8.9.10"),
                   "unknown_syntax.dcm"),
        _file_kind("dicom_invalid_syntax_uid", DI, lambda: _dicom_with_ts(129, b"not.a.uid.at.all.xx\x00"),
                   "invalid_syntax.dcm"),
        _file_kind("dicom_garbage_after_header", DI, corrupt_dicom_bytes, "garbage_after_header.dcm"),
        _file_kind("dicom_bomb_30000x30000", rejected(RejectionReason.DECOMPRESSION_BOMB),
                   lambda: dicom_bytes_with_sizes(30000, 30000), "bomb.dcm"),
        _file_kind("dicom_monochrome_16bit", DU, dicom_monochrome16, "mono16.dcm"),
        _file_kind("dicom_colour_16bit", DU, lambda: _dicom_16bit_colour(130), "colour16.dcm"),
        _file_kind("dicom_multiframe", DU, dicom_multiframe, "multiframe.dcm"),
        _file_kind("dicom_ct_sop_class", DU, lambda: good_dicom(131, sop_class=CT_SOP), "ct.dcm"),
        _file_kind("dicom_with_trailing_garbage", R, lambda: good_dicom(132) + garbage_bytes(300, seed=132),
                   "trailing.dcm"),
        _file_kind("dicom_too_small_8x8", rejected(RejectionReason.TOO_SMALL),
                   lambda: dicom_bytes_with_sizes(8, 8), "small.dcm"),
        _file_kind("dicom_overlong_identifiers", DI, _overlong_ids_dicom, "overlong_ids.dcm",
                   note="AccessionNumber (SH, 16) and PatientID (LO, 64) of 100 characters: refused "
                        "at the door, never truncated (a cut identifier can name another patient)",
                   known_gap="accepted (and failing later on PostgreSQL) today"),
    ]


def _name_kinds() -> list[Kind]:
    """A good image each, under a name that breaks naive code; every one must be reported."""
    cjk74 = "皮" * 74 + ".jpg"  # 226 bytes: longer than 255 once a 34-byte claim prefix is added
    cjk_max = "膚" * 83 + "ab.jpg"  # exactly 255 bytes, the most a Linux file name may hold
    assert len(cjk74.encode()) == 226 and len(cjk_max.encode()) == 255
    names: list[tuple[str, str | bytes]] = [
        ("name_74_cjk_chars", cjk74),
        ("name_255_bytes_cjk", cjk_max),
        ("name_255_bytes_ascii", "a" * 251 + ".jpg"),
        ("name_with_newline", "lesion\nsecond line.jpg"),
        ("name_with_control_chars", "lesion\t\x1b[31mred\x1b[0m.jpg"),
        ("name_leading_dash", "-rf lesion.jpg"),
        ("name_with_spaces", "  lesion photo  .jpg"),
        ("name_with_emoji", "🔬lesion🩺.jpg"),
        ("name_with_double_dots", "lesion..jpg"),
        ("name_with_traversal_text", "..%2F..%2Fetc%2Fpasswd.jpg"),
        ("name_with_backslashes", "C:\\scans\\lesion.jpg"),
        ("name_with_format_chars", "lesion %s %d {0} {name}.jpg"),
        ("name_not_utf8", b"lesion_\xff\xfe_latin1_\xe9.jpg"),
        ("name_patient_like", "DOE^JANE_1234567.jpg"),
        ("name_uppercase_extension", "LESION.JPEG"),
        ("name_without_extension", "lesion_no_extension"),
        ("name_wrong_extension", "really_a_jpeg.png"),
        ("name_in_subfolder", "clinic a/2026-11-27/lesion_in_subfolder.jpg"),
        ("name_deeply_nested", "/".join(f"level{i}" for i in range(30)) + "/lesion_deeply_nested.jpg"),
    ]
    return [_file_kind(kind, REPORT, (lambda s=200 + i: good_jpeg(s)), filename)
            for i, (kind, filename) in enumerate(names)]


def _fifo(ctx: CorpusContext) -> Placed:
    path = ctx.intake_dir / "fifo.jpg"
    os.mkfifo(path)  # opening it for reading blocks until a writer comes: never do that
    return Placed("fifo_named_jpg", [path], [path.name])


def _unix_socket(ctx: CorpusContext) -> Placed:
    path = ctx.intake_dir / "socket.jpg"
    # AF_UNIX paths are limited to ~107 bytes: bind through /proc/self/fd when too long.
    dir_fd = os.open(ctx.intake_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        target = str(path) if len(os.fsencode(path)) < 100 else f"/proc/self/fd/{dir_fd}/{path.name}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(target)
    finally:
        os.close(dir_fd)
    return Placed("unix_socket_named_jpg", [path], [path.name])


def _dangling_symlink(ctx: CorpusContext) -> Placed:
    path = ctx.intake_dir / "dangling.jpg"
    os.symlink(ctx.outside_dir / "does-not-exist.jpg", path)
    return Placed("dangling_symlink", [path], [path.name])


def _symlink_loop(ctx: CorpusContext) -> Placed:
    path = ctx.intake_dir / "loop.jpg"
    os.symlink(path.name, path)  # points at itself: ELOOP
    return Placed("symlink_loop", [path], [path.name])


def _symlink_to_good(ctx: CorpusContext) -> Placed:
    data = good_jpeg(300)
    ctx.outside_dir.mkdir(parents=True, exist_ok=True)
    target = ctx.outside_dir / "symlink_target.jpg"
    target.write_bytes(data)
    path = ctx.intake_dir / "symlink_to_good.jpg"
    os.symlink(target, path)
    return Placed("symlink_to_good_file", [path], [path.name], _sha(data))


def _hardlink_to_good(ctx: CorpusContext) -> Placed:
    data = good_jpeg(301)
    ctx.outside_dir.mkdir(parents=True, exist_ok=True)
    target = ctx.outside_dir / "hardlink_target.jpg"
    target.write_bytes(data)
    path = ctx.intake_dir / "hardlink.jpg"
    os.link(target, path)
    return Placed("hardlink_to_good_file", [path], [path.name], _sha(data))


def _empty_directory(ctx: CorpusContext) -> Placed:
    path = ctx.intake_dir / "directory.jpg"
    path.mkdir()
    return Placed("directory_named_jpg", [path], [path.name])


def _directory_with_image(ctx: CorpusContext) -> Placed:
    placed = _write(ctx, "directory_named_jpg_with_image", "folder.jpg/inside.jpg", good_jpeg(302))
    return placed


def _unreadable(ctx: CorpusContext) -> Placed:
    placed = _write(ctx, "no_read_permission", "no_read_permission.jpg", good_jpeg(303))
    os.chmod(placed.paths[0], 0)
    return placed


def _root_reads_anything() -> str | None:
    """chmod 000 stops nobody with CAP_DAC_OVERRIDE (root, as in CI)."""
    if os.geteuid() == 0:
        return "running as root: a file without read permission is still readable"
    return None


def _special_kinds() -> list[Kind]:
    NRF = rejected(RejectionReason.NOT_A_REGULAR_FILE)
    return [
        Kind("fifo_named_jpg", NRF, _fifo, note="reading it would block forever"),
        Kind("unix_socket_named_jpg", NRF, _unix_socket),
        Kind("dangling_symlink", NRF, _dangling_symlink),
        Kind("symlink_loop", NRF, _symlink_loop),
        Kind("symlink_to_good_file", REPORT, _symlink_to_good,
             note="the link is followed; the target lies outside the intake folder"),
        Kind("hardlink_to_good_file", REPORT, _hardlink_to_good),
        Kind("directory_named_jpg", LEFT_ALONE, _empty_directory,
             note="an empty folder: the watcher walks folders, there is nothing to take"),
        Kind("directory_named_jpg_with_image", REPORT, _directory_with_image),
        Kind("no_read_permission", rejected(RejectionReason.UNREADABLE), _unreadable,
             unavailable=_root_reads_anything),
    ]


# --------------------------------------------------------------------------- timing


def _background(placed: Placed, work: Callable[[], None]) -> Placed:
    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to Placed.wait()
            placed.errors.append(exc)

    thread = threading.Thread(target=run, name=f"corpus-{placed.kind}", daemon=True)
    placed.writers.append(thread)
    thread.start()
    return placed


def _stalled_writer(ctx: CorpusContext) -> Placed:
    """40 % written, a pause of ``stall_s`` (a slow network share), then the rest."""
    data = good_jpeg(400)
    path = ctx.intake_dir / "stalled_writer.jpg"
    fh = open(path, "wb")  # noqa: SIM115 - closed by the writer thread
    fh.write(data[: int(len(data) * 0.4)])
    fh.flush()

    def finish() -> None:
        with fh:
            time.sleep(ctx.stall_s)
            fh.write(data[int(len(data) * 0.4):])

    return _background(Placed("stalled_writer", [path], [path.name], _sha(data)), finish)


def _appended_after_claim(ctx: CorpusContext) -> Placed:
    """Half written; the rest is appended through the open handle once the file is claimed
    (renamed away from its intake path), or after ``claim_timeout_s`` if it never is."""
    data = good_jpeg(401)
    path = ctx.intake_dir / "appended_after_claim.jpg"
    fh = open(path, "wb")  # noqa: SIM115 - closed by the writer thread
    fh.write(data[: len(data) // 2])
    fh.flush()

    def finish() -> None:
        with fh:
            deadline = time.monotonic() + ctx.claim_timeout_s
            while os.path.lexists(path) and time.monotonic() < deadline:
                time.sleep(0.05)
            fh.write(data[len(data) // 2:])

    return _background(Placed("appended_after_claim", [path], [path.name], _sha(data)), finish)


def _trickle_writer(ctx: CorpusContext) -> Placed:
    """Grows by 2 kB every 0.2 s: never stable until complete."""
    data = good_jpeg(402)
    path = ctx.intake_dir / "trickle_writer.jpg"
    fh = open(path, "wb")  # noqa: SIM115 - closed by the writer thread

    def finish() -> None:
        with fh:
            for at in range(0, len(data), 2048):
                fh.write(data[at : at + 2048])
                fh.flush()
                time.sleep(0.2)

    return _background(Placed("trickle_writer", [path], [path.name], _sha(data)), finish)


def _part_then_rename(ctx: CorpusContext) -> Placed:
    """The copy-tool convention: written slowly as ``*.part``, renamed when complete."""
    data = good_jpeg(403)
    final = ctx.intake_dir / "renamed_from_part.jpg"
    part = ctx.intake_dir / "renamed_from_part.jpg.part"

    def finish() -> None:
        with open(part, "wb") as fh:
            for at in range(0, len(data), 4096):
                fh.write(data[at : at + 4096])
                fh.flush()
                time.sleep(0.3)
        os.rename(part, final)

    return _background(Placed("part_then_rename", [final], [final.name], _sha(data)), finish)


def _duplicate(ctx: CorpusContext) -> Placed:
    data = good_jpeg(404)
    first = _write(ctx, "duplicate_two_names", "duplicate_first.jpg", data)
    second = _write(ctx, "duplicate_two_names", "duplicate_second.jpg", data)
    return Placed("duplicate_two_names", first.paths + second.paths,
                  first.original_names + second.original_names, _sha(data))


def _timing_kinds() -> list[Kind]:
    return [
        Kind("stalled_writer", REPORT, _stalled_writer,
             note="must be taken only once complete: the archived bytes are the whole file"),
        Kind("appended_after_claim", REPORT, _appended_after_claim,
             note="a file that changes after its claim must not be reported half-read"),
        Kind("trickle_writer", REPORT, _trickle_writer),
        Kind("part_then_rename", REPORT, _part_then_rename),
        Kind("duplicate_two_names", REPORT, _duplicate,
             note="one job, two submissions (the second marked duplicate)"),
    ]


def _left_alone_kinds() -> list[Kind]:
    """Partial uploads and hidden files: never taken, never recorded."""
    kinds = [
        _file_kind("part_zero_length", LEFT_ALONE, lambda: b"", "upload.jpg.part", check=False,
                   by_content=False),  # same (empty) content as the ``empty`` kind
        _file_kind("part_with_content", LEFT_ALONE, lambda: _cut(good_jpeg(500), 0.5), "upload2.jpg.part",
                   check=False),
        _file_kind("crdownload", LEFT_ALONE, lambda: _cut(good_jpeg(501), 0.5), "lesion.jpg.crdownload",
                   check=False),
        _file_kind("tmp_suffix", LEFT_ALONE, lambda: _cut(good_jpeg(502), 0.5), "lesion.jpg.tmp", check=False),
        _file_kind("filepart_suffix", LEFT_ALONE, lambda: good_jpeg(503), "lesion.jpg.filepart", check=False),
        _file_kind("hidden_dot_file", LEFT_ALONE, lambda: good_jpeg(504), ".hidden_lesion.jpg", check=False),
        _file_kind("ds_store", LEFT_ALONE, lambda: garbage_bytes(6148, seed=505), ".DS_Store", check=False),
        _file_kind("apple_double", LEFT_ALONE, lambda: b"\x00\x05\x16\x07" + garbage_bytes(4000, seed=506),
                   "._lesion.jpg", check=False),
        _file_kind("rsync_temp_file", LEFT_ALONE, lambda: _cut(good_jpeg(507), 0.5), ".lesion.jpg.Ab12Cd",
                   note="rsync writes .NAME.XXXXXX and renames it when complete", check=False),
        _file_kind("name_only_dots", LEFT_ALONE, lambda: good_jpeg(508), "...", check=False,
                   note="starts with a dot: hidden"),
    ]
    return kinds


KINDS: tuple[Kind, ...] = (
    *_image_kinds(),
    *_dicom_kinds(),
    Kind("too_large_sparse", rejected(RejectionReason.TOO_LARGE_FILE), _too_large,
         note="sparse: max_file_bytes + 1 bytes, no disk used; must not be read whole"),
    *_name_kinds(),
    *_special_kinds(),
    *_timing_kinds(),
    *_left_alone_kinds(),
)
_BY_NAME = {k.name: k for k in KINDS}
assert len(_BY_NAME) == len(KINDS), "kind names must be unique"


def kind(name: str) -> Kind:
    return _BY_NAME[name]


def place(k: Kind, ctx: CorpusContext) -> Placed:
    """Put one kind into the intake folder (both folders are created if need be)."""
    ctx.intake_dir.mkdir(parents=True, exist_ok=True)
    ctx.outside_dir.mkdir(parents=True, exist_ok=True)
    return k.make(ctx)


def place_all(ctx: CorpusContext, kinds: Iterable[Kind] = KINDS) -> dict[str, Placed]:
    """Put every available kind into the intake folder; unavailable kinds are left out
    (see :func:`skipped`)."""
    return {k.name: place(k, ctx) for k in kinds if k.unavailable() is None}


def skipped(kinds: Iterable[Kind] = KINDS) -> dict[str, str]:
    """Kinds this machine cannot make, with the reason."""
    return {k.name: reason for k in kinds if (reason := k.unavailable()) is not None}


def wait_writers(placed: Iterable[Placed], timeout: float = 120) -> None:
    for p in placed:
        p.wait(timeout)


def entry_type(path: Path) -> str:
    """What is at ``path`` without following a final symlink or opening it: file, dir,
    fifo, socket, symlink, other, or missing."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    for name, test in (("symlink", stat.S_ISLNK), ("file", stat.S_ISREG), ("dir", stat.S_ISDIR),
                       ("fifo", stat.S_ISFIFO), ("socket", stat.S_ISSOCK)):
        if test(mode):
            return name
    return "other"


# --------------------------------------------------------------------------- outcomes


def observed_outcome(conn, placed: Placed) -> str:
    """What the service made of one placed kind, in the vocabulary of ``Kind.expect``.

    ``conn`` is a SQLAlchemy connection. Jobs are found by archived content (sha256) and
    by submitted name; more than one job reads ``multiple:<outcomes>``; no job reads
    ``left alone`` when every entry is still in place, else ``vanished``.
    """
    from sqlalchemy import text

    rows = set()
    if placed.sha256:
        rows |= set(conn.execute(text(
            "SELECT j.id, j.state, j.error_code FROM jobs j JOIN images i ON i.id = j.image_id "
            "WHERE i.sha256 = :sha"), {"sha": placed.sha256}).all())
    for name in placed.original_names:
        if not _utf8(name):
            continue  # a non-UTF-8 name cannot be stored as given: found by content only
        rows |= set(conn.execute(text(
            "SELECT j.id, j.state, j.error_code FROM jobs j JOIN submissions s ON s.job_id = j.id "
            "WHERE s.original_name = :name"), {"name": name}).all())
    if not rows:
        return LEFT_ALONE if all(os.path.lexists(p) for p in placed.paths) else "vanished"
    outcomes = sorted({_outcome_word(state, code) for _, state, code in rows})
    if len({job_id for job_id, _, _ in rows}) > 1:
        return "multiple:" + ",".join(outcomes)
    return outcomes[0]


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _outcome_word(state: str, code: str | None) -> str:
    if state == "done":
        return REPORT
    if state in ("rejected", "failed"):
        return f"{state}:{code}"
    return state  # still received / queued / running


def mismatches(engine, placed: dict[str, Placed], kinds: Iterable[Kind] = KINDS) -> dict[str, tuple[str, str]]:
    """{kind: (expected, observed)} for every placed kind whose outcome is not the expected one."""
    out = {}
    with engine.connect() as conn:
        for k in kinds:
            if k.name in placed:
                seen = observed_outcome(conn, placed[k.name])
                if seen != k.expect:
                    out[k.name] = (k.expect, seen)
    return out
