"""The intake watcher's bookkeeping of sidecars and manifests (:mod:`worker.intake.sidecars`).

Each scan the watcher hands over what it saw (:meth:`Companions.index`). An image about to
be claimed asks for its metadata (:meth:`Companions.metadata_for`); once it is claimed its
sidecar is used up (:meth:`Companions.used`): removed when valid and no other image of the
same stem waits, recorded as rejected with its reason when invalid. What no image came for
ends as a recorded rejection too (:meth:`Companions.tend`): a sidecar alone for
``orphan_seconds``, a manifest whose rows name files that never arrived. Nothing is
dropped silently; log lines never carry a file name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from schemas import ImageMetadata, RejectionReason, SourceDoor
from worker.intake import sidecars
from worker.intake.admission import Intake
from worker.intake.sidecars import MetadataRefused

log = logging.getLogger(__name__)


@dataclass
class Gathered:
    """The metadata found for one image, and the companions it came from."""

    metadata: ImageMetadata
    sidecar: Path | None = None
    manifest: Path | None = None
    refused: dict[Path, str] = field(default_factory=dict)  # companion -> why it is not used


class Companions:
    """Sidecars and manifests seen in the intake folder, by folder and stem."""

    def __init__(self, intake: Intake, orphan_seconds: float) -> None:
        self.intake = intake
        self.orphan_seconds = orphan_seconds
        self.seen: dict[Path, object] = {}  # companion -> its watch (a watcher's _Watch)
        self._sidecars: dict[tuple[Path, str], Path] = {}
        self._manifests: dict[Path, Path] = {}  # folder -> its manifest
        self._image_stems: dict[tuple[Path, str], int] = {}
        self._image_folders: set[Path] = set()
        self._parsed: dict[Path, tuple[object, dict | MetadataRefused]] = {}
        self._used_rows: dict[Path, set[str]] = {}

    # ----------------------------------------------------------------- what is there

    def index(self, companions: dict[Path, object], images: set[Path]) -> None:
        """This scan's companions (path -> watch) and the other entries of the folder."""
        self.seen = companions
        self._sidecars, self._manifests = {}, {}
        for path in companions:
            if sidecars.is_manifest(path.name):
                self._manifests[path.parent] = path
            else:
                self._sidecars[(path.parent, sidecars.stem(path.name))] = path
        self._image_stems = {}
        for path in images:
            key = (path.parent, sidecars.stem(path.name))
            self._image_stems[key] = self._image_stems.get(key, 0) + 1
        self._image_folders = {p.parent for p in images}
        self._parsed = {p: v for p, v in self._parsed.items() if p in self._manifests.values()}

    def of(self, image: Path) -> list[Path]:
        """The sidecar and manifest that go with ``image`` (those present)."""
        found = [self._sidecars.get((image.parent, sidecars.stem(image.name))),
                 self._manifests.get(image.parent)]
        return [p for p in found if p is not None]

    # ----------------------------------------------------------------- one image

    def metadata_for(self, image: Path) -> Gathered:
        """Sidecar over manifest row; a companion that cannot be used is noted, not fatal."""
        sidecar = self._sidecars.get((image.parent, sidecars.stem(image.name)))
        manifest = self._manifests.get(image.parent)
        gathered = Gathered(ImageMetadata(), sidecar, manifest)
        side_md = row_md = None
        if sidecar is not None:
            try:
                side_md = sidecars.parse_sidecar(sidecars.read_small(sidecar))
            except MetadataRefused as exc:
                gathered.refused[sidecar] = exc.reason
            except OSError as exc:
                gathered.refused[sidecar] = (f"the sidecar could not be read "
                                             f"({exc.strerror or type(exc).__name__})")
        if manifest is not None:
            rows = self._manifest_rows(manifest)
            if isinstance(rows, MetadataRefused):
                gathered.refused[manifest] = rows.reason
            else:
                row_md = rows.get(image.name)
        gathered.metadata = sidecars.combined(row_md, side_md)
        return gathered

    def _manifest_rows(self, manifest: Path) -> dict | MetadataRefused:
        watch = self.seen.get(manifest)
        key = getattr(watch, "signature", None)
        cached = self._parsed.get(manifest)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            rows: dict | MetadataRefused = sidecars.parse_manifest(sidecars.read_small(manifest))
        except MetadataRefused as exc:
            rows = exc
        except OSError as exc:
            rows = MetadataRefused(f"the manifest could not be read "
                                   f"({exc.strerror or type(exc).__name__})")
        self._parsed[manifest] = (key, rows)
        return rows

    def used(self, image: Path, gathered: Gathered) -> None:
        """``image`` has been claimed with ``gathered``: use up or record its companions."""
        key = (image.parent, sidecars.stem(image.name))
        self._image_stems[key] = self._image_stems.get(key, 1) - 1
        if gathered.sidecar is not None:
            why = gathered.refused.get(gathered.sidecar)
            if why is not None:
                self._refuse(gathered.sidecar, RejectionReason.INVALID_SIDECAR,
                             f"{why}; its image was taken without this metadata")
            elif self._image_stems[key] <= 0:  # no other image of this stem waits for it
                self._remove(gathered.sidecar)
        if gathered.manifest is not None:
            why = gathered.refused.get(gathered.manifest)
            if why is not None:
                self._refuse(gathered.manifest, RejectionReason.INVALID_MANIFEST,
                             f"{why}; the images of its folder were taken without it")
            else:
                self._used_rows.setdefault(gathered.manifest, set()).add(image.name)

    # ----------------------------------------------------------------- left over

    def tend(self, now: float, arrived: Callable[[Path], float], settled: Callable) -> None:
        """Record as rejected what no image came for (``arrived(path)``: first seen, monotonic)."""
        for path, watch in list(self.seen.items()):
            if not os.path.lexists(path) or not settled(watch, now):
                continue
            if now - arrived(path) < self.orphan_seconds:
                continue
            try:
                if sidecars.is_manifest(path.name):
                    self._finish_manifest(path)
                elif not self._image_stems.get((path.parent, sidecars.stem(path.name))):
                    self._refuse(path, RejectionReason.ORPHAN_SIDECAR,
                                 f"no image with the same name (stem) arrived within "
                                 f"{self.orphan_seconds:.0f} s: an image 'x.jpg' goes with "
                                 f"its sidecar 'x.json' in the same folder")
            except Exception as exc:  # noqa: BLE001 - the next scan tries again
                log.error("a sidecar or manifest could not be settled (%s); tried again at the "
                          "next scan", type(exc).__name__)

    def _finish_manifest(self, manifest: Path) -> None:
        """Once its folder holds no image: removed if every row found its file."""
        if manifest.parent in self._image_folders:
            return
        rows = self._manifest_rows(manifest)
        if isinstance(rows, MetadataRefused):
            self._refuse(manifest, RejectionReason.INVALID_MANIFEST, rows.reason)
            return
        used = self._used_rows.pop(manifest, set())
        missing = set(rows) - used
        if missing:
            self._refuse(manifest, RejectionReason.MANIFEST_UNMATCHED,
                         f"{len(missing)} of its {len(rows)} rows name files that did not "
                         f"arrive in its folder within {self.orphan_seconds:.0f} s "
                         f"(the other rows were used)")
        else:
            log.info("a manifest's %d rows were all used; it is removed", len(rows))
            self._remove(manifest)

    def _refuse(self, path: Path, code: RejectionReason, reason: str) -> None:
        log.warning("a sidecar or manifest in intake/ is recorded as rejected (%s)", code.value)
        self._forget(path)
        self.intake.reject_unread(path, SourceDoor.INTAKE, path.name, code, reason,
                                  size_bytes=_size(path))

    def _remove(self, path: Path) -> None:
        self._forget(path)
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def _forget(self, path: Path) -> None:
        self.seen.pop(path, None)
        self._parsed.pop(path, None)
        if sidecars.is_manifest(path.name):
            self._used_rows.pop(path, None)
        self._sidecars = {k: v for k, v in self._sidecars.items() if v != path}
        self._manifests = {k: v for k, v in self._manifests.items() if v != path}


def _size(path: Path) -> int | None:
    try:
        return os.lstat(path).st_size
    except OSError:
        return None
