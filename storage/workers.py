"""The process roster: each worker, and each ``serve``, says who it is and when it was last alive.

A worker registers when its models are loaded, touches its row at most every
few seconds while it runs (with the job it holds), and marks itself stopped
when it exits cleanly. A worker killed hard simply stops being seen: the
dashboard shows how long ago that was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.models import Worker

__all__ = ["WorkerRecord", "list_workers", "register_worker", "stop_worker", "touch_worker"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRecord:
    name: str
    device: str
    models: str
    started_at: datetime
    last_seen_at: datetime
    current_job_id: int | None
    stopped_at: datetime | None
    role: str = "worker"
    host: str = ""
    pid: int | None = None
    version: str = ""
    pipelines: str = ""


def register_worker(
    session: Session,
    *,
    name: str,
    device: str,
    models: str,
    now: datetime,
    role: str = "worker",
    host: str = "",
    pid: int | None = None,
    version: str = "",
    pipelines: str = "",
) -> None:
    """Register (or re-register) a process in the roster: a worker, or ``serve`` itself."""
    row = session.get(Worker, name)
    if row is None:
        row = Worker(name=name)
        session.add(row)
    row.device, row.models = device, models
    row.role, row.host, row.pid, row.version, row.pipelines = role, host, pid, version, pipelines
    row.started_at = row.last_seen_at = now
    row.current_job_id = None
    row.stopped_at = None
    session.flush()


def touch_worker(session: Session, *, name: str, job_id: int | None, now: datetime) -> None:
    session.execute(
        update(Worker).where(Worker.name == name).values(last_seen_at=now, current_job_id=job_id)
    )


def stop_worker(session: Session, *, name: str, now: datetime) -> None:
    session.execute(
        update(Worker)
        .where(Worker.name == name)
        .values(last_seen_at=now, current_job_id=None, stopped_at=now)
    )


def list_workers(session: Session, *, limit: int = 50) -> list[WorkerRecord]:
    rows = session.scalars(select(Worker).order_by(Worker.last_seen_at.desc()).limit(limit))
    return [
        WorkerRecord(
            name=w.name,
            device=w.device,
            models=w.models,
            started_at=w.started_at,
            last_seen_at=w.last_seen_at,
            current_job_id=w.current_job_id,
            stopped_at=w.stopped_at,
            role=w.role,
            host=w.host,
            pid=w.pid,
            version=w.version,
            pipelines=w.pipelines,
        )
        for w in rows
    ]
