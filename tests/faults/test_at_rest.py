"""Patient data at rest (issue 18): before, the SQLite database was 0644 and the archive
and reports folders 0755 (no umask), readable by every user of the machine."""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.services import REPO_ROOT
from tests.imagegen import jpeg_bytes, lesion_rgb

#: An ordinary group that exists on Debian (``users``, gid 100).
READER_GROUP = "users"


def world_accessible(home: Path) -> list[str]:
    """Paths under ``home`` (itself included) that others may read, write or enter."""
    found = []
    for root, dirs, files in os.walk(home):
        for path in (Path(root), *(Path(root) / f for f in files)):
            st = path.lstat()
            if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o007:
                found.append(f"{path.relative_to(home.parent)} {stat.S_IMODE(st.st_mode):04o}")
    return sorted(set(found))


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command as an operator runs it, from a shell whose umask is the usual 022."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "worker", *args], env=full_env, capture_output=True,
                          text=True, timeout=300, preexec_fn=lambda: os.umask(0o022))


def test_a_new_home_and_what_the_service_writes_have_no_world_access(tmp_path):
    home = tmp_path / "home"
    out = _cli("init", "--home", str(home))
    assert out.returncode == 0, out.stderr
    image = tmp_path / "lesion.jpg"
    image.write_bytes(jpeg_bytes(lesion_rgb((300, 400), seed=1)))
    os.chmod(image, 0o644)
    assert _cli("enqueue", str(image), "--home", str(home)).returncode == 0  # archive, database
    assert (home / "triage.db").is_file() and any((home / "archive").rglob("*"))
    assert world_accessible(home) == []
    assert stat.S_IMODE((home / "triage.db").stat().st_mode) == 0o640
    assert stat.S_IMODE((home / "reports").stat().st_mode) == 0o750


def test_init_tightens_an_existing_home_and_says_what_changed(tmp_path):
    home = tmp_path / "home"
    assert _cli("init", "--home", str(home)).returncode == 0
    for path in (home, home / "archive", home / "reports"):
        os.chmod(path, 0o755)
    os.chmod(home / "triage.db", 0o644)
    (home / "reports" / "old_report.pdf").write_bytes(b"%PDF-1.4")
    os.chmod(home / "reports" / "old_report.pdf", 0o644)
    assert world_accessible(home)
    out = _cli("init", "--home", str(home), "--json")
    assert out.returncode == 0, out.stderr
    changed = json.loads(out.stdout)["permissions_changed"]
    assert any("reports" in line for line in changed) and any("archive" in line for line in changed)
    assert all("old_report" not in line for line in changed)  # counts, never file names
    assert world_accessible(home) == []
    again = _cli("init", "--home", str(home))
    assert "tightened" not in again.stdout  # nothing left to change


@pytest.mark.skipif(os.geteuid() != 0, reason="chgrp to another group needs root")
def test_a_data_group_may_read_the_reports(tmp_path):
    gid = grp.getgrnam(READER_GROUP).gr_gid
    home = tmp_path / "home"
    out = _cli("init", "--home", str(home), env={"TRIAGE_DATA_GROUP": READER_GROUP})
    assert out.returncode == 0, out.stderr
    reports = home / "reports"
    st = reports.stat()
    assert st.st_gid == gid and st.st_mode & stat.S_ISGID and st.st_mode & stat.S_IRGRP
    assert (home.stat().st_gid == gid) and home.stat().st_mode & stat.S_IXGRP
    assert world_accessible(home) == []
