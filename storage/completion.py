"""Completion: a study (or series) with no new instance for the quiet period.

The database is the timer's memory: ``last_received_at`` is written with every
instance, and :func:`complete_due` closes whatever has been quiet long enough.
Run it on a schedule (and once at start-up) and a restart never forgets a
pending study. Closing a study and queueing its jobs is one transaction, so a
completion is queued exactly once, also across a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage import queue
from storage.dialect import serialize
from storage.models import ReceiveState, Series, Study
from storage.records import CompletionEvent, JobRecord

__all__ = ["PipelineTarget", "complete_due"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineTarget:
    """A pipeline that each completion event is queued for."""

    name: str
    priority: int
    max_attempts: int


def _close(session: Session, *, level: str, now: datetime, quiet_s: float) -> list[CompletionEvent]:
    cutoff = now - timedelta(seconds=quiet_s)
    if level == "study":
        rows = session.execute(
            update(Study)
            .where(Study.state == ReceiveState.RECEIVING, Study.last_received_at <= cutoff)
            .values(
                state=ReceiveState.COMPLETE,
                completed_at=now,
                completion_count=Study.completion_count + 1,
            )
            .returning(Study.study_instance_uid, Study.completion_count, Study.instance_count)
        ).all()
        return [
            CompletionEvent(
                level=level,
                study_instance_uid=uid,
                series_instance_uid=None,
                event_number=n,
                instance_count=count,
                completed_at=now,
            )
            for uid, n, count in rows
        ]
    series_rows = session.execute(
        update(Series)
        .where(Series.state == ReceiveState.RECEIVING, Series.last_received_at <= cutoff)
        .values(
            state=ReceiveState.COMPLETE,
            completed_at=now,
            completion_count=Series.completion_count + 1,
        )
        .returning(
            Series.series_instance_uid,
            Series.study_id,
            Series.completion_count,
            Series.instance_count,
        )
    ).all()
    study_uids: dict[int, str] = {
        study_id: uid
        for study_id, uid in session.execute(
            select(Study.id, Study.study_instance_uid).where(
                Study.id.in_({r.study_id for r in series_rows})
            )
        )
    }
    return [
        CompletionEvent(
            level=level,
            study_instance_uid=study_uids[study_id],
            series_instance_uid=uid,
            event_number=n,
            instance_count=count,
            completed_at=now,
        )
        for uid, study_id, n, count in series_rows
    ]


def complete_due(
    session: Session,
    *,
    level: str,
    quiet_s: float,
    now: datetime,
    pipelines: Sequence[PipelineTarget],
) -> list[tuple[CompletionEvent, list[JobRecord]]]:
    """Close every quiet study (or series) and queue one job per pipeline.

    Serialised across nodes sharing a PostgreSQL database: a second node's run
    waits, then finds the studies already closed.
    """
    serialize(session, "completion")
    results = []
    for event in _close(session, level=level, now=now, quiet_s=quiet_s):
        jobs = [
            queue.enqueue(
                session,
                pipeline=p.name,
                level=level,
                study_instance_uid=event.study_instance_uid,
                series_instance_uid=event.series_instance_uid,
                completion_event=event.event_number,
                priority=p.priority,
                max_attempts=p.max_attempts,
                now=now,
            ).job
            for p in pipelines
        ]
        results.append((event, jobs))
    return results
