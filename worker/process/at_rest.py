"""Patient data at rest: nothing the service writes is readable by other users.

Every process the service starts sets ``umask 027`` before its first file (the entry
points call :func:`apply_umask`; children inherit it): folders 0750, files 0640 at most,
SQLite's journal files included. ``TRIAGE_DATA_GROUP`` names a group that may read the
reports: the reports folder (and the folders above it, to reach it) get that group, read
and search for it, and the set-group-id bit so new reports inherit the group.

``melanoma-triage init`` tightens a home made before this (:func:`tighten_home`): world
access comes off everything under it, and it says what it changed.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

from worker.settings import Settings

#: Group may read, others nothing.
UMASK = 0o027


def apply_umask() -> int:
    """Set this process's umask to at least 027 (a tighter one stays); returns the old one."""
    old = os.umask(UMASK)
    if old | UMASK != UMASK:  # the caller had something tighter: keep it, tightened to 027
        os.umask(old | UMASK)
    return old


def _data_folders(settings: Settings) -> list[Path]:
    """The data folders, then the home (the rest of it: the database, the broker, logs)."""
    return [settings.intake_dir, settings.reports_dir, settings.rejected_dir,
            settings.archive_dir, settings.model_store_dir, settings.home]


def _tighten(path: Path) -> bool:
    """World access off ``path``; True when it had some."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return False
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        os.chmod(path, mode & ~0o007)  # the owner's and the group's rights stay
        return True
    return False


def tighten_home(settings: Settings) -> list[str]:
    """Take world access off every file and folder of the home (and of the data folders
    configured outside it). One line per folder that changed, with a count: file names
    can hold patient identifiers, so none is printed."""
    changes: list[str] = []
    walked: set[Path] = set()
    for top in _data_folders(settings):
        if not top.exists() or top in walked:
            continue
        walked.add(top)
        count = int(_tighten(top))
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if Path(root, d) not in walked]  # each folder once
            count += sum(_tighten(Path(root) / name) for name in (*dirs, *files))
        if count:
            changes.append(f"{top}: world access removed from {count} file(s) and folder(s)")
    return changes


def apply_data_group(settings: Settings) -> list[str]:
    """Let ``settings.data_group`` read the reports: group, g+rx and set-gid on the reports
    folder, g+x on the folders above it up to the home, g+r on the reports in it."""
    if not settings.data_group:
        return []
    gid = grp.getgrnam(settings.data_group).gr_gid  # KeyError: no such group
    changes: list[str] = []
    reports = settings.reports_dir
    chain = [reports]
    parent = reports.parent
    while settings.home in (parent, *parent.parents) and parent != parent.parent:
        chain.append(parent)
        if parent == settings.home:
            break
        parent = parent.parent
    for folder in chain:
        st = folder.stat()
        if st.st_gid != gid:
            os.chown(folder, -1, gid)
            changes.append(f"{folder}: group {settings.data_group}")
        extra = (stat.S_IRGRP | stat.S_IXGRP | stat.S_ISGID) if folder == reports else stat.S_IXGRP
        mode = stat.S_IMODE(folder.stat().st_mode)
        if mode | extra != mode:
            os.chmod(folder, mode | extra)
            changes.append(f"{folder}: {mode:04o} -> {mode | extra:04o}")
    regrouped = 0
    for report in reports.rglob("*"):
        if report.is_file() and report.stat().st_gid != gid:
            os.chown(report, -1, gid)
            os.chmod(report, stat.S_IMODE(report.stat().st_mode) | stat.S_IRGRP)
            regrouped += 1
    if regrouped:
        changes.append(f"{reports}: {regrouped} report file(s) given group {settings.data_group}")
    return changes
