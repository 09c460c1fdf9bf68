"""Job outcomes: one row per (job, series, model), the result as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Outcome

__all__ = ["DECLINED_LIKE", "OutcomeRecord", "declined_outcomes", "list_outcomes", "record_outcome"]


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeRecord:
    id: int
    job_id: int
    pipeline: str
    study_instance_uid: str
    series_instance_uid: str | None
    model_name: str
    model_version: str
    model_sha256: str
    task: str
    result: dict[str, Any]
    created_at: datetime


def record_outcome(
    session: Session,
    *,
    job_id: int,
    pipeline: str,
    study_instance_uid: str,
    series_instance_uid: str | None,
    model_name: str,
    model_version: str,
    model_sha256: str,
    task: str,
    result: dict[str, Any],
    now: datetime,
) -> int:
    row = Outcome(
        job_id=job_id,
        pipeline=pipeline,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        model_name=model_name,
        model_version=model_version,
        model_sha256=model_sha256,
        task=task,
        result_json=json.dumps(result, sort_keys=True),
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row.id


def list_outcomes(
    session: Session, *, job_id: int | None = None, study_instance_uid: str | None = None
) -> list[OutcomeRecord]:
    query = select(Outcome).order_by(Outcome.id)
    if job_id is not None:
        query = query.where(Outcome.job_id == job_id)
    if study_instance_uid is not None:
        query = query.where(Outcome.study_instance_uid == study_instance_uid)
    return [_record(o) for o in session.scalars(query)]


# Outcomes are stored with sorted keys (record_outcome): a declined one holds this.
DECLINED_LIKE = '%"declined": "outside%'


def declined_outcomes(
    session: Session, *, job_ids: list[int] | None = None, limit: int = 5
) -> tuple[int, list[OutcomeRecord]]:
    """Outcomes of series a model declined (outside its validated input): count, newest few."""
    where = [Outcome.result_json.like(DECLINED_LIKE)]
    if job_ids is not None:
        where.append(Outcome.job_id.in_(job_ids))
    total = int(session.scalar(select(func.count()).select_from(Outcome).where(*where)) or 0)
    rows = session.scalars(select(Outcome).where(*where).order_by(Outcome.id.desc()).limit(limit))
    return total, [_record(o) for o in rows]


def _record(o: Outcome) -> OutcomeRecord:
    return OutcomeRecord(
        id=o.id,
        job_id=o.job_id,
        pipeline=o.pipeline,
        study_instance_uid=o.study_instance_uid,
        series_instance_uid=o.series_instance_uid,
        model_name=o.model_name,
        model_version=o.model_version,
        model_sha256=o.model_sha256,
        task=o.task,
        result=json.loads(o.result_json),
        created_at=o.created_at,
    )
