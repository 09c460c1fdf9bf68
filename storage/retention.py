"""What retention may delete, and the index side of deleting it: all its SQL.

A study is **processed** when it is complete, not purged, none of its jobs is
waiting or running, and none of its results waits for delivery. Its
*processed time* is the latest of its completion, its jobs' last update and
its deliveries' last update: "delivered", "skipped" and "dead-lettered" all
end there. Retention deletes studies processed more than N days ago; under
disk pressure the oldest processed studies go first, whatever their age.

Purging a study deletes its instance rows (the caller deletes the files once
the transaction is committed) and marks the study row purged with the reason:
the study, its series, jobs, outcomes and results stay in the index, so
``ainode status``, the audit trail and the dashboard still say what happened.
A result object whose file is deleted keeps its row, marked purged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from storage.models import (
    OPEN_DELIVERY,
    Delivery,
    DeliveryStatus,
    Instance,
    Job,
    JobStatus,
    ReceiveState,
    ResultObject,
    Series,
    Study,
)

__all__ = [
    "PurgedStudy",
    "expired_results",
    "processed_studies",
    "purge_results",
    "purge_study",
]

_OPEN_JOBS = (JobStatus.TODO, JobStatus.DOING)


@dataclass(frozen=True, slots=True, kw_only=True)
class PurgedStudy:
    """A study whose rows were marked purged: the files to delete now."""

    study_instance_uid: str
    patient_id: str
    instance_paths: tuple[Path, ...]
    result_paths: tuple[Path, ...]
    reason: str


def _pending_jobs(study_uid: Any) -> ColumnElement[bool]:
    return exists().where(Job.study_instance_uid == study_uid, Job.status.in_(_OPEN_JOBS))


def _pending_deliveries(study_uid: Any) -> ColumnElement[bool]:
    return (
        select(Delivery.id)
        .join(ResultObject, Delivery.result_id == ResultObject.id)
        .where(
            ResultObject.study_instance_uid == study_uid,
            Delivery.status.in_(OPEN_DELIVERY),
        )
        .exists()
    )


def processed_studies(
    session: Session, *, processed_before: datetime | None, limit: int = 100
) -> list[tuple[str, datetime]]:
    """Processed studies (Study Instance UID, processed time), oldest first.

    ``processed_before``: only those processed before it (None: any age).
    """
    jobs_done = (
        select(func.max(Job.updated_at))
        .where(Job.study_instance_uid == Study.study_instance_uid)
        .scalar_subquery()
    )
    deliveries_done = (
        select(func.max(Delivery.updated_at))
        .join(ResultObject, Delivery.result_id == ResultObject.id)
        .where(ResultObject.study_instance_uid == Study.study_instance_uid)
        .scalar_subquery()
    )
    processed = _latest(
        _latest(Study.completed_at, func.coalesce(jobs_done, Study.completed_at)),
        func.coalesce(deliveries_done, Study.completed_at),
    )
    query = (
        select(Study.study_instance_uid, processed.label("processed"))
        .where(
            Study.state == ReceiveState.COMPLETE,
            Study.purged_at.is_(None),
            Study.completed_at.is_not(None),
            ~_pending_jobs(Study.study_instance_uid),
            ~_pending_deliveries(Study.study_instance_uid),
        )
        .order_by(processed, Study.id)
        .limit(limit)
    )
    if processed_before is not None:
        query = query.where(processed < processed_before)
    return [(uid, when) for uid, when in session.execute(query)]


def purge_study(
    session: Session, study_instance_uid: str, *, reason: str, now: datetime, force: bool = False
) -> PurgedStudy | None:
    """Mark a study purged and drop its instance rows; None if it is not there or busy.

    Without ``force`` a study with waiting or running jobs or pending
    deliveries is left alone. With it (an admin's purge: a wrong patient, an
    objection) its waiting jobs and pending deliveries are dead-lettered with
    the reason, so nothing of it is analysed or sent afterwards.
    """
    study = session.scalar(
        select(Study).where(
            Study.study_instance_uid == study_instance_uid, Study.purged_at.is_(None)
        )
    )
    if study is None:
        return None
    busy = session.scalar(
        select(or_(_pending_jobs(study_instance_uid), _pending_deliveries(study_instance_uid)))
    )
    if busy and not force:
        return None
    if busy:
        session.execute(
            update(Job)
            .where(Job.study_instance_uid == study_instance_uid, Job.status.in_(_OPEN_JOBS))
            .values(status=JobStatus.DEAD, lease_owner=None, last_error=f"purged: {reason}")
        )
        session.execute(
            update(Delivery)
            .where(
                Delivery.status.in_(OPEN_DELIVERY),
                Delivery.result_id.in_(
                    select(ResultObject.id).where(
                        ResultObject.study_instance_uid == study_instance_uid
                    )
                ),
            )
            .values(status=DeliveryStatus.DEAD, last_error=f"purged: {reason}", updated_at=now)
        )
    series_ids = select(Series.id).where(Series.study_id == study.id)
    instance_paths = session.scalars(
        select(Instance.path).where(Instance.series_id.in_(series_ids))
    ).all()
    session.execute(delete(Instance).where(Instance.series_id.in_(series_ids)))
    session.execute(update(Series).where(Series.study_id == study.id).values(instance_count=0))
    result_paths = _mark_results_purged(
        session, ResultObject.study_instance_uid == study_instance_uid, now
    )
    study.instance_count = 0
    study.purged_at = now
    study.purge_reason = reason
    session.flush()
    return PurgedStudy(
        study_instance_uid=study_instance_uid,
        patient_id=study.patient_id,
        instance_paths=tuple(Path(p) for p in instance_paths),
        result_paths=result_paths,
        reason=reason,
    )


def _latest(a: Any, b: Any) -> ColumnElement[datetime]:
    """The later of two timestamps, in SQL any database speaks (no GREATEST in SQLite)."""
    return case((a >= b, a), else_=b)


def _mark_results_purged(
    session: Session, where: ColumnElement[bool], now: datetime
) -> tuple[Path, ...]:
    condition = and_(where, ResultObject.purged_at.is_(None))
    paths = session.scalars(select(ResultObject.path).where(condition)).all()
    session.execute(update(ResultObject).where(condition).values(purged_at=now))
    return tuple(Path(p) for p in paths)


def expired_results(session: Session, *, created_before: datetime) -> list[int]:
    """Result objects older than the cutoff, not purged, with no delivery pending."""
    pending = (
        select(Delivery.id)
        .where(Delivery.result_id == ResultObject.id, Delivery.status.in_(OPEN_DELIVERY))
        .exists()
    )
    return list(
        session.scalars(
            select(ResultObject.id).where(
                ResultObject.created_at < created_before,
                ResultObject.purged_at.is_(None),
                ~pending,
            )
        )
    )


def purge_results(session: Session, result_ids: list[int], *, now: datetime) -> tuple[Path, ...]:
    """Mark result objects purged; return their files, to delete after the commit."""
    return _mark_results_purged(session, ResultObject.id.in_(result_ids), now)
