"""The SQLite schema, as SQLAlchemy 2.0 declarative tables.

The schema itself is created and changed only by the Alembic migrations in
``storage/migrations``; these classes describe it for the queries.
Times are stored as naive UTC and returned as aware UTC datetimes.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "OPEN_DELIVERY",
    "Base",
    "Delivery",
    "DeliveryStatus",
    "ExpectedSeries",
    "Instance",
    "Job",
    "JobStatus",
    "Outcome",
    "Prefetch",
    "PrefetchState",
    "ReceiveState",
    "ResultObject",
    "Series",
    "Study",
    "UTCDateTime",
    "Worker",
]


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; naive UTC on disk."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given: use an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class ReceiveState(enum.StrEnum):
    """A study or series is receiving until its quiet period has passed."""

    RECEIVING = "receiving"
    COMPLETE = "complete"


class JobStatus(enum.StrEnum):
    """todo -> doing -> succeeded | todo (retry) | dead (dead-letter)."""

    TODO = "todo"
    DOING = "doing"
    SUCCEEDED = "succeeded"
    DEAD = "dead"


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    modalities: Mapped[str] = mapped_column(String(128), default="")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default=ReceiveState.RECEIVING)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completion_count: Mapped[int] = mapped_column(Integer, default=0)
    reopen_count: Mapped[int] = mapped_column(Integer, default=0)
    # Retention or an admin deleted its files; the rows stay, marked (migration 0005).
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    purge_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Migration 0009: stored by a retrieve of priors (no jobs of its own), and
    # the instance count a [[sources]] PACS reported (completes it at once).
    retrieved: Mapped[bool] = mapped_column(Boolean, server_default=false())
    expected_instances: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (
        Index("ix_studies_state_last", "state", "last_received_at"),
        Index("ix_studies_patient_date", "patient_id", "study_date"),
    )


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part_examined: Mapped[str] = mapped_column(String(64), default="")
    series_description: Mapped[str] = mapped_column(String(64), default="")
    series_number: Mapped[str] = mapped_column(String(12), default="")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default=ReceiveState.RECEIVING)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completion_count: Mapped[int] = mapped_column(Integer, default=0)
    reopen_count: Mapped[int] = mapped_column(Integer, default=0)
    expected_instances: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 0009

    __table_args__ = (Index("ix_series_state_last", "state", "last_received_at"),)


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[str] = mapped_column(String(12), default="")
    size_bytes: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(64))
    level: Mapped[str] = mapped_column(String(16))
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    queueing_lock: Mapped[str] = mapped_column(String(200))
    completion_event: Mapped[int] = mapped_column(Integer, default=1)
    priority: Mapped[int] = mapped_column(Integer, default=100)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.TODO)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        # One waiting job per (pipeline, study/series): a re-opened study that
        # completes again before its job started merges into that job.
        Index(
            "uq_jobs_queueing_lock_todo",
            "queueing_lock",
            unique=True,
            sqlite_where=text("status = 'todo'"),
            postgresql_where=text("status = 'todo'"),
        ),
        Index("ix_jobs_claim", "status", "priority", "scheduled_at"),
    )


class Outcome(Base):
    """What a job concluded, stored as JSON before any DICOM result is written."""

    __tablename__ = "outcomes"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    pipeline: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(32))
    result_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ResultObject(Base):
    """A DICOM result object the node wrote (SR, SEG, Parametric Map)."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    pipeline: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    source_series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class DeliveryStatus(enum.StrEnum):
    """pending -> delivered | dead; with storage commitment pending -> sent -> confirmed.

    ``sent``: the destination stored the object (C-STORE success) and was asked
    to commit it; a failed or missing commitment makes it pending again.
    """

    PENDING = "pending"
    DELIVERED = "delivered"
    SENT = "sent"
    CONFIRMED = "confirmed"
    DEAD = "dead"


#: Deliveries not finished yet: retention keeps their objects, the overview says "delivering".
OPEN_DELIVERY = (DeliveryStatus.PENDING, DeliveryStatus.SENT)


class Delivery(Base):
    """One result object to one destination: sent, waiting for a retry, or given up."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Storage commitment (migration 0008): the N-ACTION's Transaction UID, set
    # when the commitment was requested (updated_at is then the request time).
    transaction_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (
        Index("uq_deliveries_result_destination", "result_id", "destination", unique=True),
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_transaction", "transaction_uid"),
    )


class PrefetchState(enum.StrEnum):
    """pending -> running -> done | pending (retry) | failed (the job goes on without)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Prefetch(Base):
    """An arriving study's questions to the [[sources]]: its instance counts, its priors."""

    __tablename__ = "prefetches"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64))
    study_date: Mapped[str] = mapped_column(String(8))
    want_priors: Mapped[bool] = mapped_column(Boolean)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    priors: Mapped[str] = mapped_column(Text)  # the prior Study Instance UIDs retrieved, "\\"
    instances_retrieved: Mapped[int] = mapped_column(Integer)
    bytes_retrieved: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_prefetches_due", "state", "next_attempt_at"),)


class ExpectedSeries(Base):
    """A series' instance count as a source reported it, kept for a series not indexed yet."""

    __tablename__ = "expected_series"

    series_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    instance_count: Mapped[int] = mapped_column(Integer)


class Worker(Base):
    """A node process (``serve`` or a worker): what it runs, where, when it was last alive."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    device: Mapped[str] = mapped_column(String(32))
    models: Mapped[str] = mapped_column(Text)  # "name version, ..."
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    current_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The roster of a scaled-out node (migration 0007): what kind of process, where.
    role: Mapped[str] = mapped_column(String(16), server_default="worker")  # serve | worker
    host: Mapped[str] = mapped_column(String(255), server_default="")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    version: Mapped[str] = mapped_column(String(32), server_default="")
    pipelines: Mapped[str] = mapped_column(Text, server_default="")
