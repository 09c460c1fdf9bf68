"""Result objects and their deliveries: all delivery SQL lives here.

A result object is written once (``results``); each (object, destination) pair
is a ``deliveries`` row that is pending until the destination acknowledges it
with a success or warning status. A failed attempt waits by the retry policy;
a permanent failure, or the last attempt, makes the row dead with the DIMSE
status and error text. Only the serve process delivers (it holds the data
folder's lock), so rows need no lease: a crash between sending and marking
sends that object again after restart, which a PACS treats as the same SOP
Instance UID.

A destination with storage commitment takes one more step: a stored object
is ``sent`` until the destination's N-EVENT-REPORT commits it (``confirmed``)
or names it failed, which counts a failed attempt and sends it again. The
Transaction UID of the N-ACTION is kept on the rows it asked about; a report
is matched by it and by the destination that was asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, update
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
    "mark_confirmed",
    "mark_delivered",
    "mark_failed_attempt",
    "overdue_commitments",
    "record_result",
    "replay_delivery",
    "request_commitment",
    "sent_in_transaction",
    "uncommitted",
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
    updated_at: datetime
    result: ResultRecord
    transaction_uid: str | None  # the storage commitment request that asked about it


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
        updated_at=row.updated_at,
        result=_result(result),
        transaction_uid=row.transaction_uid,
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
    session: Session,
    *,
    delivery_id: int,
    status: int,
    comment: str | None,
    now: datetime,
    awaiting_commitment: bool = False,
) -> None:
    """The destination acknowledged with success or a warning (kept in last_error).

    ``awaiting_commitment``: the destination is to commit it too, so it is
    ``sent``; the attempt is counted when the commitment succeeds or fails.
    """
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id)
        .values(
            status=DeliveryStatus.SENT if awaiting_commitment else DeliveryStatus.DELIVERED,
            transaction_uid=None,
            attempts=Delivery.attempts + (0 if awaiting_commitment else 1),
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
    row.transaction_uid = None
    if retry_at is None:
        row.status = DeliveryStatus.DEAD
    else:
        row.status = DeliveryStatus.PENDING  # a sent one whose commitment failed, too
        row.next_attempt_at = retry_at
    session.flush()
    return _delivery(row, result)


def uncommitted(session: Session, *, destination: str) -> list[DeliveryRecord]:
    """Sent deliveries whose commitment was never requested (just sent, or cut off by a crash)."""
    return _deliveries(
        session,
        Delivery.destination == destination,
        Delivery.status == DeliveryStatus.SENT,
        Delivery.transaction_uid.is_(None),
    )


def request_commitment(
    session: Session, *, delivery_ids: Sequence[int], transaction_uid: str, now: datetime
) -> None:
    """Note the N-ACTION about to ask for these deliveries' commitment."""
    session.execute(
        update(Delivery)
        .where(Delivery.id.in_(list(delivery_ids)), Delivery.status == DeliveryStatus.SENT)
        .values(transaction_uid=transaction_uid, updated_at=now)
    )


def overdue_commitments(
    session: Session, *, destination: str, requested_before: datetime
) -> list[DeliveryRecord]:
    """Sent deliveries whose commitment was requested before the cutoff and never reported."""
    return _deliveries(
        session,
        Delivery.destination == destination,
        Delivery.status == DeliveryStatus.SENT,
        Delivery.transaction_uid.is_not(None),
        Delivery.updated_at < requested_before,
    )


def sent_in_transaction(
    session: Session, *, transaction_uid: str, destinations: Sequence[str]
) -> list[DeliveryRecord]:
    """The deliveries a commitment request asked about, still waiting, to these destinations."""
    return _deliveries(
        session,
        Delivery.transaction_uid == transaction_uid,
        Delivery.status == DeliveryStatus.SENT,
        Delivery.destination.in_(list(destinations)),
    )


def mark_confirmed(session: Session, *, delivery_ids: Sequence[int], now: datetime) -> None:
    """The destination committed to keep these objects."""
    session.execute(
        update(Delivery)
        .where(Delivery.id.in_(list(delivery_ids)), Delivery.status == DeliveryStatus.SENT)
        .values(
            status=DeliveryStatus.CONFIRMED,
            attempts=Delivery.attempts + 1,
            last_error=None,
            updated_at=now,
        )
    )


def _deliveries(session: Session, *conditions: ColumnElement[bool]) -> list[DeliveryRecord]:
    query = (
        select(Delivery, ResultObject)
        .join(ResultObject, Delivery.result_id == ResultObject.id)
        .where(*conditions)
        .order_by(Delivery.id)
    )
    return [_delivery(d, r) for d, r in session.execute(query)]


def replay_delivery(session: Session, *, delivery_id: int, now: datetime) -> bool:
    """Send a dead (or waiting) delivery again now, with a fresh attempt budget."""
    updated = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.status.not_in([DeliveryStatus.DELIVERED, DeliveryStatus.CONFIRMED]),
        )
        .values(
            status=DeliveryStatus.PENDING,
            transaction_uid=None,
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
