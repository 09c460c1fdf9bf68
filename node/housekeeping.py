"""Scheduled work of the main process: completion, lease expiry, retention, delivery.

Each scheduled job is an edge with a broad ``except``: an error is logged with
its traceback and the schedule goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from functools import partial

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from core.clock import utc_now
from core.config import NodeConfig
from node.delivery import deliver_due
from node.retention import run_retention
from storage import queue
from storage.completion import PipelineTarget, complete_due

__all__ = ["expire_leases", "run_completion", "start_scheduler"]

logger = logging.getLogger(__name__)


def run_completion(
    cfg: NodeConfig, sessions: sessionmaker[Session], now: datetime | None = None
) -> int:
    """Close quiet studies (or series) and queue their jobs; return how many closed."""
    targets = [
        PipelineTarget(name=p.name, priority=p.priority, max_attempts=cfg.queue.max_attempts)
        for p in cfg.pipelines
    ]
    with sessions.begin() as session:
        results = complete_due(
            session,
            level=cfg.completion.level,
            quiet_s=cfg.completion.quiet_period_s,
            now=now or utc_now(),
            pipelines=targets,
        )
    for event, jobs in results:
        scope = event.series_instance_uid or event.study_instance_uid
        kind = "complete" if event.event_number == 1 else f"complete again (#{event.event_number})"
        logger.log(
            logging.INFO if event.event_number == 1 else logging.WARNING,
            "%s %s %s with %d instances; jobs %s",
            event.level,
            scope,
            kind,
            event.instance_count,
            ", ".join(f"{j.id}:{j.pipeline}" for j in jobs) or "none (no pipeline configured)",
        )
    return len(results)


def expire_leases(
    cfg: NodeConfig, sessions: sessionmaker[Session], now: datetime | None = None
) -> int:
    with sessions.begin() as session:
        expired = queue.requeue_expired(session, now=now or utc_now(), policy=cfg.queue.retry)
    for job in expired:
        logger.warning("job %d lease expired: now %s (%s)", job.id, job.status, job.last_error)
    return len(expired)


def _guarded(name: str, fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except Exception:
            logger.exception("scheduled task %s failed; it runs again on schedule", name)

    return run


def start_scheduler(cfg: NodeConfig, sessions: sessionmaker[Session]) -> BackgroundScheduler:
    """Start the background scheduler; the first runs happen at once."""
    scheduler = BackgroundScheduler(
        timezone="UTC", executors={"default": ThreadPoolExecutor(4 + len(cfg.destinations))}
    )
    jobs: list[tuple[str, Callable[[], object], float]] = [
        ("completion", lambda: run_completion(cfg, sessions), cfg.completion.check_interval_s),
        ("lease-expiry", lambda: expire_leases(cfg, sessions), cfg.queue.lease_check_interval_s),
        ("retention", lambda: run_retention(cfg, sessions), cfg.retention.check_interval_s),
        # Deliveries to destinations no longer configured (they fail, with the reason).
        ("delivery", lambda: deliver_due(cfg, sessions, None), cfg.delivery.check_interval_s),
    ]
    # One job per destination: a PACS that hangs holds up only its own deliveries.
    jobs += [
        (
            f"delivery:{d.name}",
            partial(deliver_due, cfg, sessions, d.name),
            cfg.delivery.check_interval_s,
        )
        for d in cfg.destinations
    ]
    for name, fn, every in jobs:
        scheduler.add_job(
            _guarded(name, fn),
            "interval",
            seconds=every,
            id=name,
            max_instances=1,
            coalesce=True,
            next_run_time=utc_now(),
            misfire_grace_time=None,
        )
    scheduler.start()
    return scheduler
