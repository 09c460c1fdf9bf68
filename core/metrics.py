"""Prometheus metrics that every process counts: listeners, workers and ``serve`` itself.

``serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` (``<data_dir>/metrics``) before any
child starts, so each process writes its counters to files there and
``GET /metrics`` adds them up (prometheus_client's multiprocess mode). The
library is imported on first use, after that variable is set; a process that
never counts anything (the CLI) never imports it. Gauges that describe the
whole node (jobs by state, free disk, queue age) are read from the database
at scrape time instead (node.web.metrics).
"""

from __future__ import annotations

import os
import threading
from typing import Any

__all__ = [
    "MULTIPROC_ENV",
    "association",
    "cstore_status",
    "delivery",
    "instance_received",
    "job_finished",
    "stage_seconds",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


_made: dict[str, Any] | None = None
_making = threading.Lock()


def _metrics() -> dict[str, Any]:
    """The collectors, made once whichever thread counts first (the registry refuses a
    second copy of a collector: "Duplicated timeseries")."""
    global _made
    if _made is None:
        with _making:
            if _made is None:
                _made = _collectors()
    return _made


def _collectors() -> dict[str, Any]:
    from prometheus_client import Counter, Histogram

    return {
        "instances": Counter(
            "ainode_instances_received", "Instances stored and indexed (C-STORE Success)"
        ),
        "bytes": Counter("ainode_bytes_received", "Bytes of the instances stored"),
        "associations": Counter(
            "ainode_associations", "Associations requested, by result", ["result"]
        ),
        "cstore": Counter(
            "ainode_cstore_responses", "C-STORE responses sent, by status", ["status"]
        ),
        "stage": Histogram(
            "ainode_job_stage_seconds", "Time per job stage", ["stage"], buckets=_STAGE_BUCKETS
        ),
        "jobs": Counter("ainode_jobs_finished", "Job attempts that ended, by outcome", ["outcome"]),
        "deliveries": Counter(
            "ainode_deliveries",
            "Delivery attempts, by destination and outcome",
            ["destination", "outcome"],
        ),
    }


def enabled() -> bool:
    """Whether this process counts (it runs under ``serve``)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def instance_received(size_bytes: int) -> None:
    if enabled():
        m = _metrics()
        m["instances"].inc()
        m["bytes"].inc(size_bytes)


def association(result: str) -> None:
    if enabled():
        _metrics()["associations"].labels(result).inc()


def cstore_status(status: int) -> None:
    if enabled():
        _metrics()["cstore"].labels(f"0x{status:04X}").inc()


def stage_seconds(stage: str, seconds: float) -> None:
    if enabled():
        _metrics()["stage"].labels(stage).observe(seconds)


def job_finished(outcome: str) -> None:
    if enabled():
        _metrics()["jobs"].labels(outcome).inc()


def delivery(destination: str, outcome: str) -> None:
    if enabled():
        _metrics()["deliveries"].labels(destination, outcome).inc()
