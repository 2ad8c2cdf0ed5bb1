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
    if settings.storage == "database" and _shared_store_fetched(settings, store):
        return  # another host seeded the shared store; this folder is its cache
    store.seed_from()
    _record_seed(settings, store)
    if settings.storage == "database":  # the first host: its seeded store becomes the shared one
        engine = make_engine(settings.database_url)
        try:
            model_sync.publish(store.root, engine)
        finally:
            engine.dispose()


def _shared_store_fetched(settings: Settings, store: ModelStore) -> bool:
    """Database storage: fetch the shared model store into this host's cache; False when
    the database holds none yet (then this host seeds it)."""
    engine = make_engine(settings.database_url)
    try:
        if not model_sync.has_shared_store(engine):
            return False
        model_sync.pull(store.root, engine)
        return True
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
