"""``melanoma-triage run --roles LIST``: which parts of the process tree this host runs.

Roles: ``intake`` (the folder watcher, in the parent), ``dicom`` and ``http`` (the doors),
``triage`` (the triage worker), ``deliver`` (the deliver worker), ``beat`` (the schedule,
with the maintenance worker that runs what it schedules: reconciler, redelivery sweep,
retention) and ``retrain`` (the retraining worker). Default: all. Several hosts share one
PostgreSQL and Redis (``TRIAGE_STORAGE=database``); exactly one beat schedules at a time,
whichever hosts run the role (``worker.messaging.beat_lease``).
"""

from __future__ import annotations

ROLES = ("intake", "dicom", "http", "triage", "deliver", "beat", "retrain")

#: Supervised child (``worker.process.service``) -> the ``--roles`` role that starts it.
CHILD_ROLE = {"worker": "triage", "maintenance-worker": "beat", "deliver-worker": "deliver",
              "retrain-worker": "retrain", "beat": "beat", "dicom": "dicom", "http": "http"}


def parse_roles(text: str | None) -> frozenset[str]:
    """``"intake,http"`` -> the roles; empty or ``all``: every role. ValueError names the
    unknown ones and the valid ones."""
    if text is None or text.strip() in ("", "all"):
        return frozenset(ROLES)
    roles = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = sorted(roles - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role(s) {', '.join(unknown)}; roles are {','.join(ROLES)} (or all)")
    if not roles:
        raise ValueError(f"no role given; roles are {','.join(ROLES)} (or all)")
    return frozenset(roles)


def children_for(roles: frozenset[str], children: dict[str, list[str]]) -> dict[str, list[str]]:
    """The children of ``run`` that ``roles`` start."""
    return {name: cmd for name, cmd in children.items() if CHILD_ROLE.get(name) in roles}
