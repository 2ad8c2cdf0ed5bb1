"""A home folder made ready to use: folders, database schema, model store seed.

Every command that writes calls :func:`prepare` first; it is idempotent. It lives apart
from the process supervisor (``worker.process.service``) so that retraining and the CLI can make
a home ready without importing the supervisor.
"""

from __future__ import annotations

from worker.db.engine import make_engine, make_session_factory
from worker.db.migrate import upgrade
from worker.settings import Settings
from worker.storage import model_sync
from worker.store.versions import ModelStore


def prepare(settings: Settings) -> None:
    """Folders, schema and model store: everything a fresh home folder needs."""
    settings.ensure_folders()
    upgrade(settings.database_url)
    store = ModelStore(settings.model_store_dir)
    if settings.storage == "database":  # the shared store first: a seed only where none is
        engine = make_engine(settings.database_url)
        try:
            model_sync.pull(store.root, engine)
        finally:
            engine.dispose()
    store.seed_from()
    _record_seed(settings, store)
    if settings.storage == "database":
        engine = make_engine(settings.database_url)
        try:
            model_sync.sync_home(settings, engine)
        finally:
            engine.dispose()


def _record_seed(settings: Settings, store: ModelStore) -> None:
    """A ``seed`` model event the first time a store has a current version (one count query after)."""
    from worker.store.admin import record_seed

    engine = make_engine(settings.database_url)
    try:
        record_seed(store, make_session_factory(engine))
    finally:
        engine.dispose()
