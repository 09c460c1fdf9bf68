"""Completion: a study (or series) with no new instance for the quiet period.

A study whose instance count a [[sources]] PACS reported (``expected_instances``,
node.prefetch) completes as soon as the node holds that many, without waiting.
Studies the node retrieved as priors complete too, but queue no jobs.

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

from sqlalchemy import and_, or_, select, update
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
        counted = and_(
            Study.expected_instances.is_not(None), Study.instance_count >= Study.expected_instances
        )
        rows = session.execute(
            update(Study)
            .where(
                Study.state == ReceiveState.RECEIVING,
                or_(Study.last_received_at <= cutoff, counted),
            )
            .values(
                state=ReceiveState.COMPLETE,
                completed_at=now,
                completion_count=Study.completion_count + 1,
            )
            .returning(
                Study.study_instance_uid,
                Study.completion_count,
                Study.instance_count,
                Study.expected_instances,
                Study.retrieved,
            )
        ).all()
        return [
            CompletionEvent(
                level=level,
                study_instance_uid=uid,
                series_instance_uid=None,
                event_number=n,
                instance_count=count,
                completed_at=now,
                expected_instances=expected,
                retrieved=bool(retrieved),
            )
            for uid, n, count, expected, retrieved in rows
        ]
    series_counted = and_(
        Series.expected_instances.is_not(None),
        Series.instance_count >= Series.expected_instances,
    )
    series_rows = session.execute(
        update(Series)
        .where(
            Series.state == ReceiveState.RECEIVING,
            or_(Series.last_received_at <= cutoff, series_counted),
        )
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
            Series.expected_instances,
        )
    ).all()
    studies: dict[int, tuple[str, bool]] = {
        study_id: (uid, bool(retrieved))
        for study_id, uid, retrieved in session.execute(
            select(Study.id, Study.study_instance_uid, Study.retrieved).where(
                Study.id.in_({r.study_id for r in series_rows})
            )
        )
    }
    return [
        CompletionEvent(
            level=level,
            study_instance_uid=studies[study_id][0],
            series_instance_uid=uid,
            event_number=n,
            instance_count=count,
            completed_at=now,
            expected_instances=expected,
            retrieved=studies[study_id][1],
        )
        for uid, study_id, n, count, expected in series_rows
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
    results: list[tuple[CompletionEvent, list[JobRecord]]] = []
    for event in _close(session, level=level, now=now, quiet_s=quiet_s):
        if event.retrieved:
            results.append((event, []))
            continue
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
