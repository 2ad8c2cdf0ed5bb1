"""The same schema on SQLite and PostgreSQL, and it matches the ORM tables."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from worker.db.migrate import alembic_config, current_revision, upgrade
from worker.db.models import Base


def _check(url: str) -> None:
    upgrade(url)
    assert current_revision(url) is not None
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert diff == [], f"migrations and models disagree: {diff}"
    assert set(Base.metadata.tables) <= tables
    command.downgrade(alembic_config(url), "base")
    upgrade(url)  # and back up again


def test_migrations_on_sqlite(tmp_path):
    _check(f"sqlite:///{tmp_path / 'db.sqlite'}")


@pytest.mark.integration
def test_migrations_on_postgresql(postgres_url):
    _check(postgres_url)
