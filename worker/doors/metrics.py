"""``GET /metrics``: Prometheus text read from the jobs table at scrape time.

The jobs table is the source of truth for every process (watcher, receiver, workers), so
the numbers are the same whichever API replica is scraped; nothing is counted in memory.
Stage latencies are quantiles over the most recent finished jobs, not a histogram: the
table already holds every timestamp, and a window keeps a scrape to one small query.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schemas import JobState, TriageLevel
from worker.db import jobs
from worker.db.models import Job
from worker.settings import Settings
from worker.store.versions import ModelStore

LATENCY_WINDOW = 1000
QUANTILES = (0.5, 0.9, 0.99)


def _seconds(end: datetime | None, start: datetime | None) -> float | None:
    if end is None or start is None:
        return None
    if (end.tzinfo is None) != (start.tzinfo is None):
        end, start = end.replace(tzinfo=None), start.replace(tzinfo=None)
    return max((end - start).total_seconds(), 0.0)


def stage_latencies(session: Session, window: int = LATENCY_WINDOW) -> dict[str, list[float]]:
    """Seconds per stage of the last ``window`` done jobs: waiting, processing, end to end."""
    rows = session.execute(
        select(Job.created_at, Job.queued_at, Job.started_at, Job.finished_at)
        .where(Job.state == JobState.DONE.value, Job.finished_at.is_not(None))
        .order_by(Job.finished_at.desc()).limit(window)
    ).all()
    stages: dict[str, list[float]] = {"queue_wait": [], "processing": [], "total": []}
    for created, queued, started, finished in rows:
        for stage, value in (("queue_wait", _seconds(started, queued)),
                             ("processing", _seconds(finished, started)),
                             ("total", _seconds(finished, created))):
            if value is not None:
                stages[stage].append(value)
    return stages


class JobsCollector(Collector):
    """Collects from the database on every scrape."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions

    def collect(self):
        with self.sessions() as s:
            states = jobs.counts_by_state(s)
            triage = jobs.counts_by_triage(s)
            latencies = stage_latencies(s)
        by_state = GaugeMetricFamily("triage_jobs", "Jobs by state", labels=["state"])
        for state, n in states.items():
            by_state.add_metric([state], n)
        yield by_state
        results = CounterMetricFamily("triage_results", "Reported results by triage level",
                                      labels=["triage_level"])
        for level in TriageLevel:
            results.add_metric([level.value], triage.get(level.value, 0))
        yield results
        total = sum(triage.values())
        yield GaugeMetricFamily("triage_urgent_rate", "Share of reported results that are urgent",
                                value=(triage.get(TriageLevel.URGENT.value, 0) / total) if total else 0.0)
        latency = GaugeMetricFamily(
            "triage_stage_latency_seconds",
            f"Stage latency quantiles over the last {LATENCY_WINDOW} done jobs",
            labels=["stage", "quantile"])
        samples = GaugeMetricFamily("triage_stage_latency_window_jobs",
                                    "Done jobs the latency quantiles are computed from", labels=["stage"])
        for stage, values in latencies.items():
            samples.add_metric([stage], len(values))
            if values:
                for q, v in zip(QUANTILES, np.quantile(values, QUANTILES)):
                    latency.add_metric([stage, str(q)], float(v))
        yield latency
        yield samples
        yield from self._health()
        version = ModelStore(self.settings.model_store_dir).current_version()
        model = GaugeMetricFamily("triage_model_info", "Current model version", labels=["version"])
        if version:
            model.add_metric([version], 1)
        yield model


    def _health(self):
        """Per role up (1) or down (0) and restarts, as ``/healthz`` judges them; free bytes
        per data folder."""
        from worker.doors.health import free_space
        from worker.process.liveness import role_verdicts

        up = GaugeMetricFamily("triage_role_up", "1 when the role is up (process running, "
                               "liveness probe answered in time)", labels=["role"])
        restarts = CounterMetricFamily("triage_role_restarts", "Restarts of the role's process by run",
                                       labels=["role"])
        for role, verdict in role_verdicts(self.settings, self.sessions).items():
            up.add_metric([role], 1 if verdict.ok else 0)
            restarts.add_metric([role], verdict.restarts)
        yield up
        yield restarts
        free = GaugeMetricFamily("triage_disk_free_bytes", "Free bytes where the service writes",
                                 labels=["folder"])
        for folder, check in free_space(self.settings).items():
            if "free_bytes" in check:
                free.add_metric([folder], check["free_bytes"])
        yield free


def render_metrics(settings: Settings, sessions: sessionmaker[Session]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(settings, sessions))
    return generate_latest(registry)
