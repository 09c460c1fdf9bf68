"""Write result objects durably under the data folder's ``results/``."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from dicomio.results.compose import ResultObject
from dicomio.results.part10 import to_chunks
from storage.spool import Spool

__all__ = ["ResultWriter", "WrittenResult", "write_results"]


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


class ResultWriter:
    """Writes each object handed to :meth:`submit` in a thread of its own, in order,
    while the caller encodes the next one (a 210 MB heat map is on disk by the time
    the report that cites it is encoded).

    All or nothing: if an object cannot be written, or the ``with`` block fails,
    the files written for the others are removed before the error goes on.
    """

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="result-writer")
        self._pending: list[Future[WrittenResult]] = []
        self._failed = threading.Event()

    def __enter__(self) -> ResultWriter:
        return self

    def submit(self, obj: ResultObject) -> None:
        self._pending.append(self._pool.submit(self._write, obj))

    def _write(self, obj: ResultObject) -> WrittenResult:
        if self._failed.is_set():  # an earlier object failed: write nothing more
            raise _Skipped(obj.sop_instance_uid)
        try:
            return _write(obj, self._spool)
        except BaseException:
            self._failed.set()
            raise

    def finish(self) -> list[WrittenResult]:
        """Wait for every write; the results in the order submitted."""
        return [future.result() for future in self._pending]

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._pool.shutdown(wait=True, cancel_futures=error is not None)
        if error is None and not self._failed.is_set():
            return
        for future in self._pending:
            if not future.cancelled() and future.exception() is None:
                self._spool.remove(future.result().path)


class _Skipped(Exception):
    """Not written because an object before it failed (that failure is what is raised)."""


def write_results(objects: Sequence[ResultObject], spool: Spool) -> list[WrittenResult]:
    """Each object to ``results/<study>/<sop instance>.dcm`` (fsynced, renamed into place).

    All or nothing, as :class:`ResultWriter`.
    """
    with ResultWriter(spool) as writer:
        for obj in objects:
            writer.submit(obj)
        return writer.finish()


def _write(obj: ResultObject, spool: Spool) -> WrittenResult:
    path = spool.result_path(obj.study_instance_uid, obj.sop_instance_uid)
    size = spool.write(path, to_chunks(obj.dataset))
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
