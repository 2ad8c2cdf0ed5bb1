"""Issue 18, item 4: a writer that pauses longer than the settle time and then appends.

``head -c HALF img > intake/x.jpg; sleep 40; tail -c +HALF+1 img >> intake/x.jpg`` gave two
rejected jobs (``truncated`` and ``not_an_image``): the half was claimed (renamed away) once
it had been still for ``stable_seconds``, and the append, which opens the file by its name
again, made a new file of the tail. One file is one job, however its writer pauses: a file
that ends early now stays where its writer put it until the incomplete grace is over, so the
append lands in it and the whole file is judged. Scaled down here: settle 1 s, a 2.5 s pause.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import select

from schemas import JobState
from tests.imagegen import jpeg_bytes, lesion_rgb
from worker.db.models import Image, Job
from worker.intake.admission import Intake
from worker.intake.watcher import IntakeWatcher


def _scan_for(watcher: IntakeWatcher, seconds: float) -> list:
    admissions, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        admissions += watcher.scan_once()
        time.sleep(0.1)
    return admissions


def test_a_writer_that_pauses_then_appends_makes_one_whole_job(migrated_settings, sessions):
    sent: list[str] = []
    intake = Intake(migrated_settings, sessions, sent.append)
    watcher = IntakeWatcher(intake, migrated_settings.intake_dir, stable_scans=2,
                            stable_seconds=1.0, incomplete_grace_seconds=6.0)
    image = jpeg_bytes(lesion_rgb(seed=18))
    half = len(image) // 2
    path: Path = migrated_settings.intake_dir / "x.jpg"
    path.write_bytes(image[:half])  # head -c HALF img > intake/x.jpg
    paused = _scan_for(watcher, 2.5)  # sleep: longer than the settle (stable_seconds)
    assert paused == [] and path.read_bytes() == image[:half]  # still where its writer put it
    with open(path, "ab") as f:  # tail -c +HALF+1 img >> intake/x.jpg (opened by name again)
        f.write(image[half:])
    admissions = _scan_for(watcher, 3.0)
    assert [a.state for a in admissions] == [JobState.RECEIVED]
    with sessions() as s:
        jobs = s.execute(select(Job)).scalars().all()
        assert [(j.state, j.error_code) for j in jobs] == [(JobState.QUEUED.value, None)]
        archived = s.execute(select(Image.archive_path)).scalar_one()
    assert Path(archived).read_bytes() == image  # judged whole
    assert sent == [jobs[0].id] and not path.exists()


def test_a_file_that_stays_cut_is_judged_as_it_is_after_the_grace(migrated_settings, sessions):
    """The other side: a writer that never comes back. The cut file waits the grace (not
    the short settle of a whole file), then is taken and rejected as truncated."""
    intake = Intake(migrated_settings, sessions, lambda job_id: None)
    watcher = IntakeWatcher(intake, migrated_settings.intake_dir, stable_scans=2,
                            stable_seconds=0.5, incomplete_grace_seconds=2.0)
    image = jpeg_bytes(lesion_rgb(seed=19))
    path = migrated_settings.intake_dir / "cut.jpg"
    path.write_bytes(image[: len(image) // 2])
    started = time.monotonic()
    assert _scan_for(watcher, 1.5) == [] and path.exists()
    admissions = []
    while not admissions and time.monotonic() - started < 10:
        admissions = watcher.scan_once()
        time.sleep(0.1)
    assert time.monotonic() - started >= 2.0
    assert len(admissions) == 1 and not path.exists()
