"""Start-up reconciliation of the index with the files: what a crash can leave behind.

A store publishes its file before the row that points to it is committed, and
a replaced instance's old file is deleted after the commit; a crash (or a
failing disk) between those steps leaves one of two things:

- **a file without a row** (the sender was never told Success, or it is the
  superseded copy of a replaced instance). It is moved to ``orphans/`` below
  the data folder, keeping its relative path — never deleted, never indexed;
- **a row without a file** (an acknowledged instance whose bytes are gone:
  someone deleted them, or the disk lost them). The row is removed and the
  counts of its series and study corrected, each one logged as an error, so
  that jobs do not fail on a file that cannot come back.

Result files without a row (a worker that died between writing and
committing) are moved to ``orphans/`` as well, once older than ``grace_s``:
a worker running beside the node may be about to commit younger ones.

If the ``instances/`` folder is missing while the index lists instances, or
more than half of the indexed files are missing, nothing is repaired:
:class:`ReconcileRefused` says so (an unmounted volume must not empty the
index).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.orm import Session

from storage.models import Instance, ResultObject, Series, Study
from storage.spool import Spool

__all__ = ["LostInstance", "ReconcileRefused", "Reconciliation", "reconcile"]

_instances = cast(Table, Instance.__table__)
_series = cast(Table, Series.__table__)
_studies = cast(Table, Study.__table__)


class ReconcileRefused(RuntimeError):
    """The files and the index disagree too much to repair automatically."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LostInstance:
    """An indexed instance whose file is gone."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    path: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconciliation:
    """What reconciliation found and did."""

    files_checked: int
    rows_checked: int
    quarantined: tuple[Path, ...] = ()  # their new places under orphans/
    lost: tuple[LostInstance, ...] = ()
    seconds: float = 0.0


def _files_below(folder: Path, *, older_than: float | None = None) -> set[Path]:
    found: set[Path] = set()
    if not folder.is_dir():
        return found
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            if older_than is not None and path.stat().st_mtime > older_than:
                continue
            found.add(path)
    return found


def reconcile(session: Session, spool: Spool, *, grace_s: float) -> Reconciliation:
    """Compare ``instances/`` and ``results/`` with the index; repair what a crash left.

    Runs inside the caller's transaction; the caller holds the data folder's
    lock, so no listener is storing meanwhile.

    Raises
    ------
    ReconcileRefused
        The instance folder is missing or most indexed files are gone.
    """
    start = time.monotonic()
    rows = session.execute(
        select(
            _instances.c.id,
            _instances.c.path,
            _instances.c.sop_instance_uid,
            _instances.c.series_id,
            _series.c.series_instance_uid,
            _series.c.study_id,
            _studies.c.study_instance_uid,
        )
        .join(_series, _instances.c.series_id == _series.c.id)
        .join(_studies, _series.c.study_id == _studies.c.id)
    ).all()
    files = _files_below(spool.instances_dir)
    indexed = {Path(r.path) for r in rows}
    missing = [r for r in rows if Path(r.path) not in files]
    if rows and (not spool.instances_dir.is_dir() or len(missing) * 2 > len(rows)):
        raise ReconcileRefused(
            f"{len(missing)} of the {len(rows)} indexed instance files are missing from "
            f"{spool.instances_dir}: is the storage mounted? Nothing was repaired."
        )
    quarantined = [spool.quarantine(p) for p in sorted(files - indexed)]

    results = set(session.scalars(select(ResultObject.path)).all())
    young = time.time() - grace_s
    result_files = _files_below(spool.results_dir, older_than=young)
    quarantined += [spool.quarantine(p) for p in sorted(result_files - {Path(p) for p in results})]

    for r in missing:
        session.execute(delete(_instances).where(_instances.c.id == r.id))
        for table, row_id in ((_series, r.series_id), (_studies, r.study_id)):
            session.execute(
                update(table)
                .where(table.c.id == bindparam("row_id"))
                .values(instance_count=table.c.instance_count - 1),
                {"row_id": row_id},
            )
    lost = tuple(
        LostInstance(
            sop_instance_uid=r.sop_instance_uid,
            series_instance_uid=r.series_instance_uid,
            study_instance_uid=r.study_instance_uid,
            path=Path(r.path),
        )
        for r in missing
    )
    return Reconciliation(
        files_checked=len(files) + len(result_files),
        rows_checked=len(rows),
        quarantined=tuple(quarantined),
        lost=lost,
        seconds=round(time.monotonic() - start, 3),
    )
