"""Versions derived from a stored one: the same weights and temperature, new thresholds.

A threshold policy (leave-one-source-out, ``worker.training.loso_policy``; a site's own
cases, ``worker.calibration``) changes the operating point without training. The result is
still a model store version of its own, so that the same gates, ``models promote`` and
``models rollback`` apply and the predictions name which threshold set made them.

The new folder holds the parent's model file and training artefacts (split.csv,
calibration.json, metrics.json, data quality, figures: ``evaluate``, retraining and the
model card read them), a ``model.json`` with the new thresholds, ``parent_version`` set and
the provenance recorded under ``metrics[<kind>]``, plus the caller's extra files. The
parent's shift-monitor ``reference.json`` is not copied: the monitor falls back to the
parent's (same weights) and replays it with the new thresholds.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from schemas import ModelMetadata, TriageThresholds
from worker.store.versions import METADATA_FILE, ModelStore

#: Files of the parent that describe the parent itself, not the derived version.
NOT_INHERITED = frozenset({METADATA_FILE, "model_card.md", "reference.json", "checkpoints"})


def derived_name(base: ModelMetadata, kind: str, thresholds: TriageThresholds, evidence: str,
                 now: datetime) -> str:
    """``<time>-<weights sha256[:8]>-<kind>-<tag>``: the tag names the thresholds and the
    evidence, so the same derivation twice is the same (immutable) version."""
    tag = hashlib.sha256(f"{thresholds.model_dump_json()}{evidence}".encode()).hexdigest()[:6]
    return f"{now:%Y%m%d-%H%M}-{base.sha256[:8]}-{kind}-{tag}"


def derive_version(store: ModelStore, base_version: str, thresholds: TriageThresholds, *, kind: str,
                   provenance: dict, command: str, notes: str, label: str | None = None,
                   extra_files: dict[str, str] | None = None,
                   finish: Callable[[Path], None] | None = None, staging_root: Path | None = None,
                   now: datetime | None = None) -> str:
    """Add a version with ``base_version``'s weights and ``thresholds`` to ``store`` (not
    current); returns its name. ``provenance`` (JSON-able) lands in
    ``model.json`` ``metrics[kind]``; ``label`` (default ``kind``) goes into the version name;
    ``extra_files`` (name -> text) are written beside it;
    ``finish(folder)`` runs last on the complete folder before it enters the store (a model
    card rendered from its artefacts: stored versions are immutable)."""
    store.verify(base_version)
    base = store.metadata(base_version)
    now = now or datetime.now(UTC)
    version = derived_name(base, label or kind, thresholds, str(sorted(provenance.items())), now)
    base_dir = store.version_dir(base_version)
    if staging_root is not None:
        staging_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=staging_root, prefix=f"{version}."))
    try:
        for item in base_dir.iterdir():
            if item.name in NOT_INHERITED or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, staging / item.name)
            else:
                shutil.copy2(item, staging / item.name)
        meta = base.model_copy(update={
            "version": version, "created_at": now, "parent_version": base.version,
            "thresholds": thresholds, "training_command": command, "notes": notes,
            "metrics": base.metrics | {kind: provenance},
        })
        (staging / METADATA_FILE).write_text(meta.model_dump_json(indent=1))
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        if finish is not None:
            finish(staging)
        return store.add_version(staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
