"""TRIAGE_RETENTION_DAYS: old archived inputs of ended, delivered jobs are purged and recorded;
undelivered, recent and locked-evaluation images are kept. On both storages (the database one
against the real PostgreSQL)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from schemas import DeliveryKind, SourceDoor
from tests.conftest import make_settings
from tests.imagegen import jpeg_bytes, lesion_rgb, truncated_dicom_bytes
from worker.classify.export import ensure_export
from worker.db import deliveries
from worker.db.migrate import upgrade
from worker.db.models import ArchivePurge, Image, Job
from worker.jobs import pipeline
from worker.jobs.runtime import build_runtime
from worker.retention.purge import purge_expired
from worker.retrain.truth import add_label
from worker.storage.blobs import location_exists
from worker.store.versions import ModelStore


@pytest.fixture(params=["filesystem", "database"])
def home(request, tmp_path, tiny_model_dir):
    overrides = dict(retention_days=30, retrain_eval_fraction=0.99)  # every confirmed case: eval
    if request.param == "database":
        overrides.update(storage="database", database_url=request.getfixturevalue("postgres_url"))
    settings = make_settings(tmp_path / "home", **overrides)
    settings.ensure_folders()
    upgrade(settings.database_url)
    store = ModelStore(settings.model_store_dir, export=ensure_export)
    store.set_current(store.add_version(tiny_model_dir))
    rt = build_runtime(settings, send=lambda job_id: None)
    yield settings, rt
    rt.close()


def _job(rt, seed: int, days_old: int, data: bytes | None = None, name: str = "x.jpg") -> str:
    job_id = rt.intake.admit_bytes(data or jpeg_bytes(lesion_rgb(seed=seed)), SourceDoor.API, None, name).job_id
    pipeline.process_job(rt, job_id)
    with rt.sessions.begin() as s:
        image_id = s.get(Job, job_id).image_id
        s.execute(update(Image).where(Image.id == image_id).values(
            received_at=datetime.now(timezone.utc) - timedelta(days=days_old)))
    return job_id


def _location(rt, job_id):
    with rt.sessions() as s:
        return s.get(Job, job_id).image.archive_path


def test_retention_purges_only_what_it_may(home):
    settings, rt = home
    old_done = _job(rt, 1, days_old=40)
    undelivered = _job(rt, 2, days_old=40)
    recent = _job(rt, 3, days_old=5)
    confirmed = _job(rt, 4, days_old=40)
    old_rejected = _job(rt, 0, days_old=40, data=truncated_dicom_bytes(), name="cut.dcm")
    with rt.sessions.begin() as s:
        deliveries.ensure(s, undelivered, DeliveryKind.DICOM, "PACS@127.0.0.1:1")  # pending
        add_label(s, confirmed, "nevus", "histopathology", "dr-a")
    locations = {job: _location(rt, job) for job in (old_done, undelivered, recent, confirmed, old_rejected)}
    assert all(rt.storage.exists(loc) for loc in locations.values())
    assert rt.storage.has_rejection(old_rejected)

    result = purge_expired(settings, rt.sessions)
    assert (result.purged, result.kept_for_evaluation) == (2, 1)
    bind = rt.sessions.kw["bind"]
    for job in (old_done, old_rejected):
        assert _location(rt, job) is None and not location_exists(locations[job], bind)
    for job in (undelivered, recent, confirmed):
        assert _location(rt, job) == locations[job] and location_exists(locations[job], bind)
    with rt.sessions() as s:
        purges = s.execute(select(ArchivePurge)).scalars().all()
        assert sorted(p.location for p in purges) == sorted([locations[old_done], locations[old_rejected]])
        assert all(p.retention_days == 30 and p.sha256 for p in purges)
    assert rt.storage.has_rejection(old_rejected)  # the sidecar stays; the copy of the input goes
    if settings.storage == "filesystem":
        assert [p.name for p in settings.rejected_dir.iterdir()] == [f"{old_rejected}__cut.dcm.json"]
    assert purge_expired(settings, rt.sessions).purged == 0  # nothing twice

    with rt.sessions.begin() as s:  # once delivered, it may go
        for row in deliveries.for_job(s, undelivered):
            row.state = "sent"
    assert purge_expired(settings, rt.sessions).purged == 1


def test_no_retention_setting_keeps_everything(settings, store_with_tiny_model):
    upgrade(settings.database_url)
    rt = build_runtime(settings, send=lambda job_id: None)
    try:
        job_id = _job(rt, 1, days_old=4000)
        assert purge_expired(settings, rt.sessions).purged == 0
        assert rt.storage.exists(_location(rt, job_id))
    finally:
        rt.close()
