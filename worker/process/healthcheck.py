"""Container healthchecks (docker-compose ``healthcheck:``): exit 0 when healthy, 1 when not.

    python -m worker.process.healthcheck beat      # the schedule file was written recently
    python -m worker.process.healthcheck watcher   # intake folder writable, database reachable
    python -m worker.process.healthcheck http URL  # an HTTP endpoint answers 2xx (Flower, the API)
    python -m worker.process.healthcheck tcp PORT  # something accepts connections (the DICOM receiver)

Celery workers are checked with ``celery inspect ping -d <name>@$HOSTNAME`` (a reply
through the broker from the worker's own main process). Settings come from the TRIAGE_*
environment, as in the service the check runs beside. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import socket
import sys
import time
import urllib.request
import uuid

from sqlalchemy import create_engine, text

from worker.settings import Settings

#: Beat syncs its schedule file every 3 minutes while it runs.
BEAT_MAX_AGE_S = 600


def beat_alive(settings: Settings, max_age_s: float = BEAT_MAX_AGE_S) -> bool:
    files = list(settings.home.glob("celerybeat-schedule*"))
    return bool(files) and time.time() - max(f.stat().st_mtime for f in files) < max_age_s


def database_reachable(settings: Settings) -> bool:
    args = {"connect_timeout": 5} if settings.database_url.startswith("postgresql") else {}
    engine = create_engine(settings.database_url, connect_args=args, hide_parameters=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means "not healthy"
        return False
    finally:
        engine.dispose()


def folder_writable(folder) -> bool:
    probe = folder / f".healthcheck-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def http_ok(url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - local URL
            return 200 <= response.status < 300
    except OSError:
        return False


def tcp_accepts(port: int, host: str = "127.0.0.1", timeout_s: float = 5.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    check, args = argv[0], argv[1:]
    if check == "http" and args:
        return 0 if http_ok(args[0]) else 1
    if check == "tcp" and args:
        return 0 if tcp_accepts(int(args[0])) else 1
    settings = Settings()
    if check == "beat":
        return 0 if beat_alive(settings) else 1
    if check == "watcher":
        return 0 if folder_writable(settings.intake_dir) and database_reachable(settings) else 1
    print(f"unknown check {check!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
