"""The HTTP access log never shows a workspace query string: the worklist's search (``?q=``)
carries patient ids and accession numbers. ``/ui/...`` requests are logged by path only."""

from __future__ import annotations

import logging

ACCESS_LOGGER = "uvicorn.access"


class WorkspaceQueryRedaction(logging.Filter):
    """Drops the query of ``/ui`` paths from uvicorn's access records
    (args: client, method, path with query, HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path = args[2]
            if path.startswith("/ui") and "?" in path:
                record.args = (*args[:2], path.split("?", 1)[0] + "?[query not logged]", *args[3:])
        return True


def redact_workspace_queries(logger_name: str = ACCESS_LOGGER) -> None:
    """Install the filter once on the access logger."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, WorkspaceQueryRedaction) for f in logger.filters):
        logger.addFilter(WorkspaceQueryRedaction())
