"""Index a CT instance the way the receiver does, without a file: the storage tests' helper."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from storage.index import index_instance, locate
from storage.records import IndexResult, InstanceHeader, StoredInstance

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def store(
    sessions: sessionmaker[Session],
    sop: str,
    *,
    study: str = "1.1",
    series: str = "1.1.1",
    at: datetime = T0,
    patient_id: str = "",
    study_date: str = "",
    retrieved: bool = False,
    modality: str = "CT",
    path: str = "",
    replace: bool = False,
) -> IndexResult:
    """Index instance ``sop`` (stored at ``path``, or ``/x/<sop>.dcm``) in one transaction."""
    header = InstanceHeader(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=sop,
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality=modality,
        patient_id=patient_id,
        study_date=study_date,
    )
    stored = StoredInstance(
        header=header,
        path=Path(path or f"/x/{sop}.dcm"),
        size_bytes=1,
        calling_ae_title="CT",
        received_at=at,
        retrieved=retrieved,
    )
    with sessions.begin() as s:
        return index_instance(s, stored, locate(s, stored.header), replace=replace)


def files_in(folder: Path) -> list[Path]:
    """Every file below ``folder`` (empty sub-folders do not count)."""
    return sorted(p for p in folder.rglob("*") if p.is_file())
