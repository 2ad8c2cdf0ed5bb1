"""Shared fixtures. Unit tests need no services; integration tests use the real PostgreSQL
and Redis on this machine (CI has both) and FAIL when they are unreachable, unless
TRIAGE_TEST_SERVICES=0 says this machine has none."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from worker.classify.export import ensure_export
from worker.settings import Settings

POSTGRES_ADMIN_URL = os.environ.get(
    "TRIAGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TRIAGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def _service_missing(what: str, exc: Exception) -> None:
    if os.environ.get("TRIAGE_TEST_SERVICES") == "0":
        pytest.skip(f"{what} not available and TRIAGE_TEST_SERVICES=0")
    pytest.fail(f"{what} is required for integration tests and is unreachable: {exc}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tests.modelgen import write_tiny_version

    return write_tiny_version(tmp_path_factory.mktemp("tiny-model") / "tiny-1")


def make_settings(home: Path, **overrides) -> Settings:
    values = dict(home=home, poll_interval_s=0.1, stable_scans=2, reconcile_interval_s=2.0,
                  stable_seconds=0.3, incomplete_grace_seconds=3.0)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = make_settings(tmp_path / "home")
    s.ensure_folders()
    return s


@pytest.fixture
def store_with_tiny_model(settings, tiny_model_dir):
    from worker.store.versions import ModelStore

    store = ModelStore(settings.model_store_dir, export=ensure_export)
    store.set_current(store.add_version(tiny_model_dir))
    return store


@pytest.fixture
def migrated_settings(settings) -> Settings:
    from worker.db.migrate import upgrade

    upgrade(settings.database_url)
    return settings


@pytest.fixture
def sessions(migrated_settings):
    from worker.db.engine import make_engine, make_session_factory

    engine = make_engine(migrated_settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database per test, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"triage_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        _service_missing("PostgreSQL", exc)
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def redis_url():
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as exc:
        _service_missing("Redis", exc)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()
