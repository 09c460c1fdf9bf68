"""Scheduled work of the main process: completion, lease expiry, retention, delivery, roster.

Each scheduled job is an edge with a broad ``except``: an error is logged with
its traceback and the schedule goes on.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime
from functools import partial

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.clock import utc_now
from core.config import NodeConfig
from core.version import VERSION
from node.delivery import deliver_due
from node.prefetch import new_study_hook, reset_prefetches, run_prefetches
from node.retention import run_retention
from node.server import make_deps
from storage import queue, workers
from storage.completion import PipelineTarget, complete_due

__all__ = [
    "expire_leases",
    "leave_roster",
    "run_completion",
    "serve_name",
    "start_scheduler",
]

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
        expected = event.expected_instances
        if expected is not None and event.instance_count > expected:
            logger.warning(
                "study %s: %d instances received, more than the %d its source reported",
                scope,
                event.instance_count,
                expected,
            )
        if event.retrieved:
            logger.info(
                "retrieved prior %s %s stored with %d instances",
                event.level,
                scope,
                event.instance_count,
            )
            continue
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


def serve_name() -> str:
    """This ``serve``'s name in the process roster."""
    return f"{socket.gethostname()}:{os.getpid()}"


def leave_roster(sessions: sessionmaker[Session]) -> None:
    """Mark this ``serve`` stopped in the roster (a clean shutdown; a database gone is logged)."""
    try:
        with sessions.begin() as s:
            workers.stop_worker(s, name=serve_name(), now=utc_now())
    except SQLAlchemyError as exc:
        logger.warning("could not mark this serve stopped in the roster: %s", exc)


def _register_serve(cfg: NodeConfig, sessions: sessionmaker[Session]) -> Callable[[], None]:
    """Put this ``serve`` in the process roster; return what keeps its row alive."""
    name = serve_name()
    with sessions.begin() as s:
        workers.register_worker(
            s,
            name=name,
            device="-",
            models=f"{cfg.node.listener_processes} listener process(es) on port {cfg.node.port}",
            now=utc_now(),
            role="serve",
            host=socket.gethostname(),
            pid=os.getpid(),
            version=VERSION,
            pipelines=", ".join(p.name for p in cfg.pipelines),
        )

    def touch() -> None:
        with sessions.begin() as s:
            workers.touch_worker(s, name=name, job_id=None, now=utc_now())

    return touch


def start_scheduler(cfg: NodeConfig, sessions: sessionmaker[Session]) -> BackgroundScheduler:
    """Start the background scheduler; the first runs happen at once."""
    scheduler = BackgroundScheduler(
        timezone="UTC", executors={"default": ThreadPoolExecutor(5 + len(cfg.destinations))}
    )
    roster = _register_serve(cfg, sessions)
    jobs: list[tuple[str, Callable[[], object], float]] = [
        ("roster", roster, max(1.0, min(5.0, cfg.inference.heartbeat_s))),
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
    if new_study_hook(cfg) is not None:  # [[sources]]: counts and priors of arriving studies
        reset_prefetches(sessions)
        deps = make_deps(cfg, sessions)
        jobs.append(("prefetch", partial(run_prefetches, cfg, sessions, deps), 0.5))
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
