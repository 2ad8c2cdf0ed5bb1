"""Persistence: SQLAlchemy 2 typed tables, engine/session factory and job bookkeeping."""

# Tables of the network doors and of result delivery live in their own modules on the same
# Base: import them here so Base.metadata (migrations, schema checks) always holds every table.
from worker.db import deliveries, integration, role_health, workspace  # noqa: F401,E402
