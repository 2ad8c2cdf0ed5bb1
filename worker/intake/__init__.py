"""Intake: the doors by which images enter (folder watcher, client API) and the archive."""
