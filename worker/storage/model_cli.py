"""Every command on ``TRIAGE_STORAGE=database`` sees the shared model store: the local cache is
fetched before the command and what the command changed (a version added, promoted, rolled
back, calibrated) is published after it (``worker.storage.model_sync``)."""

from __future__ import annotations

import logging

from worker.db.engine import make_engine
from worker.settings import Settings
from worker.storage import model_sync

log = logging.getLogger(__name__)


def _settings() -> Settings | None:
    try:
        settings = Settings()
    except Exception:  # invalid settings: the command itself says so
        return None
    return settings if settings.storage == "database" else None


def before_command() -> bool:
    """Fetch the shared store; False (nothing to do after) on filesystem storage."""
    settings = _settings()
    if settings is None:
        return False
    _sync(settings, model_sync.pull)
    return True


def after_command() -> None:
    settings = _settings()
    if settings is not None:
        _sync(settings, model_sync.publish)


def _sync(settings: Settings, step) -> None:
    if not settings.model_store_dir.is_dir():
        return
    engine = make_engine(settings.database_url)
    try:
        step(settings.model_store_dir, engine)
    except Exception as exc:  # a database not migrated yet (before init): nothing shared yet
        log.debug("model store not synchronised (%s)", type(exc).__name__)
    finally:
        engine.dispose()
