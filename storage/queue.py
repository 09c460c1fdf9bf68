"""The job queue: every SQL statement that touches ``jobs`` lives here.

States (PS: "dead" is the dead-letter state)::

    todo --claim--> doing --mark_succeeded--> succeeded
      ^               |--mark_failed (retryable, attempts left)--> todo (later)
      |               |--mark_failed (permanent or no attempts left)--> dead
      |               |--release (its worker is stopping; attempt not counted)--> todo
      |               '--lease expired--> todo, or dead when no attempts left
      '----------------------- replay <-------- dead | succeeded

A claim is one ``UPDATE ... WHERE id = (SELECT ...) RETURNING`` inside a
``BEGIN IMMEDIATE`` transaction, so two claimers can never get the same job.
A claim counts as an attempt, so a job whose worker keeps dying (a poison
study) still ends dead after ``max_attempts``.
Lower ``priority`` numbers run first (stat before routine).

Every function works inside the caller's transaction and never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, select, update
from sqlalchemy.orm import Session

from core.errors import describe
from core.retry import RetryPolicy
from storage.dialect import notify_job, serialize
from storage.models import Job, JobStatus
from storage.records import JobRecord

__all__ = [
    "EnqueueResult",
    "claim_next",
    "counts_by_status",
    "defer",
    "enqueue",
    "get_job",
    "heartbeat",
    "list_jobs",
    "mark_failed",
    "mark_succeeded",
    "release",
    "replay",
    "requeue_expired",
]


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """The queued job; ``merged`` when a waiting job absorbed the event."""

    job: JobRecord
    merged: bool


def queueing_lock(pipeline: str, study_uid: str, series_uid: str | None) -> str:
    return f"{pipeline}:{series_uid or study_uid}"


def enqueue(
    session: Session,
    *,
    pipeline: str,
    level: str,
    study_instance_uid: str,
    series_instance_uid: str | None,
    completion_event: int,
    priority: int,
    max_attempts: int,
    now: datetime,
) -> EnqueueResult:
    """Queue a job for one completion event, unique per (pipeline, study/series).

    If a job for the same pipeline and study (or series) is still waiting,
    it absorbs this event instead of a second row being added.
    """
    lock = queueing_lock(pipeline, study_instance_uid, series_instance_uid)
    serialize(session, f"queue {lock}")
    waiting = session.scalar(
        select(Job).where(Job.queueing_lock == lock, Job.status == JobStatus.TODO)
    )
    if waiting is not None:
        waiting.completion_event = max(waiting.completion_event, completion_event)
        waiting.priority = min(waiting.priority, priority)
        waiting.updated_at = now
        session.flush()
        return EnqueueResult(JobRecord.from_row(waiting), merged=True)
    job = Job(
        pipeline=pipeline,
        level=level,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        queueing_lock=lock,
        completion_event=completion_event,
        priority=priority,
        status=JobStatus.TODO,
        attempts=0,
        max_attempts=max_attempts,
        scheduled_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    notify_job(session, pipeline)
    return EnqueueResult(JobRecord.from_row(job), merged=False)


def claim_next(
    session: Session,
    *,
    worker: str,
    lease_s: float,
    now: datetime,
    pipelines: Sequence[str] | None = None,
    policy: RetryPolicy | None = None,
) -> JobRecord | None:
    """Atomically take the next due job, leasing it to ``worker``.

    Expired leases are returned to the queue first, so a worker never waits
    on a scheduler to recover a job whose previous worker died.
    """
    requeue_expired(session, now=now, policy=policy or RetryPolicy())
    candidate = (
        select(Job.id)
        .where(Job.status == JobStatus.TODO, Job.scheduled_at <= now)
        .order_by(Job.priority, Job.scheduled_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)  # PostgreSQL; nothing on SQLite (storage.dialect)
    )
    if pipelines is not None:
        candidate = candidate.where(Job.pipeline.in_(list(pipelines)))
    row = session.scalar(
        update(Job)
        .where(Job.id == candidate.scalar_subquery(), Job.status == JobStatus.TODO)
        .values(
            status=JobStatus.DOING,
            attempts=Job.attempts + 1,
            lease_owner=worker,
            lease_expires_at=now + timedelta(seconds=lease_s),
            heartbeat_at=now,
            updated_at=now,
        )
        .returning(Job)
    )
    return None if row is None else JobRecord.from_row(row)


def _owned(job_id: int, worker: str) -> ColumnElement[bool]:
    """The job is running under ``worker``'s lease."""
    return and_(Job.id == job_id, Job.status == JobStatus.DOING, Job.lease_owner == worker)


def heartbeat(session: Session, *, job_id: int, worker: str, lease_s: float, now: datetime) -> bool:
    """Extend the lease; False means the lease was lost and the work must stop."""
    result = session.execute(
        update(Job)
        .where(_owned(job_id, worker))
        .values(lease_expires_at=now + timedelta(seconds=lease_s), heartbeat_at=now, updated_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def mark_succeeded(session: Session, *, job_id: int, worker: str, now: datetime) -> bool:
    """Finish a job; False if ``worker`` no longer held its lease."""
    result = session.execute(
        update(Job)
        .where(_owned(job_id, worker))
        .values(
            status=JobStatus.SUCCEEDED,
            lease_owner=None,
            lease_expires_at=None,
            last_error=None,
            updated_at=now,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def mark_failed(
    session: Session,
    *,
    job_id: int,
    worker: str,
    error: BaseException,
    policy: RetryPolicy,
    now: datetime,
) -> JobRecord | None:
    """Record a failed attempt: retry later per ``policy``, or dead-letter it.

    The policy decides whether ``error`` is worth another attempt (a
    :class:`core.errors.PermanentError` is not). Returns the updated job, or
    None if ``worker`` no longer held the lease.
    """
    job = session.scalar(select(Job).where(_owned(job_id, worker)))
    if job is None:
        return None
    _fail(job, error=describe(error), retryable=policy.retryable(error), policy=policy, now=now)
    session.flush()
    return JobRecord.from_row(job)


def release(session: Session, *, job_id: int, worker: str, now: datetime) -> bool:
    """Give a running job back to the queue at once: its worker is stopping.

    Not the job's fault, so the attempt is not counted. False if ``worker``
    no longer held the lease.
    """
    return defer(
        session,
        job_id=job_id,
        worker=worker,
        until=now,
        reason=f"released by worker {worker}, which was stopping",
        now=now,
    )


def defer(
    session: Session, *, job_id: int, worker: str, until: datetime, reason: str, now: datetime
) -> bool:
    """Give a running job back to wait until ``until`` (its input is not there yet).

    Not the job's fault, so the attempt is not counted. False if ``worker``
    no longer held the lease.
    """
    result = session.execute(
        update(Job)
        .where(_owned(job_id, worker))
        .values(
            status=JobStatus.TODO,
            attempts=Job.attempts - 1,
            lease_owner=None,
            lease_expires_at=None,
            scheduled_at=until,
            last_error=reason,
            updated_at=now,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _fail(job: Job, *, error: str, retryable: bool, policy: RetryPolicy, now: datetime) -> None:
    when = policy.next_attempt_at(
        attempts=job.attempts, max_attempts=job.max_attempts, now=now, retryable=retryable
    )
    job.lease_owner = None
    job.lease_expires_at = None
    job.updated_at = now
    if when is None:
        job.status = JobStatus.DEAD
        why = "permanent error" if not retryable else f"gave up after {job.attempts} attempts"
        job.last_error = f"{why}: {error}"
    else:
        job.status = JobStatus.TODO
        job.scheduled_at = when
        job.last_error = f"attempt {job.attempts} of {job.max_attempts} failed: {error}"


def requeue_expired(session: Session, *, now: datetime, policy: RetryPolicy) -> list[JobRecord]:
    """Return jobs whose lease ran out to the queue (or dead-letter them)."""
    # Several nodes may run this at once (every claim does): each takes the rows
    # the others have not locked (PostgreSQL; SQLite has one writer anyway).
    expired = session.scalars(
        select(Job)
        .where(Job.status == JobStatus.DOING, Job.lease_expires_at < now)
        .with_for_update(skip_locked=True)
    ).all()
    records = []
    for job in expired:
        owner = job.lease_owner
        # A lost worker is not the job's fault: retry at once, but count the
        # attempt so that a job that kills its worker cannot loop forever.
        _fail(
            job,
            error=f"lease expired: worker {owner} stopped heartbeating",
            retryable=True,
            policy=RetryPolicy(max_attempts=policy.max_attempts, wait_s=0, backoff=1, max_wait_s=0),
            now=now,
        )
        records.append(JobRecord.from_row(job))
    session.flush()
    return records


def replay(session: Session, *, job_id: int, now: datetime) -> JobRecord:
    """Put a dead (or succeeded) job back in the queue with fresh attempts."""
    job = session.get(Job, job_id)
    if job is None:
        raise LookupError(f"no job with id {job_id}")
    if job.status in (JobStatus.TODO, JobStatus.DOING):
        raise ValueError(f"job {job_id} is {job.status}; only dead or succeeded jobs replay")
    waiting = session.scalar(
        select(Job.id).where(Job.queueing_lock == job.queueing_lock, Job.status == JobStatus.TODO)
    )
    if waiting is not None:
        raise ValueError(f"job {waiting} for the same pipeline and study is already waiting")
    job.status = JobStatus.TODO
    job.attempts = 0
    job.scheduled_at = now
    job.updated_at = now
    session.flush()
    return JobRecord.from_row(job)


def get_job(session: Session, job_id: int) -> JobRecord | None:
    job = session.get(Job, job_id)
    return None if job is None else JobRecord.from_row(job)


def list_jobs(session: Session, *, status: str | None = None, limit: int = 100) -> list[JobRecord]:
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Job.status == status)
    return [JobRecord.from_row(j) for j in session.scalars(query)]


def counts_by_status(session: Session) -> dict[str, int]:
    counts = {s.value: 0 for s in JobStatus}
    for status, n in session.execute(select(Job.status, func.count()).group_by(Job.status)):
        counts[status] = n
    return counts
