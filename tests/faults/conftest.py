"""Fixtures of the fault suite: a fresh PostgreSQL database, a private Redis, settings for
both, and Celery subprocesses stopped at teardown. See ``tests/faults/__init__.py``."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest

from tests.conftest import _service_missing, make_settings
from tests.faults.services import CeleryProcess, RedisServer, fresh_database, prepare_home
from worker.settings import Settings


@pytest.fixture
def fault_db() -> str:
    """SQLAlchemy URL of a PostgreSQL database made for this test and dropped after it."""
    try:
        cm = fresh_database()
        url = cm.__enter__()
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no PostgreSQL"
        _service_missing("PostgreSQL", exc)
    try:
        yield url
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture
def private_redis(tmp_path) -> RedisServer:
    """A redis-server of this test's own (append-only file under tmp_path), killed after it."""
    if shutil.which("redis-server") is None:
        _service_missing("redis-server", FileNotFoundError("redis-server is not on PATH"))
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def fault_settings(tmp_path, fault_db, private_redis) -> Settings:
    """Production-like settings (PostgreSQL + Redis) under tmp_path, home prepared: schema
    migrated, model store seeded from the shipped ``model_store/``."""
    settings = make_settings(tmp_path / "home", database_url=fault_db,
                             broker_url=private_redis.url(), worker_concurrency=1)
    prepare_home(settings)
    return settings


@pytest.fixture
def celery_processes(tmp_path, fault_settings) -> Callable[..., CeleryProcess]:
    """``start(role="worker", settings=None, **kw)`` starts a Celery subprocess (waits until
    it is ready); all are stopped, killed if need be, at teardown."""
    started: list[CeleryProcess] = []

    def start(role: str = "worker", settings: Settings | None = None, ready_timeout: float = 180,
              **kwargs) -> CeleryProcess:
        proc = CeleryProcess(settings or fault_settings, tmp_path / "logs", role=role, **kwargs)
        started.append(proc)
        return proc.start(ready_timeout)

    yield start
    for proc in reversed(started):
        proc.stop(timeout=10)
