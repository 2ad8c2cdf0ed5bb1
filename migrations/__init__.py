"""Alembic migrations for the melanoma-triage database (run: melanoma-triage db upgrade)."""
