"""Result objects and their deliveries: all delivery SQL lives here.

A result object is written once (``results``); each (object, destination) pair
is a ``deliveries`` row that is pending until the destination acknowledges it
with a success or warning status. A failed attempt waits by the retry policy;
a permanent failure, or the last attempt, makes the row dead with the DIMSE
status and error text. Only the serve process delivers (it holds the data
folder's lock), so rows need no lease: a crash between sending and marking
sends that object again after restart, which a PACS treats as the same SOP
Instance UID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.retry import RetryPolicy
from storage.models import Delivery, DeliveryStatus, ResultObject

__all__ = [
    "DeliveryRecord",
    "ResultRecord",
    "delivery_counts",
    "due_deliveries",
    "list_deliveries",
    "list_results",
    "mark_delivered",
    "mark_failed_attempt",
    "record_result",
    "replay_delivery",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultRecord:
    id: int
    job_id: int
    pipeline: str
    kind: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryRecord:
    id: int
    destination: str
    status: str
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    result: ResultRecord


def _result(row: ResultObject) -> ResultRecord:
    return ResultRecord(
        id=row.id,
        job_id=row.job_id,
        pipeline=row.pipeline,
        kind=row.kind,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        sop_class_uid=row.sop_class_uid,
        sop_instance_uid=row.sop_instance_uid,
        path=row.path,
    )


def _delivery(row: Delivery, result: ResultObject) -> DeliveryRecord:
    return DeliveryRecord(
        id=row.id,
        destination=row.destination,
        status=row.status,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        next_attempt_at=row.next_attempt_at,
        last_status=row.last_status,
        last_error=row.last_error,
        delivered_at=row.delivered_at,
        result=_result(result),
    )


def record_result(
    session: Session,
    *,
    job_id: int,
    pipeline: str,
    kind: str,
    study_instance_uid: str,
    series_instance_uid: str,
    source_series_instance_uid: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    path: str,
    size_bytes: int,
    destinations: Sequence[str],
    max_attempts: int,
    now: datetime,
) -> int:
    """Index a written result object and queue it for each destination."""
    row = ResultObject(
        job_id=job_id,
        pipeline=pipeline,
        kind=kind,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        source_series_instance_uid=source_series_instance_uid,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        path=path,
        size_bytes=size_bytes,
        created_at=now,
    )
    session.add(row)
    session.flush()
    for destination in destinations:
        session.add(
            Delivery(
                result_id=row.id,
                destination=destination,
                status=DeliveryStatus.PENDING,
                attempts=0,
                max_attempts=max_attempts,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
        )
    session.flush()
    return row.id


def due_deliveries(
    session: Session,
    *,
    now: datetime,
    destination: str | None = None,
    other_than: Sequence[str] = (),
    limit: int = 500,
) -> list[DeliveryRecord]:
    """Pending deliveries whose time has come, oldest first.

    ``destination``: only those to this destination; ``other_than``: only
    those to none of these (destinations no longer configured).
    """
    query = (
        select(Delivery, ResultObject)
        .join(ResultObject, Delivery.result_id == ResultObject.id)
        .where(Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= now)
        .order_by(Delivery.next_attempt_at, Delivery.id)
        .limit(limit)
    )
    if destination is not None:
        query = query.where(Delivery.destination == destination)
    if other_than:
        query = query.where(Delivery.destination.not_in(list(other_than)))
    return [_delivery(d, r) for d, r in session.execute(query)]


def mark_delivered(
    session: Session, *, delivery_id: int, status: int, comment: str | None, now: datetime
) -> None:
    """The destination acknowledged with success or a warning (kept in last_error)."""
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id)
        .values(
            status=DeliveryStatus.DELIVERED,
            attempts=Delivery.attempts + 1,
            last_status=status,
            last_error=comment,
            delivered_at=now,
            updated_at=now,
        )
    )


def mark_failed_attempt(
    session: Session,
    *,
    delivery_id: int,
    status: int | None,
    error: str,
    retryable: bool,
    policy: RetryPolicy,
    now: datetime,
) -> DeliveryRecord:
    """Count a failed attempt: wait by ``policy``, or dead when permanent or the last one."""
    row, result = session.execute(
        select(Delivery, ResultObject)
        .join(ResultObject, Delivery.result_id == ResultObject.id)
        .where(Delivery.id == delivery_id)
    ).one()
    row.attempts += 1
    row.last_status = status
    row.last_error = error
    row.updated_at = now
    retry_at = policy.next_attempt_at(
        attempts=row.attempts, max_attempts=row.max_attempts, now=now, retryable=retryable
    )
    if retry_at is None:
        row.status = DeliveryStatus.DEAD
    else:
        row.next_attempt_at = retry_at
    session.flush()
    return _delivery(row, result)


def replay_delivery(session: Session, *, delivery_id: int, now: datetime) -> bool:
    """Send a dead (or waiting) delivery again now, with a fresh attempt budget."""
    updated = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.status != DeliveryStatus.DELIVERED)
        .values(
            status=DeliveryStatus.PENDING,
            max_attempts=Delivery.attempts + Delivery.max_attempts,
            next_attempt_at=now,
            updated_at=now,
        )
    )
    return bool(updated.rowcount)  # type: ignore[attr-defined]


def list_deliveries(
    session: Session,
    *,
    status: str | None = None,
    study_instance_uid: str | None = None,
    limit: int = 100,
) -> list[DeliveryRecord]:
    query = select(Delivery, ResultObject).join(ResultObject, Delivery.result_id == ResultObject.id)
    if status is not None:
        query = query.where(Delivery.status == status)
    if study_instance_uid is not None:
        query = query.where(ResultObject.study_instance_uid == study_instance_uid)
    query = query.order_by(Delivery.id.desc()).limit(limit)
    return [_delivery(d, r) for d, r in session.execute(query)]


def list_results(
    session: Session, *, job_id: int | None = None, study_instance_uid: str | None = None
) -> list[ResultRecord]:
    query = select(ResultObject).order_by(ResultObject.id)
    if job_id is not None:
        query = query.where(ResultObject.job_id == job_id)
    if study_instance_uid is not None:
        query = query.where(ResultObject.study_instance_uid == study_instance_uid)
    return [_result(r) for r in session.scalars(query)]


def delivery_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
    return {status: count for status, count in rows}
