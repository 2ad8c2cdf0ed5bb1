"""The process tree of ``melanoma-triage run``: home preparation, the supervised children,
health probes and container healthchecks, and read-only readiness of a home.
"""
