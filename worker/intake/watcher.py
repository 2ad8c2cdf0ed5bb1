"""The intake-folder watcher: polling, because inotify does not fire on SMB/NFS shares.

Whatever is put into the folder (walked recursively; hidden names (:func:`is_hidden`) and
the ``*.part``-style names of copies in progress are left alone), nothing stops the watcher: an error on one
entry is contained, and one it cannot explain is recorded as that entry's rejection. Log
lines never carry a file name (it may carry a patient's name). An entry goes through:

1. **Ready**: its size and mtime (its target's, for a symbolic link) have not changed for
   ``stable_scans`` scans and as long as its content asks (:meth:`IntakeWatcher._waited`),
   judged where its writer put it: a whole JPEG, PNG or DICOM file ``settle_seconds`` (and,
   with no sidecar beside it, ``sidecar_wait_seconds`` after it arrived); one that ends
   early ``incomplete_grace_seconds``, left in place so that a writer that pauses and then
   appends (opening it by name again) makes it whole: one file, one job; anything else
   ``stable_seconds``, so a copy that stalls on a slow share is not taken half-written. Its
   JSON sidecar or its folder's ``manifest.csv`` (:mod:`worker.intake.companions`) gives
   its metadata.
2. **Claimed**: renamed atomically to ``intake/.processing/<random id>`` with its original
   name in ``<random id>.name`` and its metadata and arrival time in ``<random id>.meta``
   beside it: two watchers never take the same entry, a name of any length can be claimed
   (a 255-byte name plus a prefix would not fit), and a crash leaves them there to be taken
   up again (admission is idempotent by content hash).
3. **Read**: only a regular file is opened, never blocking (a FIFO is not opened at all),
   and only when ``stat`` says it is within ``max_file_bytes``: a larger file is rejected
   and moved to rejected/ as it is, never read. After reading, the open file is checked
   again; if it changed (on POSIX a rename does not stop a writer that holds it open), it
   must settle again before it is read anew, by the same rules as in step 1 (a file that
   then ends early is held for ``incomplete_grace_seconds`` after its last change in case
   its writer resumes, then judged as it is). Never is a half-read file admitted.

Odd entries: a FIFO, a socket, a device, a dangling or looping symbolic link, a link to a
folder are rejected as ``not_a_regular_file`` and moved (renamed, never opened) to
rejected/ beside their sidecar. A symbolic link to a regular file is followed: its
target's bytes are taken, read with this service's permissions (so only trusted senders
may write to the intake folder, as for any file they drop); the link, not the target, is
then removed. A folder is walked whatever its name; an empty one stays.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.exc import InterfaceError, OperationalError

from schemas import ImageMetadata, RejectionReason, SourceDoor
from worker.errors import TransientError
from worker.imaging.completeness import cut_short, is_whole
from worker.intake import sidecars
from worker.intake.admission import Admission, Intake
from worker.intake.companions import Companions
from worker.intake.names import recorded_name
from worker.intake.rejections import describe_exception

log = logging.getLogger(__name__)

PROCESSING_DIR = ".processing"
#: Suffix of the file that holds a claimed entry's original name.
NAME_SUFFIX = ".name"
#: Suffix of the file that holds a claimed entry's metadata (sidecar, manifest row) and arrival.
META_SUFFIX = ".meta"
#: What a file's content says of it (cached per signature): see :meth:`IntakeWatcher._judge`.
WHOLE, CUT, UNKNOWN = "whole", "cut", "unknown"
#: Names of files still being written by common copy tools.
IN_PROGRESS_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".filepart")
#: Folder names that look like image files: walked as folders, said once in the log.
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm", ".dicom")
#: Folders nested deeper than this under the intake folder are not walked.
MAX_DEPTH = 64
#: An orphan name file (its claim failed) older than this is removed.
_ORPHAN_NAME_AGE_S = 300.0
#: Trouble outside the file (database, broker, disk): the claimed file waits for the next scan.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError, OperationalError, InterfaceError, ConnectionError, TimeoutError, OSError)

#: Claim failures that will not go away by themselves: the file is recorded as rejected.
_FOR_GOOD = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
#: (file type, size, mtime in ns, inode): what must stay the same for a file to be stable.
Signature = tuple[int, int, int, int]


class NotARegularFile(Exception):
    """What was opened turned out not to be a regular file."""


@dataclass
class _Watch:
    """One entry as watched: since when (monotonic) it has had this signature."""

    signature: Signature
    since: float
    scans: int = 1
    held: bool = False  # read, found to end early, waiting for its writer to resume
    verdict: str | None = None  # WHOLE, CUT or UNKNOWN, for this signature
    taken: bool = False  # claimed with this signature: judged ready already


class _Watches:
    """Signatures by path; an entry whose signature changes starts over."""

    def __init__(self) -> None:
        self._by_path: dict[Path, _Watch] = {}

    def observe(self, path: Path, signature: Signature, now: float) -> _Watch:
        watch = self._by_path.get(path)
        if watch is not None and watch.signature == signature:
            watch.scans += 1
        else:
            watch = self._by_path[path] = _Watch(signature, now)
        return watch

    def get(self, path: Path) -> _Watch | None:
        return self._by_path.get(path)

    def adopt(self, path: Path, watch: _Watch) -> None:
        self._by_path[path] = watch

    def forget(self, path: Path) -> None:
        self._by_path.pop(path, None)

    def keep_only(self, paths: set[Path]) -> None:
        self._by_path = {p: w for p, w in self._by_path.items() if p in paths}


def is_hidden(name: str) -> bool:
    """A name that starts with one dot (.DS_Store, AppleDouble ``._x``, rsync's temporary
    ``.x.XXXXXX`` written before its rename) or is only dots: never taken. A name that
    starts with two dots and goes on ("..x.jpg") is an ordinary, if odd, name."""
    return name.startswith(".") and (not name.startswith("..") or not name.strip("."))


def signature(st: os.stat_result) -> Signature:
    return (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino)


def inspect_entry(path: Path) -> tuple[str | None, os.stat_result]:
    """(why the entry is not a regular file or None, the stat that describes it), without
    opening it. A symbolic link is followed to a regular file only."""
    lst = os.lstat(path)
    mode = lst.st_mode
    if stat.S_ISREG(mode):
        return None, lst
    if stat.S_ISLNK(mode):
        try:
            target = os.stat(path)
        except FileNotFoundError:
            return "a symbolic link whose target does not exist", lst
        except OSError:
            return "a symbolic link that cannot be followed (a loop, or no permission)", lst
        if stat.S_ISREG(target.st_mode):
            return None, target
        if stat.S_ISDIR(target.st_mode):
            return "a symbolic link to a folder (links to folders are not followed)", lst
        return "a symbolic link to something that is not a regular file", lst
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)", lst
    if stat.S_ISSOCK(mode):
        return "a socket", lst
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device", lst
    if stat.S_ISDIR(mode):
        return "a folder", lst
    return "not a regular file", lst


def read_regular_file(path: Path, limit: int) -> tuple[bytes, os.stat_result]:
    """At most ``limit + 1`` bytes of a regular file, and its stat once read.

    Opened non-blocking (a FIFO swapped in since it was inspected does not block) and
    checked with ``fstat`` on the open descriptor before a byte is read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise NotARegularFile()
        chunks, total, want = [], 0, min(before.st_size, limit) + 1
        while total <= limit:
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            want = min(1 << 24, limit + 1 - total)
        return b"".join(chunks), os.fstat(fd)
    finally:
        os.close(fd)


class IntakeWatcher:
    """Takes complete files from one folder into ``intake``; ``scan_once`` never raises.

    ``stable_seconds`` and ``incomplete_grace_seconds`` default to the intake's settings;
    the short settle of a whole file and the wait for a sidecar never exceed
    ``stable_seconds`` (the fast path is never the slower one).
    """

    def __init__(
        self,
        intake: Intake,
        folder: Path,
        stable_scans: int = 2,
        stable_seconds: float | None = None,
        incomplete_grace_seconds: float | None = None,
    ) -> None:
        settings = intake.settings
        self.intake = intake
        self.folder = folder
        self.processing = folder / PROCESSING_DIR
        self.stable_scans = stable_scans
        self.stable_seconds = settings.stable_seconds if stable_seconds is None else stable_seconds
        self.incomplete_grace_seconds = (settings.incomplete_grace_seconds
                                         if incomplete_grace_seconds is None
                                         else incomplete_grace_seconds)
        self.settle_seconds = min(settings.settle_seconds, self.stable_seconds)
        self.sidecar_wait_seconds = min(settings.sidecar_wait_seconds, self.stable_seconds)
        self.max_bytes = settings.max_file_bytes
        self._waiting = _Watches()  # entries in the intake folder
        self._claimed = _Watches()  # entries in .processing/
        self._arrived: dict[Path, tuple[float, float]] = {}  # first seen: monotonic, wall clock
        self.companions = Companions(intake, settings.sidecar_orphan_seconds)
        self._unclaimable: set[tuple[Path, Signature]] = set()
        self._noted: set[tuple[str, Path]] = set()

    # ----------------------------------------------------------------- the folder

    def _entries(self) -> Iterator[Path]:
        """Every entry to consider, folders walked (not followed through links)."""
        stack = [(self.folder, 0)]
        while stack:
            folder, depth = stack.pop()
            try:
                with os.scandir(folder) as listing:
                    entries = sorted(listing, key=lambda e: e.name, reverse=True)
            except OSError as exc:
                self._note("unlistable", folder, "a folder in intake/ cannot be listed (%s); "
                           "its files are not taken", exc.strerror or type(exc).__name__)
                continue
            for entry in entries:
                name = entry.name
                if is_hidden(name) or name.lower().endswith(IN_PROGRESS_SUFFIXES):
                    continue
                path = Path(entry.path)
                try:
                    is_folder = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_folder = False
                if not is_folder:
                    yield path
                elif depth >= MAX_DEPTH:
                    self._note("too deep", path, "folders nested more than %d deep in intake/ "
                               "are not walked", MAX_DEPTH)
                else:
                    if name.lower().endswith(_IMAGE_SUFFIXES):
                        self._note("folder named like an image", path, "a folder in intake/ is "
                                   "named like an image file: it is walked as a folder")
                    stack.append((path, depth + 1))

    def _settled(self, watch: _Watch, now: float) -> bool:
        """Unchanged for ``stable_scans`` scans and the short settle."""
        return watch.scans >= self.stable_scans and now - watch.since >= self.settle_seconds

    def _waited(self, watch: _Watch, now: float) -> bool:
        """Unchanged as long as its content asks: a whole file the short settle, one that
        ends early the incomplete grace (never less than ``stable_seconds``: it stays where
        its writer put it, so a writer that pauses and then appends makes it whole), and
        anything not understood (or not a regular file) ``stable_seconds``."""
        if not self._settled(watch, now):
            return False
        need = {WHOLE: self.settle_seconds,
                CUT: max(self.stable_seconds, self.incomplete_grace_seconds)}
        return now - watch.since >= need.get(watch.verdict, self.stable_seconds)

    @staticmethod
    def _verdict(data: bytes) -> str:
        if is_whole(data):
            return WHOLE
        if not data or cut_short(data) is not None:
            return CUT
        return UNKNOWN

    def _judge(self, path: Path, watch: _Watch) -> str | None:
        """What the file's content says, read where it lies; None: it changed meanwhile."""
        if watch.signature[1] > self.max_bytes:
            return UNKNOWN  # rejected unread once stable
        try:
            data, after = read_regular_file(path, self.max_bytes)
        except (NotARegularFile, OSError):
            return UNKNOWN
        if signature(after) != watch.signature or len(data) != after.st_size:
            return None
        return self._verdict(data)

    def _ready(self, path: Path, why: str | None, watch: _Watch, now: float) -> bool:
        if not self._settled(watch, now):
            return False
        if why is None and watch.verdict is None:
            watch.verdict = self._judge(path, watch)
            if watch.verdict is None:
                return False
        return self._waited(watch, now)

    def _companions_ready(self, path: Path, now: float) -> bool:
        """Its sidecar or manifest written, or none came within the brief wait."""
        found = self.companions.of(path)
        if found:
            return all(self._settled(self.companions.seen[c], now) for c in found)
        return now - self._arrived[path][0] >= self.sidecar_wait_seconds

    def ready_files(self, now: float | None = None) -> list[Path]:
        """Entries ready to be claimed (files or odd entries): see :meth:`_waited`."""
        now = time.monotonic() if now is None else now
        ready, present, companions = [], set(), {}
        for path in self._entries():
            try:
                why, st = inspect_entry(path)
            except FileNotFoundError:
                continue  # vanished between listing and stat
            except OSError as exc:
                self._note("unstattable", path, "an entry in intake/ cannot be inspected (%s)",
                           exc.strerror or type(exc).__name__)
                continue
            present.add(path)
            watch = self._waiting.observe(path, signature(st), now)
            self._arrived.setdefault(path, (now, min(time.time(), st.st_ctime)))
            if why is None and sidecars.is_companion(path.name):
                companions[path] = watch
            elif self._ready(path, why, watch, now):
                ready.append(path)
        self._waiting.keep_only(present)
        self._arrived = {p: a for p, a in self._arrived.items() if p in present}
        self._unclaimable = {key for key in self._unclaimable if key[0] in present}
        self.companions.index(companions, present - set(companions))
        return [p for p in ready if self._companions_ready(p, now)]

    def claim(self, path: Path) -> Path | None:
        """Move ``path`` to ``.processing/<id>`` (its name to ``<id>.name``, its metadata and
        arrival to ``<id>.meta``); None if gone. Its sidecar is used up once it is claimed."""
        self.processing.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        claimed = self.processing / token
        name_file = self.processing / (token + NAME_SUFFIX)
        meta_file = self.processing / (token + META_SUFFIX)
        gathered = self.companions.metadata_for(path)
        arrived = self._arrived.get(path, (0.0, time.time()))[1]
        name_file.write_bytes(os.fsencode(path.name))
        meta_file.write_text(json.dumps({
            "metadata": gathered.metadata.model_dump(mode="json", exclude_none=True),
            "received_at": datetime.fromtimestamp(arrived, timezone.utc).isoformat()}))
        try:
            os.rename(path, claimed)
        except BaseException as exc:
            name_file.unlink(missing_ok=True)
            meta_file.unlink(missing_ok=True)
            if isinstance(exc, FileNotFoundError):
                return None  # another watcher took it
            raise
        watch = self._waiting.get(path)
        self._waiting.forget(path)
        if watch is not None:
            watch.taken = True  # ready already: no second wait
            self._claimed.adopt(claimed, watch)
        try:
            self.companions.used(path, gathered)
        except Exception as exc:  # noqa: BLE001 - the image is claimed; the sidecar waits
            log.error("the sidecar or manifest of a claimed file could not be settled (%s)",
                      type(exc).__name__)
        return claimed

    # ----------------------------------------------------------------- claimed entries

    def _claimed_entries(self) -> list[Path]:
        try:
            names = sorted(os.listdir(self.processing))
        except FileNotFoundError:
            return []
        entries = [n for n in names if not n.endswith((NAME_SUFFIX, META_SUFFIX))
                   and not n.startswith(".")]
        present = set(entries)
        for name in names:
            for suffix in (NAME_SUFFIX, META_SUFFIX):
                if name.endswith(suffix) and name[: -len(suffix)] not in present:
                    self._drop_orphan_name(self.processing / name)
        paths = [self.processing / n for n in entries]
        self._claimed.keep_only(set(paths))
        return paths

    @staticmethod
    def _drop_orphan_name(path: Path) -> None:
        try:
            if time.time() - path.stat().st_mtime > _ORPHAN_NAME_AGE_S:
                path.unlink()
        except OSError:
            pass

    def original_name(self, claimed: Path) -> str | None:
        """The name the entry had in the intake folder, as it is recorded."""
        try:
            return recorded_name(claimed.with_name(claimed.name + NAME_SUFFIX).read_bytes())
        except FileNotFoundError:  # claimed by an older version: "<id>__<name>"
            return recorded_name(claimed.name.split("__", 1)[1]) if "__" in claimed.name else None

    @staticmethod
    def claimed_metadata(claimed: Path) -> tuple[ImageMetadata | None, datetime | None]:
        """The metadata (sidecar, manifest row) and arrival time recorded when it was claimed."""
        try:
            doc = json.loads(claimed.with_name(claimed.name + META_SUFFIX).read_text())
            return (ImageMetadata.model_validate(doc.get("metadata") or {}),
                    datetime.fromisoformat(doc["received_at"]))
        except FileNotFoundError:  # claimed by an older version
            return None, None
        except (ValueError, KeyError, TypeError, AttributeError):
            log.error("the metadata recorded with a claimed file cannot be read; it is taken "
                      "without it")
            return None, None

    def _done(self, claimed: Path, admission: Admission) -> Admission:
        for path in (claimed, claimed.with_name(claimed.name + NAME_SUFFIX),
                     claimed.with_name(claimed.name + META_SUFFIX)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        self._claimed.forget(claimed)
        return admission

    def _reject(self, claimed: Path, name: str | None, code: RejectionReason, reason: str,
                size_bytes: int | None = None) -> Admission:
        """Record the entry as rejected and move it, unread, to rejected/."""
        return self._done(claimed, self.intake.reject_unread(
            claimed, SourceDoor.INTAKE, name, code, reason, size_bytes=size_bytes))

    def process_claimed(self, claimed: Path, now: float | None = None) -> Admission | None:
        """Admit or reject one claimed entry; None while it must wait (changed, or ends early).

        A file claimed with the signature it was judged ready by is taken at once; one that
        changed after its claim (its writer held it open) waits as :meth:`_waited` says."""
        now = time.monotonic() if now is None else now
        name = self.original_name(claimed)
        try:
            why, st = inspect_entry(claimed)
        except FileNotFoundError:
            self._claimed.forget(claimed)
            return None  # taken up by another watcher
        if why is not None:
            log.warning("an entry in intake/ is %s; recorded as rejected (not a regular file)", why)
            return self._reject(claimed, name, RejectionReason.NOT_A_REGULAR_FILE,
                                f"not a regular file: {why}")
        watch = self._claimed.observe(claimed, signature(st), now)
        if not watch.taken and not self._settled(watch, now):
            return None
        if st.st_size > self.max_bytes:
            return self._reject(claimed, name, RejectionReason.TOO_LARGE_FILE,
                                f"the file is {st.st_size:,} bytes, more than the limit of "
                                f"{self.max_bytes:,} bytes", size_bytes=st.st_size)
        if not watch.taken and watch.verdict is not None and not self._waited(watch, now):
            return None
        try:
            data, after = read_regular_file(claimed, self.max_bytes)
        except NotARegularFile:
            return self._reject(claimed, name, RejectionReason.NOT_A_REGULAR_FILE,
                                "not a regular file: it changed into another kind of entry")
        except OSError as exc:
            return self._reject(claimed, name, RejectionReason.UNREADABLE,
                                f"the file could not be read ({exc.strerror or type(exc).__name__})")
        if signature(after) != watch.signature or len(data) != after.st_size:
            log.info("a claimed file changed while it was read (its writer still holds it); "
                     "waiting for it to settle")
            self._claimed.observe(claimed, signature(after), now)
            return None
        if not watch.taken:
            watch.verdict = self._verdict(data)
            if not self._waited(watch, now):
                if watch.verdict == CUT and not watch.held:
                    log.info("a claimed file ends early; held up to %.0f s in case its writer "
                             "resumes", self.incomplete_grace_seconds)
                watch.held = watch.verdict == CUT
                return None
        metadata, received_at = self.claimed_metadata(claimed)
        return self._done(claimed, self.intake.admit_bytes(
            data, SourceDoor.INTAKE, metadata=metadata, original_name=name,
            received_at=received_at))

    # ----------------------------------------------------------------- scanning

    def scan_once(self) -> list[Admission]:
        """One pass: claim what is stable, then take up everything claimed. Never raises."""
        try:
            return self._scan(time.monotonic())
        except Exception as exc:  # noqa: BLE001 - the watcher goes on, whatever happened
            log.error("an intake scan failed (%s); the next scan tries again", type(exc).__name__)
            return []

    def _scan(self, now: float) -> list[Admission]:
        for path in self.ready_files(now):
            try:
                self.claim(path)
            except Exception as exc:  # noqa: BLE001 - one file never stops the watcher
                self._claim_failed(path, exc)
        admissions: list[Admission] = []
        for claimed in self._claimed_entries():
            try:
                admission = self.process_claimed(claimed, now)
            except TRANSIENT_ERRORS as exc:  # database down, disk full: retried next scan
                log.error("intake of a claimed file failed (%s); it stays in %s for the next "
                          "scan", type(exc).__name__, PROCESSING_DIR)
                continue
            except Exception as exc:  # noqa: BLE001 - a defect: recorded, never looping
                admission = self._contain(claimed, exc)
            if admission is not None:
                admissions.append(admission)
        self.companions.tend(now, lambda p: self._arrived.get(p, (now, 0.0))[0], self._settled)
        return admissions

    def _contain(self, claimed: Path, exc: Exception) -> Admission | None:
        """An unexpected error on one file: record it as that file's rejection."""
        log.error("intake of a claimed file failed unexpectedly (%s); recording it as rejected",
                  type(exc).__name__)
        try:
            return self._reject(claimed, self.original_name(claimed),
                                RejectionReason.INTERNAL_ERROR, describe_exception(exc))
        except Exception as again:  # noqa: BLE001 - e.g. the database is down too
            log.error("the rejection could not be recorded (%s); the file stays in %s for the "
                      "next scan", type(again).__name__, PROCESSING_DIR)
            return None

    def _claim_failed(self, path: Path, exc: Exception) -> None:
        """A file that cannot be moved out of the folder. Refused for good (no permission, a
        read-only share): recorded once as rejected, left in place. Anything else (a full
        disk, an I/O error): said once in the log and tried again at every scan."""
        why = getattr(exc, "strerror", None) or type(exc).__name__
        watch = self._waiting.get(path)
        key = (path, watch.signature if watch else (0, 0, 0, 0))
        if key in self._unclaimable:
            return
        self._unclaimable.add(key)
        if getattr(exc, "errno", None) not in _FOR_GOOD:
            log.error("a file in intake/ could not be claimed (%s); trying again at every scan",
                      why)
            return
        log.error("a file in intake/ could not be claimed (%s); recorded as rejected and left "
                  "in place", why)
        try:
            self.intake.reject_unread(
                None, SourceDoor.INTAKE, path.name, RejectionReason.UNREADABLE,
                f"the file could not be moved out of the intake folder ({why}); the service "
                "needs write permission on that folder")
        except Exception as again:  # noqa: BLE001
            log.error("the rejection could not be recorded (%s)", type(again).__name__)

    def _note(self, kind: str, path: Path, message: str, *args: object) -> None:
        """Log ``message`` once per entry and kind (never the entry's name)."""
        if (kind, path) not in self._noted:
            self._noted.add((kind, path))
            log.warning(message, *args)

    def run(self, interval_s: float, stop: threading.Event) -> None:
        log.info("watching %s every %.1fs (a whole JPEG, PNG or DICOM file taken once unchanged "
                 "for %.1fs, any other file for %.0fs)", self.folder, interval_s,
                 self.settle_seconds, self.stable_seconds)
        while not stop.is_set():
            self.scan_once()
            stop.wait(interval_s)
