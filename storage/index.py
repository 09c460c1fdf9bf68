"""Writing the instance index: where an incoming instance goes, and its rows.

Studies, series and instances, one transaction per instance (or per group
commit batch). The caller owns the transaction (``with sessions.begin() as
session: ...``); these functions only read and write rows in it. What the
index holds is read through :mod:`storage.lookup`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import cast

from sqlalchemy import Connection, Table, and_, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.base import Executable

from storage.dialect import serialize_steps
from storage.fastsql import execute, execute_all
from storage.models import ExpectedSeries, Instance, ReceiveState, Series, Study
from storage.records import IndexOutcome, IndexResult, InstanceHeader, StoredInstance

__all__ = ["Placement", "StudyConflict", "index_instance", "locate"]


def _merge_modalities(current: str, modality: str) -> str:
    values = [m for m in current.split("\\") if m]
    if modality and modality not in values:
        values.append(modality)
    return "\\".join(values)


# Statements are built once: the per-instance path runs them on the session's
# connection (Core), which costs a fraction of ORM unit-of-work flushes.
Step = tuple[Executable, dict[str, object]]

_studies = cast(Table, Study.__table__)
_series = cast(Table, Series.__table__)
_instances = cast(Table, Instance.__table__)

# Where an incoming instance would go: its own row (if its SOP Instance UID is
# indexed) and its series' row, each with the study that holds it.
_LOCATE_INSTANCE = (
    select(
        _instances.c.id,
        _instances.c.path,
        _instances.c.series_id,
        _studies.c.study_instance_uid,
    )
    .join(_series, _instances.c.series_id == _series.c.id)
    .join(_studies, _series.c.study_id == _studies.c.id)
    .where(_instances.c.sop_instance_uid == bindparam("uid"))
)
_LOCATE_SERIES = (
    select(_series.c.id, _series.c.state, _studies.c.study_instance_uid)
    .join(_studies, _series.c.study_id == _studies.c.id)
    .where(_series.c.series_instance_uid == bindparam("uid"))
)
_UNCOUNT_SERIES = (
    update(_series)
    .where(_series.c.id == bindparam("row_id"))
    .values(instance_count=_series.c.instance_count - 1)
)
_FIND_STUDY = select(_studies.c.id, _studies.c.state, _studies.c.modalities).where(
    _studies.c.study_instance_uid == bindparam("uid")
)
_INSERT_STUDY = insert(_studies).returning(_studies.c.id)
_TOUCH_STUDY = (
    update(_studies)
    .where(_studies.c.id == bindparam("row_id"))
    .values(
        instance_count=_studies.c.instance_count + bindparam("added"),
        last_received_at=bindparam("now"),
        state=ReceiveState.RECEIVING.value,
        reopen_count=_studies.c.reopen_count + bindparam("reopened"),
        modalities=bindparam("modalities"),
        # A pushed instance makes a retrieved study one of its own (jobs follow).
        retrieved=and_(_studies.c.retrieved, bindparam("retrieved")),
        purged_at=None,  # a purged study sent again is a study again
        purge_reason=None,
    )
)
_expected = cast(Table, ExpectedSeries.__table__)
# A series' first instance takes the count its source reported, if one did (node.prefetch).
_EXPECTED_SERIES = (
    select(_expected.c.instance_count)
    .where(_expected.c.series_instance_uid == bindparam("expected_uid"))
    .scalar_subquery()
)
_INSERT_SERIES = insert(_series).values(expected_instances=_EXPECTED_SERIES).returning(_series.c.id)
_FORGET_EXPECTED = delete(_expected).where(
    _expected.c.series_instance_uid == bindparam("expected_uid")
)
_TOUCH_SERIES = (
    update(_series)
    .where(_series.c.id == bindparam("row_id"))
    .values(
        instance_count=_series.c.instance_count + bindparam("added"),
        last_received_at=bindparam("now"),
        state=ReceiveState.RECEIVING.value,
        reopen_count=_series.c.reopen_count + bindparam("reopened"),
    )
)
_INSERT_INSTANCE = insert(_instances)
_REPLACE_INSTANCE = update(_instances).where(_instances.c.id == bindparam("row_id"))


def _receiving(now: datetime, added: int) -> dict[str, object]:
    return {
        "instance_count": added,
        "state": ReceiveState.RECEIVING.value,
        "first_received_at": now,
        "last_received_at": now,
        "completion_count": 0,
        "reopen_count": 0,
    }


def _study_steps(
    h: InstanceHeader, placement: Placement, now: datetime, added: int, *, retrieved: bool
) -> list[Step]:
    """Touch the known study row (the new one is inserted by :func:`_insert_new_rows`)."""
    if placement.study_id is None:
        return []
    return [
        (
            _TOUCH_STUDY,
            {
                "row_id": placement.study_id,
                "added": added,
                "now": now,
                "reopened": int(placement.study_complete),
                "modalities": _merge_modalities(placement.study_modalities, h.modality),
                "retrieved": retrieved,
            },
        )
    ]


class StudyConflict(Exception):
    """The instance's series (or the instance itself) is already indexed under another study.

    A series belongs to one study (PS3.3 C.7.3.1): an instance that names a
    known Series or SOP Instance UID with another Study Instance UID is a
    broken anonymiser or a modality UID bug, and must never be mixed into the
    other study's jobs.
    """

    def __init__(self, *, what: str, uid: str, stored_study: str, new_study: str) -> None:
        super().__init__(
            f"{what} {uid} is already stored in study {stored_study}; "
            f"this instance says study {new_study}"
        )
        self.what = what
        self.stored_study = stored_study
        self.new_study = new_study


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Where an incoming instance goes in the index, found before anything is written."""

    instance_id: int | None = None
    instance_path: Path | None = None
    instance_series_id: int | None = None
    series_id: int | None = None
    series_complete: bool = False
    study_id: int | None = None
    study_complete: bool = False
    study_modalities: str = ""


def locate(session: Session, header: InstanceHeader) -> Placement:
    """Look up the instance's, its series' and its study's rows, refusing study conflicts.

    The study is serialised first (:mod:`storage.dialect`): two associations
    storing into one study never both insert its row. On PostgreSQL the lock
    and the three look-ups are one round trip.

    Raises
    ------
    StudyConflict
        The Series or SOP Instance UID is indexed under another study.
    """
    conn = session.connection()
    study = header.study_instance_uid
    lock = serialize_steps(conn.dialect.name, f"study {study}")
    *_, series_rows, instance_rows, study_rows = execute_all(
        conn,
        [
            *lock,
            (_LOCATE_SERIES, {"uid": header.series_instance_uid}),
            (_LOCATE_INSTANCE, {"uid": header.sop_instance_uid}),
            (_FIND_STUDY, {"uid": study}),
        ],
    )
    series = series_rows.first()
    if series is not None and series.study_instance_uid != study:
        raise StudyConflict(
            what="series",
            uid=header.series_instance_uid,
            stored_study=series.study_instance_uid,
            new_study=study,
        )
    instance = instance_rows.first()
    if instance is not None and instance.study_instance_uid != study:
        raise StudyConflict(
            what="instance",
            uid=header.sop_instance_uid,
            stored_study=instance.study_instance_uid,
            new_study=study,
        )
    found = study_rows.first()
    return Placement(
        instance_id=None if instance is None else instance.id,
        instance_path=None if instance is None else Path(instance.path),
        instance_series_id=None if instance is None else instance.series_id,
        series_id=None if series is None else series.id,
        series_complete=series is not None and series.state == ReceiveState.COMPLETE,
        study_id=None if found is None else found.id,
        study_complete=found is not None and found.state == ReceiveState.COMPLETE,
        study_modalities="" if found is None else found.modalities,
    )


def _insert_new_rows(
    conn: Connection, h: InstanceHeader, placement: Placement, now: datetime, *, retrieved: bool
) -> int:
    """Insert the study's and the series' rows where they are new; the series' row id.

    A round trip each, before the rest of the store's writes (which need the ids):
    once per new series, not per instance.
    """
    study_id = placement.study_id
    if study_id is None:
        study_id = execute(
            conn,
            _INSERT_STUDY,
            {
                "study_instance_uid": h.study_instance_uid,
                "patient_id": h.patient_id,
                "accession_number": h.accession_number,
                "study_date": h.study_date,
                "study_description": h.study_description,
                "modalities": h.modality,
                "retrieved": retrieved,
                **_receiving(now, 1),
            },
        ).scalar_one()
    series_id = placement.series_id
    if series_id is None:
        series_id = execute_all(
            conn,
            [
                (
                    _INSERT_SERIES,
                    {
                        "series_instance_uid": h.series_instance_uid,
                        "expected_uid": h.series_instance_uid,
                        "study_id": study_id,
                        "modality": h.modality,
                        "body_part_examined": h.body_part_examined,
                        "series_description": h.series_description,
                        "series_number": h.series_number,
                        **_receiving(now, 1),
                    },
                ),
                (_FORGET_EXPECTED, {"expected_uid": h.series_instance_uid}),
            ],
        )[0].scalar_one()
    return int(series_id)


def _series_steps(placement: Placement, now: datetime, added: int) -> list[Step]:
    """Touch the known series row (a new one was inserted with its count)."""
    if placement.series_id is None:
        return []
    return [
        (
            _TOUCH_SERIES,
            {
                "row_id": placement.series_id,
                "added": added,
                "now": now,
                "reopened": int(placement.series_complete),
            },
        )
    ]


def index_instance(
    session: Session, stored: StoredInstance, placement: Placement, *, replace: bool
) -> IndexResult:
    """Record a durably written instance at the place :func:`locate` found.

    A SOP Instance UID already indexed is never a second row: with
    ``replace`` the row points at the new file (and the previous path is
    returned so the caller can delete it once committed), otherwise the
    existing row is kept untouched. The writes of an instance into a known
    series are one round trip on PostgreSQL.
    """
    h = stored.header
    conn = session.connection()
    if placement.instance_id is not None and not replace:
        return IndexResult(outcome=IndexOutcome.KEPT_EXISTING)
    replacing = placement.instance_id is not None
    now = stored.received_at
    created = placement.study_id is None
    reopened = placement.study_complete
    # A replaced instance that moves to another series of its study counts there.
    moved = replacing and placement.instance_series_id != placement.series_id
    series_id = _insert_new_rows(conn, h, placement, now, retrieved=stored.retrieved)
    steps = [
        *_study_steps(h, placement, now, 0 if replacing else 1, retrieved=stored.retrieved),
        *_series_steps(placement, now, 0 if replacing and not moved else 1),
    ]
    if moved:
        steps.append((_UNCOUNT_SERIES, {"row_id": placement.instance_series_id}))
    values = {
        "series_id": series_id,
        "sop_class_uid": h.sop_class_uid,
        "transfer_syntax_uid": h.transfer_syntax_uid,
        "instance_number": h.instance_number,
        "size_bytes": stored.size_bytes,
        "path": str(stored.path),
        "calling_ae_title": stored.calling_ae_title,
        "received_at": now,
    }
    if not replacing:
        steps.append((_INSERT_INSTANCE, {"sop_instance_uid": h.sop_instance_uid, **values}))
        execute_all(conn, steps)
        return IndexResult(outcome=IndexOutcome.NEW, study_reopened=reopened, study_created=created)
    steps.append((_REPLACE_INSTANCE, {"row_id": placement.instance_id, **values}))
    execute_all(conn, steps)
    previous = placement.instance_path
    return IndexResult(
        outcome=IndexOutcome.REPLACED,
        previous_path=None if previous == stored.path else previous,
        study_reopened=reopened,
    )
