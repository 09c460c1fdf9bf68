"""``GET /metrics``: the processes' counters added up, and the node's state read at scrape time."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from core.clock import utc_now
from core.metrics import MULTIPROC_ENV
from storage import overview, queue
from storage.deliveries import delivery_counts
from storage.lookup import study_counts

__all__ = ["NodeCollector", "exposition"]


class NodeCollector(Collector):
    """Gauges of the whole node, from the database and the disk, at each scrape."""

    def __init__(self, sessions: sessionmaker[Session], data_dir: Path) -> None:
        self.sessions = sessions
        self.data_dir = data_dir

    def collect(self) -> Iterator[Any]:
        with self.sessions.begin() as s:
            jobs = queue.counts_by_status(s)
            deliveries = delivery_counts(s)
            counts = study_counts(s)
            oldest = overview.oldest_waiting_job(s)
        g = GaugeMetricFamily("ainode_jobs", "Jobs by state", labels=["state"])
        for state, n in sorted(jobs.items()):
            g.add_metric([state], n)
        yield g
        g = GaugeMetricFamily("ainode_result_deliveries", "Deliveries by status", labels=["status"])
        for status in ("pending", "delivered", "sent", "confirmed", "dead"):
            g.add_metric([status], deliveries.get(status, 0))
        yield g
        yield GaugeMetricFamily(
            "ainode_studies_receiving", "Studies still receiving", value=counts["studies_receiving"]
        )
        yield GaugeMetricFamily(
            "ainode_instances_stored", "Instances in the index", value=counts["instances"]
        )
        age = (utc_now() - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "ainode_queue_oldest_job_age_seconds",
            "How long the longest-waiting job has been queued (0: none waits)",
            value=max(0.0, age),
        )
        yield GaugeMetricFamily(
            "ainode_disk_free_bytes", "Free disk of the data folder",
            value=shutil.disk_usage(self.data_dir).free,
        )  # fmt: skip
        yield GaugeMetricFamily("ainode_scrape_timestamp_seconds", "When", value=time.time())


def exposition(sessions: sessionmaker[Session], data_dir: Path) -> bytes:
    """The text format: every process's counters (multiprocess mode) and the node's gauges."""
    registry = CollectorRegistry()
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    registry.register(NodeCollector(sessions, data_dir))
    return generate_latest(registry)
