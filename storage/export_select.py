"""Which indexed studies an export takes, and what the node concluded about them.

The filters of ``ainode export`` as one query: Study Instance UIDs, a Study
Date range, a modality, and the outcome of a pipeline's jobs (``succeeded``,
``dead``, or ``declined``: a model found the series outside its validated
input). Purged studies are never exported.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from storage.export_filter import OUTCOMES, StudyFilter
from storage.models import Job, Outcome, ResultObject, Series, Study
from storage.outcomes import DECLINED_LIKE

__all__ = ["result_paths", "select_studies", "silver_labels"]


def _filtered(f: StudyFilter) -> Select[str]:
    query = select(Study.study_instance_uid).where(Study.purged_at.is_(None))
    if f.study_instance_uids:
        query = query.where(Study.study_instance_uid.in_(f.study_instance_uids))
    if f.date_from:
        query = query.where(Study.study_date >= f.date_from)
    if f.date_to:
        query = query.where(Study.study_date <= f.date_to)
    if f.modality:
        query = query.where(
            Study.id.in_(select(Series.study_id).where(Series.modality == f.modality))
        )
    if f.outcome == "declined":
        declined = select(Outcome.study_instance_uid).where(Outcome.result_json.like(DECLINED_LIKE))
        if f.pipeline:
            declined = declined.where(Outcome.pipeline == f.pipeline)
        query = query.where(Study.study_instance_uid.in_(declined))
    elif f.outcome or f.pipeline:
        jobs = select(Job.study_instance_uid)
        if f.pipeline:
            jobs = jobs.where(Job.pipeline == f.pipeline)
        if f.outcome:
            jobs = jobs.where(Job.status == f.outcome)
        query = query.where(Study.study_instance_uid.in_(jobs))
    return query.order_by(Study.id)


def select_studies(session: Session, f: StudyFilter) -> list[str]:
    """The Study Instance UIDs the filter selects, in arrival order."""
    if f.outcome and f.outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)} (got {f.outcome!r})")
    return list(session.scalars(_filtered(f)))


def result_paths(session: Session, study_instance_uid: str) -> list[Path]:
    """The files of the study's result objects the node still holds (not purged by retention)."""
    rows = session.scalars(
        select(ResultObject.path)
        .where(
            ResultObject.study_instance_uid == study_instance_uid,
            ResultObject.purged_at.is_(None),
        )
        .order_by(ResultObject.id)
    )
    return [Path(p) for p in rows]


def silver_labels(session: Session, study_instance_uids: list[str], model: str) -> dict[str, str]:
    """Series Instance UID -> the label ``model`` found most probable (its newest outcome).

    Series the model declined or did not run on have none.
    """
    rows = session.execute(
        select(Outcome.series_instance_uid, Outcome.result_json)
        .where(Outcome.model_name == model, Outcome.study_instance_uid.in_(study_instance_uids))
        .order_by(Outcome.id)
    )
    labels = {}
    for series, result_json in rows:
        findings = json.loads(result_json).get("findings") or []
        if series and findings:
            labels[series] = max(findings, key=lambda f: float(f["probability"]))["label"]
    return labels
