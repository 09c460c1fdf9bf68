"""Write result objects durably under the data folder's ``results/``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dicomio.results.compose import ResultObject, to_bytes
from storage.spool import Spool

__all__ = ["WrittenResult", "write_results"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WrittenResult:
    kind: str
    path: Path
    size_bytes: int
    study_instance_uid: str
    series_instance_uid: str
    source_series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


def write_results(objects: Sequence[ResultObject], spool: Spool) -> list[WrittenResult]:
    """Each object to ``results/<study>/<sop instance>.dcm`` (fsynced, renamed into place).

    All or nothing: if one object cannot be encoded or written, the files
    already written for the others are removed before the error goes on.
    """
    written: list[WrittenResult] = []
    try:
        for obj in objects:
            written.append(_write(obj, spool))
    except BaseException:
        for w in written:
            spool.remove(w.path)
        raise
    return written


def _write(obj: ResultObject, spool: Spool) -> WrittenResult:
    path = spool.result_path(obj.study_instance_uid, obj.sop_instance_uid)
    size = spool.write(path, [to_bytes(obj.dataset)])
    return WrittenResult(
        kind=obj.kind,
        path=path,
        size_bytes=size,
        study_instance_uid=obj.study_instance_uid,
        series_instance_uid=obj.series_instance_uid,
        source_series_instance_uid=obj.source_series_instance_uid,
        sop_class_uid=obj.sop_class_uid,
        sop_instance_uid=obj.sop_instance_uid,
    )
