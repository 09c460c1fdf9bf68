"""The instance index: studies, series and instances, one transaction per instance.

The caller owns the transaction (``with sessions.begin() as session: ...``);
these functions only read and write rows in it.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage.models import Instance, ReceiveState, Series, Study
from storage.records import IndexOutcome, IndexResult, InstanceHeader, StoredInstance

__all__ = ["find_instance_path", "index_instance", "instance_paths", "study_counts"]


def find_instance_path(session: Session, sop_instance_uid: str) -> Path | None:
    """The stored file of an indexed instance, or None."""
    path = session.scalar(
        select(Instance.path).where(Instance.sop_instance_uid == sop_instance_uid)
    )
    return None if path is None else Path(path)


def instance_paths(session: Session, study_instance_uid: str) -> list[Path]:
    """Every indexed file of a study, in series then instance-number order."""
    rows = session.scalars(
        select(Instance.path)
        .join(Series, Instance.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
        .where(Study.study_instance_uid == study_instance_uid)
        .order_by(Series.id, Instance.id)
    )
    return [Path(p) for p in rows]


def _merge_modalities(current: str, modality: str) -> str:
    values = [m for m in current.split("\\") if m]
    if modality and modality not in values:
        values.append(modality)
    return "\\".join(values)


def _upsert_study(session: Session, h: InstanceHeader, stored: StoredInstance, added: int) -> bool:
    """Insert or touch the study row; return True if a complete study re-opened."""
    now = stored.received_at
    row = session.execute(
        select(Study.id, Study.state, Study.modalities).where(
            Study.study_instance_uid == h.study_instance_uid
        )
    ).first()
    if row is None:
        session.add(
            Study(
                study_instance_uid=h.study_instance_uid,
                patient_id=h.patient_id,
                accession_number=h.accession_number,
                study_date=h.study_date,
                study_description=h.study_description,
                modalities=h.modality,
                instance_count=added,
                state=ReceiveState.RECEIVING,
                first_received_at=now,
                last_received_at=now,
                completion_count=0,
                reopen_count=0,
            )
        )
        session.flush()
        return False
    reopened: bool = row.state == ReceiveState.COMPLETE
    session.execute(
        update(Study)
        .where(Study.id == row.id)
        .values(
            instance_count=Study.instance_count + added,
            last_received_at=now,
            state=ReceiveState.RECEIVING,
            reopen_count=Study.reopen_count + (1 if reopened else 0),
            modalities=_merge_modalities(row.modalities, h.modality),
        )
    )
    return reopened


def _upsert_series(session: Session, h: InstanceHeader, stored: StoredInstance, added: int) -> int:
    now = stored.received_at
    row = session.execute(
        select(Series.id, Series.state).where(Series.series_instance_uid == h.series_instance_uid)
    ).first()
    if row is None:
        study_id = session.scalar(
            select(Study.id).where(Study.study_instance_uid == h.study_instance_uid)
        )
        series = Series(
            series_instance_uid=h.series_instance_uid,
            study_id=study_id,
            modality=h.modality,
            body_part_examined=h.body_part_examined,
            series_description=h.series_description,
            series_number=h.series_number,
            instance_count=added,
            state=ReceiveState.RECEIVING,
            first_received_at=now,
            last_received_at=now,
            completion_count=0,
            reopen_count=0,
        )
        session.add(series)
        session.flush()
        return series.id
    reopened = row.state == ReceiveState.COMPLETE
    session.execute(
        update(Series)
        .where(Series.id == row.id)
        .values(
            instance_count=Series.instance_count + added,
            last_received_at=now,
            state=ReceiveState.RECEIVING,
            reopen_count=Series.reopen_count + (1 if reopened else 0),
        )
    )
    series_id: int = row.id
    return series_id


def index_instance(session: Session, stored: StoredInstance, *, replace: bool) -> IndexResult:
    """Record a durably written instance.

    A SOP Instance UID already indexed is never a second row: with
    ``replace`` the row points at the new file (and the previous path is
    returned so the caller can delete it once committed), otherwise the
    existing row is kept untouched.
    """
    h = stored.header
    existing = session.execute(
        select(Instance.id, Instance.path).where(Instance.sop_instance_uid == h.sop_instance_uid)
    ).first()
    if existing is not None and not replace:
        return IndexResult(outcome=IndexOutcome.KEPT_EXISTING)
    added = 0 if existing is not None else 1
    reopened = _upsert_study(session, h, stored, added)
    series_id = _upsert_series(session, h, stored, added)
    values = {
        "series_id": series_id,
        "sop_class_uid": h.sop_class_uid,
        "transfer_syntax_uid": h.transfer_syntax_uid,
        "instance_number": h.instance_number,
        "size_bytes": stored.size_bytes,
        "path": str(stored.path),
        "calling_ae_title": stored.calling_ae_title,
        "received_at": stored.received_at,
    }
    if existing is None:
        session.add(Instance(sop_instance_uid=h.sop_instance_uid, **values))
        session.flush()
        return IndexResult(outcome=IndexOutcome.NEW, study_reopened=reopened)
    session.execute(update(Instance).where(Instance.id == existing.id).values(**values))
    previous = Path(existing.path)
    return IndexResult(
        outcome=IndexOutcome.REPLACED,
        previous_path=None if previous == stored.path else previous,
        study_reopened=reopened,
    )


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
