"""Prefetches: what each arriving study asks the [[sources]]; all prefetch SQL lives here.

A row is written in the transaction that indexes a study's first pushed
instance, so nothing is forgotten across a crash. ``serve`` runs due rows
(node.prefetch): the source's instance count of the study (which completes
it without the quiet period, ``storage.completion``) and, for pipelines with
``priors_from``, the patient's prior studies, retrieved into the store. A
failed attempt waits ``retry_wait_s``; after the source's ``max_attempts`` the
row is ``failed`` and jobs go on without priors, saying why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage.models import ExpectedSeries, Prefetch, PrefetchState, Series, Study

__all__ = [
    "PrefetchRecord",
    "bytes_since",
    "claim_due",
    "expect_instances",
    "fail_attempt",
    "failed_prefetches",
    "finish",
    "prefetch_counts",
    "prefetch_of",
    "request_prefetch",
    "reset_running",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefetchRecord:
    id: int
    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    study_date: str
    want_priors: bool
    state: str
    attempts: int
    last_error: str | None
    priors: tuple[str, ...]
    instances_retrieved: int

    @property
    def open(self) -> bool:
        return self.state in (PrefetchState.PENDING, PrefetchState.RUNNING)


def _record(row: Prefetch) -> PrefetchRecord:
    return PrefetchRecord(
        id=row.id,
        study_instance_uid=row.study_instance_uid,
        patient_id=row.patient_id,
        issuer_of_patient_id=row.issuer_of_patient_id,
        study_date=row.study_date,
        want_priors=row.want_priors,
        state=row.state,
        attempts=row.attempts,
        last_error=row.last_error,
        priors=tuple(u for u in row.priors.split("\\") if u),
        instances_retrieved=row.instances_retrieved,
    )


def request_prefetch(
    session: Session,
    *,
    study_instance_uid: str,
    patient_id: str,
    study_date: str,
    want_priors: bool,
    now: datetime,
    issuer_of_patient_id: str = "",
) -> None:
    """Queue the study's prefetch (once: a study sent again keeps its first row)."""
    exists = session.scalar(
        select(Prefetch.id).where(Prefetch.study_instance_uid == study_instance_uid)
    )
    if exists is not None:
        return
    session.add(
        Prefetch(
            study_instance_uid=study_instance_uid,
            patient_id=patient_id,
            issuer_of_patient_id=issuer_of_patient_id,
            study_date=study_date,
            want_priors=want_priors,
            state=PrefetchState.PENDING,
            attempts=0,
            next_attempt_at=now,
            priors="",
            instances_retrieved=0,
            bytes_retrieved=0,
            created_at=now,
            updated_at=now,
        )
    )
    session.flush()


def claim_due(session: Session, *, now: datetime, limit: int = 20) -> list[PrefetchRecord]:
    """Due pending prefetches, oldest first, marked running."""
    rows = session.scalars(
        select(Prefetch)
        .where(Prefetch.state == PrefetchState.PENDING, Prefetch.next_attempt_at <= now)
        .order_by(Prefetch.next_attempt_at, Prefetch.id)
        .limit(limit)
    ).all()
    for row in rows:
        row.state = PrefetchState.RUNNING
        row.updated_at = now
    session.flush()
    return [_record(r) for r in rows]


def reset_running(session: Session, *, now: datetime) -> int:
    """At start: prefetches a stopped ``serve`` was running go again (retrieves are idempotent)."""
    result = session.execute(
        update(Prefetch)
        .where(Prefetch.state == PrefetchState.RUNNING)
        .values(state=PrefetchState.PENDING, next_attempt_at=now, updated_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def finish(
    session: Session,
    *,
    prefetch_id: int,
    priors: tuple[str, ...],
    instances: int,
    size_bytes: int,
    note: str | None,
    now: datetime,
) -> None:
    session.execute(
        update(Prefetch)
        .where(Prefetch.id == prefetch_id)
        .values(
            state=PrefetchState.DONE,
            attempts=Prefetch.attempts + 1,
            priors="\\".join(priors),
            instances_retrieved=Prefetch.instances_retrieved + instances,
            bytes_retrieved=Prefetch.bytes_retrieved + size_bytes,
            last_error=note,
            updated_at=now,
        )
    )


def fail_attempt(
    session: Session,
    *,
    prefetch_id: int,
    error: str,
    instances: int,
    size_bytes: int,
    max_attempts: int,
    retry_wait_s: float,
    retryable: bool,
    now: datetime,
) -> PrefetchRecord:
    """Count a failed attempt: pending again after ``retry_wait_s``, or failed."""
    row = session.get_one(Prefetch, prefetch_id)
    row.attempts += 1
    row.last_error = error
    row.instances_retrieved += instances
    row.bytes_retrieved += size_bytes
    row.updated_at = now
    if retryable and row.attempts < max_attempts:
        row.state = PrefetchState.PENDING
        row.next_attempt_at = now + timedelta(seconds=retry_wait_s)
    else:
        row.state = PrefetchState.FAILED
    session.flush()
    return _record(row)


def prefetch_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Prefetch.state, func.count()).group_by(Prefetch.state))
    return {state: count for state, count in rows}


def failed_prefetches(session: Session, *, limit: int = 5) -> list[PrefetchRecord]:
    rows = session.scalars(
        select(Prefetch)
        .where(Prefetch.state == PrefetchState.FAILED)
        .order_by(Prefetch.updated_at.desc())
        .limit(limit)
    )
    return [_record(r) for r in rows]


def prefetch_of(session: Session, study_instance_uid: str) -> PrefetchRecord | None:
    row = session.scalar(select(Prefetch).where(Prefetch.study_instance_uid == study_instance_uid))
    return None if row is None else _record(row)


def bytes_since(session: Session, since: datetime) -> int:
    """Bytes retrieved by prefetches updated since then (the hourly limit)."""
    total = session.scalar(
        select(func.coalesce(func.sum(Prefetch.bytes_retrieved), 0)).where(
            Prefetch.updated_at >= since
        )
    )
    return int(total or 0)


def expect_instances(
    session: Session,
    *,
    study_instance_uid: str,
    count: int,
    per_series: Mapping[str, int] | None = None,
) -> int | None:
    """Record the source's instance counts of a study (and its series); returns what is held.

    A series not indexed yet takes its count when its first instance arrives.
    """
    for uid, n in (per_series or {}).items():
        indexed = session.execute(
            update(Series).where(Series.series_instance_uid == uid).values(expected_instances=n)
        )
        if indexed.rowcount:  # type: ignore[attr-defined]
            continue
        row = session.get(ExpectedSeries, uid)
        if row is None:
            session.add(ExpectedSeries(series_instance_uid=uid, instance_count=n))
        else:
            row.instance_count = n
    session.flush()
    result = session.execute(
        update(Study)
        .where(Study.study_instance_uid == study_instance_uid)
        .values(expected_instances=count)
        .returning(Study.instance_count)
    ).first()
    return None if result is None else int(result[0])
