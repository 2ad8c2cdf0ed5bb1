"""Persistence: SQLAlchemy 2 typed tables, engine/session factory and job bookkeeping."""
