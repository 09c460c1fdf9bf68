"""Read-only views for the dashboard and the metrics: where each study stands, what flows.

A study's state, as a person reads it: ``receiving`` -> ``complete`` ->
``queued`` / ``analysing`` -> ``analysed`` -> ``delivering`` -> ``delivered``;
or why not: ``failed`` (a dead job, with its reason), ``delivery failed``
(with the PACS's answer), ``skipped`` (no series matched), ``purged``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import (
    OPEN_DELIVERY,
    Delivery,
    DeliveryStatus,
    Instance,
    Job,
    JobStatus,
    Outcome,
    ReceiveState,
    ResultObject,
    Study,
)

__all__ = ["StudyState", "oldest_waiting_job", "received_since", "study_states"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyState:
    study_instance_uid: str
    study_date: str
    accession_number: str
    modalities: str
    instance_count: int
    last_received_at: datetime
    state: str
    detail: str = ""


def received_since(session: Session, since: datetime) -> tuple[int, int]:
    """Instances and bytes received since ``since`` (still indexed)."""
    count, size = session.execute(
        select(func.count(), func.coalesce(func.sum(Instance.size_bytes), 0)).where(
            Instance.received_at >= since
        )
    ).one()
    return int(count), int(size)


def oldest_waiting_job(session: Session) -> datetime | None:
    """When the longest-waiting due job was queued, or None."""
    result: datetime | None = session.scalar(
        select(func.min(Job.created_at)).where(Job.status == JobStatus.TODO)
    )
    return result


def _state(
    study: Study,
    jobs: list[tuple[str, str | None]],
    deliveries: list[tuple[str, str | None]],
    skipped: str | None,
) -> tuple[str, str]:
    if study.purged_at is not None:
        return "purged", study.purge_reason or ""
    if study.state == ReceiveState.RECEIVING:
        return "receiving", ""
    statuses = {status for status, _ in jobs}
    if JobStatus.DOING in statuses:
        return "analysing", ""
    if JobStatus.TODO in statuses:
        return "queued", ""
    dead = [error for status, error in jobs if status == JobStatus.DEAD]
    if dead:
        return "failed", dead[-1] or ""
    if not jobs:
        return "complete", "no pipeline queued it"
    if not deliveries:
        return ("skipped", skipped) if skipped else ("analysed", "")
    if any(status in OPEN_DELIVERY for status, _ in deliveries):
        return "delivering", ""
    failed = [error for status, error in deliveries if status == DeliveryStatus.DEAD]
    if failed:
        return "delivery failed", failed[-1] or ""
    return "delivered", ""


def study_states(session: Session, *, limit: int = 50) -> list[StudyState]:
    """The most recently received studies, each with its state."""
    studies = session.scalars(
        select(Study).order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit)
    ).all()
    uids = [s.study_instance_uid for s in studies]
    jobs: dict[str, list[tuple[str, str | None]]] = {}
    for uid, status, error in session.execute(
        select(Job.study_instance_uid, Job.status, Job.last_error)
        .where(Job.study_instance_uid.in_(uids))
        .order_by(Job.id)
    ):
        jobs.setdefault(uid, []).append((status, error))
    deliveries: dict[str, list[tuple[str, str | None]]] = {}
    for uid, status, error in session.execute(
        select(ResultObject.study_instance_uid, Delivery.status, Delivery.last_error)
        .join(ResultObject, Delivery.result_id == ResultObject.id)
        .where(ResultObject.study_instance_uid.in_(uids))
    ):
        deliveries.setdefault(uid, []).append((status, error))
    skipped: dict[str, str] = {}
    analysed: set[str] = set()
    for uid, task, result in session.execute(
        select(Outcome.study_instance_uid, Outcome.task, Outcome.result_json).where(
            Outcome.study_instance_uid.in_(uids)
        )
    ):
        if task == "none":  # a pipeline that found no series of its kind
            skipped[uid] = str(json.loads(result).get("skipped", ""))
        else:
            analysed.add(uid)
    for uid in analysed:  # skipped by one pipeline, analysed by another: analysed
        skipped.pop(uid, None)
    states = []
    for study in studies:
        uid = study.study_instance_uid
        state, detail = _state(study, jobs.get(uid, []), deliveries.get(uid, []), skipped.get(uid))
        states.append(
            StudyState(
                study_instance_uid=uid,
                study_date=study.study_date,
                accession_number=study.accession_number,
                modalities=study.modalities,
                instance_count=study.instance_count,
                last_received_at=study.last_received_at,
                state=state,
                detail=detail,
            )
        )
    return states
