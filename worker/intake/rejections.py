"""The rejected/ folder: the rejected file itself plus a JSON sidecar that says why."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from worker.durable import write_atomic
from worker.intake.names import safe_filename


def write_rejection(
    rejected_dir: Path,
    job_id: str,
    original_name: str | None,
    code: str,
    reason: str,
    data: bytes | None = None,
    source: Path | None = None,
    sha256: str | None = None,
    state: str = "rejected",
) -> Path:
    """Put the file (bytes, or moved from ``source``) into rejected/ with ``<name>.json`` beside it."""
    rejected_dir.mkdir(parents=True, exist_ok=True)
    target = rejected_dir / f"{job_id}__{safe_filename(original_name, fallback='unnamed')}"
    if source is not None:
        os.replace(source, target)
    elif data is not None:
        write_atomic(target, data)
    sidecar = {
        "job_id": job_id,
        "state": state,
        "code": code,
        "reason": reason,
        "original_name": original_name,
        "sha256": sha256,
        "file": target.name if (source is not None or data is not None) else None,
        "rejected_at": datetime.now(timezone.utc).isoformat(),
    }
    sidecar_path = target.with_name(target.name + ".json")
    write_atomic(sidecar_path, json.dumps(sidecar, indent=2).encode())
    return sidecar_path
