"""Reading the instance index: a study's series, a patient's earlier studies, counts.

For the worker (its inputs and priors), the export, the prefetch of priors and
the status pages; written by :mod:`storage.index` as instances arrive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Instance, ReceiveState, Series, Study

__all__ = [
    "PatientHistory",
    "PriorStudy",
    "SeriesInfo",
    "held_instances",
    "patient_history",
    "patient_ids",
    "study_counts",
    "study_series",
]


def patient_ids(session: Session, study_instance_uids: list[str]) -> dict[str, str]:
    """The Patient ID of each indexed study among ``study_instance_uids``."""
    rows = session.execute(
        select(Study.study_instance_uid, Study.patient_id).where(
            Study.study_instance_uid.in_(study_instance_uids)
        )
    )
    return {uid: patient for uid, patient in rows}


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesInfo:
    """One indexed series of a study, with the files of its instances."""

    series_instance_uid: str
    modality: str
    body_part_examined: str
    series_description: str
    sop_class_uids: tuple[str, ...]
    paths: tuple[Path, ...]


def study_series(session: Session, study_instance_uid: str) -> list[SeriesInfo]:
    """Every series of a study with its instance files, in arrival order."""
    rows = session.execute(
        select(
            Series.series_instance_uid,
            Series.modality,
            Series.body_part_examined,
            Series.series_description,
            Instance.sop_class_uid,
            Instance.path,
        )
        .join(Study, Series.study_id == Study.id)
        .join(Instance, Instance.series_id == Series.id)
        .where(Study.study_instance_uid == study_instance_uid)
        .order_by(Series.id, Instance.id)
    ).all()
    grouped: dict[str, list[tuple[str, str, str, str, str]]] = {}
    for uid, modality, body, desc, sop_class, path in rows:
        grouped.setdefault(uid, []).append((modality, body, desc, sop_class, path))
    return [
        SeriesInfo(
            series_instance_uid=uid,
            modality=items[0][0],
            body_part_examined=items[0][1],
            series_description=items[0][2],
            sop_class_uids=tuple(sorted({i[3] for i in items})),
            paths=tuple(Path(i[4]) for i in items),
        )
        for uid, items in grouped.items()
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class PriorStudy:
    """An earlier study of the same patient, with its series."""

    study_instance_uid: str
    study_date: str  # YYYYMMDD
    series: tuple[SeriesInfo, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientHistory:
    """A study's date and its patient's earlier studies in the index, newest first.

    ``reason`` says why there are no priors when the study cannot have any
    (no Patient ID, no Study Date) or none are stored.
    """

    study_date: str
    priors: tuple[PriorStudy, ...]
    reason: str = ""


def patient_history(session: Session, study_instance_uid: str, *, limit: int) -> PatientHistory:
    """Up to ``limit`` studies of the same Patient ID dated before this one, newest first.

    Studies are matched on Patient ID alone (the index keeps no issuer) and
    ordered by Study Date; a study of the same day is not a prior, since the
    index cannot tell which came first.
    """
    row = session.execute(
        select(Study.patient_id, Study.study_date).where(
            Study.study_instance_uid == study_instance_uid
        )
    ).first()
    if row is None:
        return PatientHistory(study_date="", priors=(), reason="study not in the index")
    patient_id, date = row
    if not patient_id:
        return PatientHistory(study_date=date, priors=(), reason="the study has no Patient ID")
    if not date:
        return PatientHistory(study_date="", priors=(), reason="the study has no Study Date")
    earlier = session.execute(
        select(Study.study_instance_uid, Study.study_date)
        .where(Study.patient_id == patient_id, Study.study_date != "", Study.study_date < date)
        .order_by(Study.study_date.desc(), Study.first_received_at.desc())
        .limit(limit)
    ).all()
    priors = tuple(
        PriorStudy(
            study_instance_uid=uid,
            study_date=prior_date,
            series=tuple(study_series(session, uid)),
        )
        for uid, prior_date in earlier
    )
    reason = "" if priors else "no earlier study of this patient in the store"
    return PatientHistory(study_date=date, priors=priors, reason=reason)


def held_instances(session: Session, study_instance_uid: str) -> tuple[dict[str, int], int]:
    """Instances held of a study, per Series Instance UID, and their bytes in all."""
    rows = session.execute(
        select(Series.series_instance_uid, func.count(Instance.id), func.sum(Instance.size_bytes))
        .join(Study, Series.study_id == Study.id)
        .join(Instance, Instance.series_id == Series.id)
        .where(Study.study_instance_uid == study_instance_uid)
        .group_by(Series.series_instance_uid)
    ).all()
    return {uid: int(n) for uid, n, _ in rows}, sum(int(b or 0) for _, _, b in rows)


def study_counts(session: Session) -> dict[str, int]:
    """Studies, series and instances indexed, and studies still receiving."""
    return {
        "studies": session.scalar(select(func.count()).select_from(Study)) or 0,
        "studies_receiving": session.scalar(
            select(func.count()).select_from(Study).where(Study.state == ReceiveState.RECEIVING)
        )
        or 0,
        "series": session.scalar(select(func.count()).select_from(Series)) or 0,
        "instances": session.scalar(select(func.count()).select_from(Instance)) or 0,
    }
