"""One job start to finish (the pipeline), the per-process resources a worker needs, and
the leases that make a job exactly-once: the heartbeat that renews them and the
reconciler that re-sends a job whose lease expired.
"""
