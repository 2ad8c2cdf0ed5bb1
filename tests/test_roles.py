"""``run --roles`` (which children a host starts) and exactly one beat across hosts (a
database lease, ``worker.messaging.beat_lease``)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from worker.cli.main import app as cli
from worker.db.models import Lock, utcnow
from worker.messaging.beat_lease import BEAT_LOCK, STANDBY_CHECK_S, LeasedScheduler
from worker.messaging.celery_worker import create_worker_app
from worker.process.roles import ROLES, parse_roles
from worker.process.service import BEAT_SCHEDULER, supervisor_for


def test_parse_roles():
    assert parse_roles("all") == parse_roles(None) == frozenset(ROLES)
    assert parse_roles(" http, DICOM ,beat") == {"http", "dicom", "beat"}
    with pytest.raises(ValueError, match="unknown role.*watcher"):
        parse_roles("http,watcher")


def test_roles_choose_the_children(settings):
    def names(roles: str) -> set[str]:
        return {c.name for c in supervisor_for(settings, parse_roles(roles)).children}

    assert names("all") == {"worker", "maintenance-worker", "deliver-worker", "retrain-worker",
                            "beat", "dicom", "http"}
    assert names("intake,http,dicom,beat") == {"http", "dicom", "beat", "maintenance-worker"}
    assert names("triage,deliver") == {"worker", "deliver-worker"}
    assert names("intake") == set()  # the watcher runs in the parent
    beat = next(c for c in supervisor_for(settings, parse_roles("beat")).children if c.name == "beat")
    assert f"--scheduler={BEAT_SCHEDULER}" in beat.command


def test_run_refuses_an_unknown_role(tmp_path):
    result = CliRunner().invoke(cli, ["run", "--home", str(tmp_path / "h"), "--roles", "triage,printer"])
    assert result.exit_code == 2 and "unknown role(s) printer" in result.output


def _beat(app, home, name):
    return LeasedScheduler(app=app, schedule_filename=str(home / f"{name}-schedule"), lazy=False)


def test_one_beat_schedules_the_other_stands_by_then_takes_over(migrated_settings, sessions):
    app = create_worker_app(migrated_settings)
    sent = []
    app.send_task = lambda name, *a, **kw: sent.append(name)  # no broker: what a tick publishes
    first, second = _beat(app, migrated_settings.home, "a"), _beat(app, migrated_settings.home, "b")
    try:
        first.tick()
        assert first._holding
        assert second.tick() == STANDBY_CHECK_S and not second._holding
        # The holder dies without releasing: once its lease runs out, the other takes over.
        with sessions.begin() as s:
            s.execute(update(Lock).where(Lock.name == BEAT_LOCK)
                      .values(expires_at=utcnow() - timedelta(seconds=1)))
        second.tick()
        assert second._holding
        assert first.tick() == STANDBY_CHECK_S and not first._holding  # lost it: stands by
    finally:
        first.close()
        second.close()
