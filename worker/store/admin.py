"""Changes of the model in service, each recorded in ``model_events`` with who and why.

* ``promote``: make a stored version current.
* ``rollback``: go back to the version that was current before the latest promote or
  rollback (``previous_version`` of the latest event that made the current version
  current), or to an explicit target.
* ``approve``: a person makes current a retrained challenger that passed the gates and
  waits for approval (``settings.promotion_requires_approval``); its retraining run becomes
  ``promoted`` in the same transaction as the event.
* ``record_seed``: the first adoption of the shipped model by a fresh store.

The pointer switch and its event row are one unit: the event is flushed inside a
transaction, the pointer is switched, then the transaction commits; if the commit fails the
pointer is switched back. All changes hold the short ``model-pointer`` lease so that a
manual promotion and a retraining's promotion never interleave.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from schemas import ModelAction, RetrainState
from worker.db.lease import DbLease, LockHeld, current_holder
from worker.db.models import ModelEvent, RetrainRun, utcnow
from worker.errors import ModelNotAvailable, TriageError
from worker.store.versions import ModelStore

#: Taken briefly around every change of the CURRENT pointer (promote, rollback, retrain).
POINTER_LOCK = "model-pointer"
#: Actions that change CURRENT (the ones a rollback undoes).
_POINTER_ACTIONS = (ModelAction.PROMOTE, ModelAction.ROLLBACK, ModelAction.SEED, ModelAction.APPROVE)


class AdminError(TriageError):
    """A store change that cannot be made (no reason, unknown version, nothing to roll back to)."""


@contextmanager
def pointer_lock(sessions: sessionmaker[Session], wait_s: float = 30.0) -> Iterator[DbLease]:
    """Short lease around a CURRENT change: promote/rollback never interleave with a retrain's."""
    lease = DbLease(sessions, POINTER_LOCK, ttl_s=120)
    if not lease.acquire_wait(wait_s):
        raise LockHeld(POINTER_LOCK, current_holder(sessions, POINTER_LOCK))
    try:
        yield lease
    finally:
        lease.release()


def actor_name(by: str | None = None) -> str:
    """``--by`` when given, else the operating-system user at this host."""
    if by and by.strip():
        return by.strip()[:128]
    try:
        user = getpass.getuser()
    except Exception:  # no login name in a container
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:128]


@dataclass(frozen=True)
class Change:
    """One recorded change of the model set-up."""

    action: ModelAction
    version: str
    previous_version: str | None
    actor: str
    reason: str
    event_id: str


def switch(store: ModelStore, sessions: sessionmaker[Session], action: ModelAction, version: str,
           actor: str, reason: str, expect_current: str | None = None, hold_lock: bool = True,
           also: Callable[[Session], None] | None = None) -> Change:
    """Point CURRENT at ``version`` and record the event. ``expect_current``: refuse when the
    pointer moved since the caller looked (a retraining's champion was replaced meanwhile).
    ``also(session)``: more writes that commit with the event, or not at all."""
    if not reason or not reason.strip():
        raise AdminError(f"{action} needs a reason")
    if version not in store.list_versions():
        raise AdminError(f"version {version!r} is not in the store {store.root}")
    store.verify(version)

    def _do() -> Change:
        previous = store.current_version()
        if expect_current is not None and previous != expect_current:
            raise AdminError(f"the current version changed to {previous} meanwhile; not switching")
        if previous == version:
            raise AdminError(f"{version} is already the current version")
        with sessions.begin() as s:
            event = ModelEvent(action=ModelAction(action).value, version=version, previous_version=previous,
                               actor=actor, reason=reason.strip())
            s.add(event)
            s.flush()
            if also is not None:
                also(s)
            store.set_current(version)
            event_id = event.id
        # a failed commit raises above, after set_current: put the pointer back
        return Change(ModelAction(action), version, previous, actor, reason.strip(), event_id)

    def _guarded() -> Change:
        previous = store.current_version()
        try:
            return _do()
        except AdminError:
            raise
        except Exception:
            if store.current_version() != previous and previous is not None:
                store.set_current(previous)
            raise

    if not hold_lock:
        return _guarded()
    with pointer_lock(sessions):
        return _guarded()


def promote(store: ModelStore, sessions: sessionmaker[Session], version: str, actor: str,
            reason: str) -> Change:
    """Make ``version`` current (by hand; a retraining calls ``switch`` under its own lease)."""
    return switch(store, sessions, ModelAction.PROMOTE, version, actor, reason)


def pending_approvals(session: Session) -> list[dict]:
    """Retrained challengers that passed the gates and wait for ``approve``, newest first."""
    rows = session.scalars(select(RetrainRun).where(RetrainRun.state == RetrainState.PENDING_APPROVAL.value)
                           .order_by(RetrainRun.started_at.desc())).all()
    return [{"run_id": r.id, "version": r.challenger_version, "champion": r.champion_version,
             "finished_at": r.finished_at.isoformat() if r.finished_at else None,
             "reasons": (r.decision or {}).get("reasons", [])} for r in rows]


def approve(store: ModelStore, sessions: sessionmaker[Session], version: str, actor: str,
            reason: str) -> Change:
    """Make a challenger waiting for approval current, as a person's decision. Refused when it
    waits for nothing, or when the version it was gated against is no longer current (the
    comparison no longer holds: retrain again). Other challengers still waiting become
    ``kept``: they were gated against the champion this one replaces."""
    with sessions() as s:
        run = s.scalars(select(RetrainRun).where(RetrainRun.state == RetrainState.PENDING_APPROVAL.value,
                                                 RetrainRun.challenger_version == version)
                        .order_by(RetrainRun.started_at.desc()).limit(1)).one_or_none()
        waiting = [p["version"] for p in pending_approvals(s)]
    if run is None:
        raise AdminError(f"{version} is not waiting for approval (waiting: {', '.join(waiting) or 'none'})")
    if store.current_version() != run.champion_version:
        raise AdminError(f"{version} passed the gates against {run.champion_version}, but "
                         f"{store.current_version()} is current now; run the retraining again")
    approval = {"approved_by": actor, "approval_reason": reason.strip(), "approved_at": utcnow().isoformat()}

    def record(s: Session) -> None:
        s.execute(update(RetrainRun).where(RetrainRun.id == run.id)
                  .values(state=RetrainState.PROMOTED.value, decision={**(run.decision or {}), **approval}))
        for other in s.scalars(select(RetrainRun).where(
                RetrainRun.state == RetrainState.PENDING_APPROVAL.value, RetrainRun.id != run.id)):
            other.state = RetrainState.KEPT.value
            other.decision = {**(other.decision or {}), "superseded_by": version}

    return switch(store, sessions, ModelAction.APPROVE, version, actor, reason,
                  expect_current=run.champion_version, also=record)


def rollback_target(store: ModelStore, session: Session) -> str:
    """The version that was current before the latest change to the current version."""
    current = store.current_version()
    event = session.execute(
        select(ModelEvent).where(ModelEvent.action.in_([a.value for a in _POINTER_ACTIONS]))
        .order_by(ModelEvent.created_at.desc()).limit(1)
    ).scalar_one_or_none()
    if event is None or event.version != current or not event.previous_version:
        raise AdminError("no earlier version recorded to roll back to; name one with --to")
    return event.previous_version


def rollback(store: ModelStore, sessions: sessionmaker[Session], actor: str, reason: str,
             target: str | None = None) -> Change:
    """Back to ``target``, or to the version current before the latest change."""
    with sessions() as s:
        target = target or rollback_target(store, s)
    return switch(store, sessions, ModelAction.ROLLBACK, target, actor, reason)


def set_shadow(store: ModelStore, sessions: sessionmaker[Session], version: str | None,
               actor: str, reason: str) -> Change:
    """Run ``version`` in shadow on live traffic (predictions recorded, never reported), or
    stop the shadow run with None. Recorded like every other change of the model set-up."""
    if not reason or not reason.strip():
        raise AdminError("a shadow change needs a reason")
    previous = store.shadow_version()
    if version is not None:
        if version not in store.list_versions():
            raise AdminError(f"version {version!r} is not in the store {store.root}")
        if version == store.current_version():
            raise AdminError(f"{version} is the current version; shadow a candidate instead")
    elif previous is None:
        raise AdminError("no version runs in shadow")
    action = ModelAction.SHADOW_ON if version else ModelAction.SHADOW_OFF
    with pointer_lock(sessions), sessions.begin() as s:
        event = ModelEvent(action=action.value, version=version or previous,
                           previous_version=previous, actor=actor, reason=reason.strip())
        s.add(event)
        s.flush()
        store.set_shadow(version)
        event_id = event.id
    return Change(action, event.version, previous, actor, reason.strip(), event_id)


def record_seed(store: ModelStore, sessions: sessionmaker[Session]) -> bool:
    """Record the shipped model's adoption once (a cheap count when already recorded)."""
    current = store.current_version()
    if current is None:
        return False
    with sessions.begin() as s:
        if s.scalar(select(func.count()).select_from(ModelEvent)):
            return False
        s.add(ModelEvent(action=ModelAction.SEED.value, version=current, previous_version=None,
                         actor=actor_name("melanoma-triage prepare"),
                         reason="first current version of this store (seeded from the shipped models, or set up before the database recorded changes)"))
    return True


def events(session: Session, limit: int = 50) -> list[dict]:
    """The latest ``limit`` changes, newest first, as plain dicts (``models log``)."""
    rows = session.execute(select(ModelEvent).order_by(ModelEvent.created_at.desc()).limit(limit))
    return [{"at": e.created_at.isoformat(), "action": e.action, "version": e.version,
             "previous_version": e.previous_version, "actor": e.actor, "reason": e.reason}
            for (e,) in rows]


def _headline(metrics: dict) -> dict:
    mel = (metrics.get("test") or {}).get("melanoma") or {}
    auc = (mel.get("auc") or {}).get("value") if isinstance(mel.get("auc"), dict) else mel.get("auc")
    sens = mel.get("sensitivity")
    sens = sens.get("value") if isinstance(sens, dict) else sens
    return {"melanoma_auc": auc, "melanoma_sensitivity": sens}


def list_versions(store: ModelStore) -> list[dict]:
    """Every readable stored version with its pointers and headline metrics (``models list``)."""
    current = store.current_version()
    out = []
    for version in store.list_versions():
        try:
            meta = store.metadata(version)
        except ModelNotAvailable:
            continue
        out.append({"version": version, "current": version == current,
                    "shadow": version == store.shadow_version(),
                    "created_at": meta.created_at.isoformat(), "parent_version": meta.parent_version,
                    "sha256": meta.sha256, "input_size": meta.input_size,
                    **_headline(meta.metrics)})
    return out


def show(store: ModelStore, version: str) -> dict:
    """model.json plus the list of files and the model card of one version."""
    meta = store.metadata(version)
    folder = store.version_dir(version)
    card = folder / "model_card.md"
    return {
        "current": store.current_version() == version,
        "metadata": json.loads(meta.model_dump_json()),
        "files": sorted(p.name for p in folder.iterdir()),
        "model_card": card.read_text() if card.is_file() else None,
    }
