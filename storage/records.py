"""Frozen records that cross the storage boundary (no ORM objects leak out)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from storage.models import Job

__all__ = [
    "CompletionEvent",
    "IndexOutcome",
    "IndexResult",
    "InstanceHeader",
    "JobRecord",
    "StoredInstance",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceHeader:
    """The attributes of one received instance that the index keeps."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""  # asked of a source with the Patient ID (priors)
    accession_number: str = ""
    study_date: str = ""
    study_description: str = ""
    modality: str = ""
    body_part_examined: str = ""
    series_description: str = ""
    series_number: str = ""
    instance_number: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredInstance:
    """An instance durably written to ``path``, ready to be indexed."""

    header: InstanceHeader
    path: Path
    size_bytes: int
    calling_ae_title: str
    received_at: datetime
    retrieved: bool = False  # came by a retrieve of priors, not pushed


class IndexOutcome(enum.StrEnum):
    NEW = "new"
    REPLACED = "replaced"
    KEPT_EXISTING = "kept-existing"


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexResult:
    outcome: IndexOutcome
    previous_path: Path | None = None
    study_reopened: bool = False
    study_created: bool = False  # the study's first instance
    header: InstanceHeader | None = None  # what was received (set by the receiver)


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionEvent:
    """A study (or series) that went quiet: the n-th time it completed."""

    level: str
    study_instance_uid: str
    series_instance_uid: str | None
    event_number: int
    instance_count: int
    completed_at: datetime
    expected_instances: int | None = None  # what a [[sources]] PACS reported, if it did
    retrieved: bool = False  # priors retrieved by the node: no jobs of their own


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """A snapshot of one job row."""

    id: int
    pipeline: str
    level: str
    study_instance_uid: str
    series_instance_uid: str | None
    completion_event: int
    priority: int
    status: str
    attempts: int
    max_attempts: int
    scheduled_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Job) -> JobRecord:
        return cls(
            id=row.id,
            pipeline=row.pipeline,
            level=row.level,
            study_instance_uid=row.study_instance_uid,
            series_instance_uid=row.series_instance_uid,
            completion_event=row.completion_event,
            priority=row.priority,
            status=row.status,
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            scheduled_at=row.scheduled_at,
            lease_owner=row.lease_owner,
            lease_expires_at=row.lease_expires_at,
            last_error=row.last_error,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )
