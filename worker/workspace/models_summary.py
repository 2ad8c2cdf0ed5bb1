"""What the models page shows: the stored versions with the current and shadow pointers,
the change log with its reasons, and the retrained versions waiting for approval; and the
approval itself (``worker.store.admin.approve``, the same as ``models approve``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from worker.store import admin
from worker.store.versions import ModelStore


@dataclass
class ModelsSummary:
    versions: list[dict]
    current: str | None
    shadow: str | None
    history: list[dict]
    pending: list[dict]


def models_summary(sessions: sessionmaker[Session], store: ModelStore, history: int = 50) -> ModelsSummary:
    with sessions() as s:
        events = admin.events(s, history)
        pending = admin.pending_approvals(s)
    return ModelsSummary(versions=admin.list_versions(store), current=store.current_version(),
                         shadow=store.shadow_version(), history=events, pending=pending)


def approve(sessions: sessionmaker[Session], store: ModelStore, version: str, user: str, reason: str) -> admin.Change:
    """An admin's approval in the workspace; the change log names them."""
    return admin.approve(store, sessions, version, f"{user} (workspace)", reason)
