"""The intake-folder watcher: polling, because inotify does not fire on SMB/NFS shares.

A file is taken when its size and mtime are unchanged across ``stable_scans`` scans
(a ``*.part`` file is ignored until renamed). It is claimed by an atomic rename into
``intake/.processing/``, so two watchers never take the same file and a crash leaves it
there to be picked up again: admission is idempotent by content hash.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from schemas import SourceDoor
from worker.intake.admission import Admission, Intake

log = logging.getLogger(__name__)

PROCESSING_DIR = ".processing"
#: Names of files still being written by common copy tools.
IN_PROGRESS_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".filepart")


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    stable: int = 1


class IntakeWatcher:
    def __init__(self, intake: Intake, folder: Path, stable_scans: int = 2) -> None:
        self.intake = intake
        self.folder = folder
        self.processing = folder / PROCESSING_DIR
        self.stable_scans = stable_scans
        self._seen: dict[Path, _Seen] = {}

    def _candidates(self) -> list[Path]:
        found = []
        for root, dirs, files in os.walk(self.folder):
            dirs[:] = sorted(d for d in dirs if not (Path(root) == self.folder and d == PROCESSING_DIR))
            for name in sorted(files):
                if not name.lower().endswith(IN_PROGRESS_SUFFIXES):
                    found.append(Path(root) / name)
        return found

    def ready_files(self) -> list[Path]:
        """Files whose size and mtime have been stable long enough."""
        ready, current = [], {}
        for path in self._candidates():
            try:
                st = path.stat()
            except OSError:
                continue  # vanished between listing and stat
            prev = self._seen.get(path)
            if prev and prev.size == st.st_size and prev.mtime_ns == st.st_mtime_ns:
                prev.stable += 1
                entry = prev
            else:
                entry = _Seen(st.st_size, st.st_mtime_ns)
            current[path] = entry
            if entry.stable >= self.stable_scans:
                ready.append(path)
        self._seen = current
        return ready

    def claim(self, path: Path) -> Path | None:
        self.processing.mkdir(parents=True, exist_ok=True)
        claimed = self.processing / f"{uuid.uuid4().hex}__{path.name}"
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return None  # another watcher took it
        self._seen.pop(path, None)
        return claimed

    def process_claimed(self, claimed: Path) -> Admission:
        original = claimed.name.split("__", 1)[-1]
        try:
            data = claimed.read_bytes()
        except OSError as exc:
            return self.intake.admit_unreadable(
                claimed, SourceDoor.INTAKE, original, f"the file could not be read ({exc.strerror})")
        admission = self.intake.admit_bytes(data, SourceDoor.INTAKE, original_name=original)
        claimed.unlink(missing_ok=True)
        return admission

    def scan_once(self) -> list[Admission]:
        admissions = []
        # Leftovers from a crash or a failed admission come first.
        leftovers = sorted(self.processing.iterdir()) if self.processing.is_dir() else []
        fresh = [c for c in (self.claim(p) for p in self.ready_files()) if c is not None]
        for claimed in leftovers + fresh:
            if not claimed.is_file():
                continue
            try:
                admissions.append(self.process_claimed(claimed))
            except Exception as exc:  # database down, disk full: keep the file, retry next scan
                # Type only: messages may carry file names, which may carry patient names.
                log.error("intake of a claimed file failed (%s); it stays in %s for the next scan",
                          type(exc).__name__, PROCESSING_DIR)
        return admissions

    def run(self, interval_s: float, stop: threading.Event) -> None:
        log.info("watching %s every %.1fs", self.folder, interval_s)
        while not stop.is_set():
            self.scan_once()
            stop.wait(interval_s)
