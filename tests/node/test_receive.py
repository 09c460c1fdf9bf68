"""The C-STORE logic without the network: statuses, durability, duplicates."""

from __future__ import annotations

import errno
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from sqlalchemy import select, text

from core.config import DuplicatePolicy
from node.errors import StoreRejected
from node.receive import ReceiveDeps, receive_instance
from node.status import StoreStatus
from storage.models import Instance, Series, Study
from storage.records import IndexOutcome
from storage.spool import Spool
from tests.dicomgen import ct_slice, dataset_bytes
from tests.storage.stored import files_in as _files_in

EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture
def deps(tmp_path: Path, sessions) -> ReceiveDeps:
    spool = Spool(tmp_path / "data")
    spool.prepare()
    return ReceiveDeps(
        spool=spool, sessions=sessions, on_duplicate=DuplicatePolicy.KEEP, min_free_bytes=0
    )


def _encoded(tmp_path: Path, **changes: object) -> tuple[bytes, str, str]:
    """Explicit VR LE dataset bytes (no file meta), as a C-STORE carries them."""
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=0)
    with warnings.catch_warnings():  # invalid values are the point of some tests
        warnings.simplefilter("ignore")
        for key, value in changes.items():
            if value is None:
                delattr(ds, key)
            else:
                setattr(ds, key, value)
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write_dataset(buf, ds)
    return buf.getvalue(), str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def _receive(deps: ReceiveDeps, raw: bytes, sop_class: str, sop: str, ts: str = EXPLICIT):
    return receive_instance(
        deps,
        dataset=raw,
        transfer_syntax_uid=ts,
        requested_sop_class_uid=sop_class,
        requested_sop_instance_uid=sop,
        calling_ae_title="CT1",
    )


def _rejected(deps, raw, sop_class, sop, ts=EXPLICIT) -> StoreRejected:
    with pytest.raises(StoreRejected) as info:
        _receive(deps, raw, sop_class, sop, ts)
    return info.value


def test_success_is_on_disk_byte_exact_and_indexed(deps, tmp_path: Path) -> None:
    raw, sop_class, sop = _encoded(tmp_path)
    assert _receive(deps, raw, sop_class, sop).outcome is IndexOutcome.NEW
    with deps.sessions.begin() as s:
        row = s.scalars(select(Instance)).one()
        study = s.scalars(select(Study)).one()
    stored = Path(row.path)
    assert dataset_bytes(stored) == raw
    assert row.sop_instance_uid == sop and row.calling_ae_title == "CT1"
    assert row.size_bytes == stored.stat().st_size
    assert study.patient_id == "TEST-1" and study.modalities == "CT"
    assert study.accession_number == "ACC1" and study.instance_count == 1


@pytest.mark.parametrize(
    "raw",
    [b"\x08\x00\x16\x00UI\xff\xff", b"garbage that is no dataset at all", b""],
)
def test_unparseable_dataset_is_cannot_understand(deps, raw: bytes) -> None:
    exc = _rejected(deps, raw, "1.2.840.10008.5.1.4.1.1.2", "1.2.3")
    assert exc.status in (StoreStatus.CANNOT_UNDERSTAND, StoreStatus.MISSING_ATTRIBUTE)
    assert list(deps.spool.instances_dir.iterdir()) == []


def test_truncated_dataset_is_cannot_understand(deps, tmp_path: Path) -> None:
    raw, sop_class, sop = _encoded(tmp_path)
    exc = _rejected(deps, raw[: len(raw) // 2], sop_class, sop)
    assert exc.status is StoreStatus.CANNOT_UNDERSTAND
    assert "dataset truncated in (7FE0,0010)" in str(exc)


def test_missing_study_uid(deps, tmp_path: Path) -> None:
    raw, sop_class, sop = _encoded(tmp_path, StudyInstanceUID=None)
    exc = _rejected(deps, raw, sop_class, sop)
    assert exc.status is StoreStatus.MISSING_ATTRIBUTE
    assert exc.comment == "missing (0020,000D) Study Instance UID"


def test_uids_disagreeing_with_the_request(deps, tmp_path: Path) -> None:
    raw, sop_class, sop = _encoded(tmp_path)
    exc = _rejected(deps, raw, sop_class, "1.2.3.4")
    assert exc.status is StoreStatus.UID_MISMATCH
    assert "SOP Instance UID" in str(exc)
    exc = _rejected(deps, raw, "1.2.840.10008.5.1.4.1.1.4", sop)
    assert exc.status is StoreStatus.UID_MISMATCH and "SOP Class UID" in str(exc)
    assert len(exc.comment) <= 64


def test_invalid_uid_is_refused(deps, tmp_path: Path) -> None:
    raw, sop_class, sop = _encoded(tmp_path, SeriesInstanceUID="1.2.ab/../x")
    exc = _rejected(deps, raw, sop_class, sop)
    assert exc.status is StoreStatus.INVALID_UID


def test_duplicate_kept(deps, tmp_path: Path) -> None:
    raw, sop_class, sop = _encoded(tmp_path)
    _receive(deps, raw, sop_class, sop)
    changed, _, _ = _encoded(
        tmp_path, SOPInstanceUID=sop, StudyInstanceUID=_study(deps), PatientID="OTHER"
    )
    assert _receive(deps, changed, sop_class, sop).outcome is IndexOutcome.KEPT_EXISTING
    with deps.sessions.begin() as s:
        rows = s.scalars(select(Instance)).all()
    assert len(rows) == 1
    assert dataset_bytes(Path(rows[0].path)) == raw
    assert _files_in(deps.spool.tmp_dir) == []
    assert _files(deps.spool) == [Path(rows[0].path)]  # the copy placed beside it is gone


def test_duplicate_replaced(deps, tmp_path: Path) -> None:
    deps = replace(deps, on_duplicate=DuplicatePolicy.REPLACE)
    raw, sop_class, sop = _encoded(tmp_path)
    _receive(deps, raw, sop_class, sop)
    # Same SOP Instance UID, but moved to another series: the old file goes.
    changed, _, _ = _encoded(
        tmp_path,
        SOPInstanceUID=sop,
        StudyInstanceUID=_study(deps),
        SeriesInstanceUID=generate_uid(),
    )
    result = _receive(deps, changed, sop_class, sop)
    assert result.outcome is IndexOutcome.REPLACED
    with deps.sessions.begin() as s:
        rows = s.scalars(select(Instance)).all()
    assert len(rows) == 1
    assert dataset_bytes(Path(rows[0].path)) == changed
    assert result.previous_path is not None and not result.previous_path.exists()
    with deps.sessions.begin() as s:
        counts = sorted(s.scalars(select(Series.instance_count)).all())
    assert counts == [0, 1]  # the instance moved to the new series


def _study(deps: ReceiveDeps) -> str:
    with deps.sessions.begin() as s:
        return s.scalars(select(Study.study_instance_uid)).one()


class _FullDisk(Spool):
    """A spool whose disk reports little free space, or fails writes with ENOSPC."""

    def __init__(self, data_dir: Path, *, free: int, enospc: bool = False) -> None:
        super().__init__(data_dir)
        self._free = free
        self._enospc = enospc

    def free_bytes(self, *, above: int | None = None) -> int:
        return self._free

    def stage(self, chunks, name):
        if self._enospc:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().stage(chunks, name)


def test_disk_reserve_refuses_with_out_of_resources(deps, tmp_path: Path) -> None:
    deps = replace(
        deps, spool=_FullDisk(deps.spool.data_dir, free=500 * 2**20), min_free_bytes=1024 * 2**20
    )
    raw, sop_class, sop = _encoded(tmp_path)
    exc = _rejected(deps, raw, sop_class, sop)
    assert exc.status is StoreStatus.OUT_OF_RESOURCES
    assert str(exc) == "disk reserve reached: 500 MiB free, 1024 MiB kept"


def test_disk_full_refuses_with_out_of_resources(deps, tmp_path: Path) -> None:
    deps = replace(deps, spool=_FullDisk(deps.spool.data_dir, free=2**40, enospc=True))
    raw, sop_class, sop = _encoded(tmp_path)
    exc = _rejected(deps, raw, sop_class, sop)
    assert exc.status is StoreStatus.OUT_OF_RESOURCES
    assert "disk full" in str(exc)
    with deps.sessions.begin() as s:
        assert s.scalars(select(Instance)).all() == []


def test_database_error_refuses_and_leaves_no_file(deps, tmp_path: Path) -> None:
    raw, sop_class, sop = _encoded(tmp_path)
    with deps.sessions.begin() as s:
        s.execute(text("DROP TABLE instances"))
    exc = _rejected(deps, raw, sop_class, sop)
    assert exc.status is StoreStatus.OUT_OF_RESOURCES_INDEX
    assert str(exc) == "index unavailable: OperationalError"
    assert _files_in(deps.spool.tmp_dir) == []
    assert [p for p in deps.spool.instances_dir.rglob("*") if p.is_file()] == []


def test_folder_fsync_failure_refuses_and_leaves_no_file(deps, tmp_path, monkeypatch) -> None:
    """The file is linked in, then its folder cannot be fsynced: the name goes again."""
    from storage import spool as spool_module

    fsync_dir = spool_module.fsync_dir

    def failing(path: Path, fd: int | None = None) -> None:
        if any(Path(path).glob("*.dcm")):  # the series folder, once the file is in it
            raise OSError(errno.EIO, "Input/output error")
        fsync_dir(path, fd)

    monkeypatch.setattr(spool_module, "fsync_dir", failing)
    raw, sop_class, sop = _encoded(tmp_path)
    exc = _rejected(deps, raw, sop_class, sop)
    assert exc.status is StoreStatus.OUT_OF_RESOURCES
    assert str(exc) == "cannot write instance: Input/output error"
    assert _files(deps.spool) == []
    assert _files_in(deps.spool.tmp_dir) == []
    with deps.sessions.begin() as s:
        assert s.scalars(select(Instance)).all() == []


def _files(spool: Spool) -> list[Path]:
    return sorted(p for p in spool.instances_dir.rglob("*") if p.is_file())


def test_series_already_in_another_study_is_refused(deps, tmp_path: Path) -> None:
    raw, sop_class, sop = _encoded(tmp_path)
    _receive(deps, raw, sop_class, sop)
    with deps.sessions.begin() as s:
        first = s.scalars(select(Instance)).one()
        first_study = s.scalars(select(Study)).one().study_instance_uid
    series_uid = Path(first.path).parent.name
    other_study = generate_uid()
    # A broken anonymiser: same Series Instance UID, another Study Instance UID.
    raw2, _, sop2 = _encoded(
        tmp_path, StudyInstanceUID=other_study, SeriesInstanceUID=series_uid, PatientID="OTHER"
    )
    exc = _rejected(deps, raw2, sop_class, sop2)
    assert exc.status is StoreStatus.SERIES_IN_OTHER_STUDY
    assert 0xC000 <= exc.status <= 0xCFFF
    assert len(exc.comment) <= 64
    # Both studies are named (the log line has them in full, the comment their ends).
    assert first_study in str(exc) and other_study in str(exc)
    assert first_study[-14:] in exc.comment and other_study[-14:] in exc.comment
    with deps.sessions.begin() as s:
        assert [r.sop_instance_uid for r in s.scalars(select(Instance))] == [sop]
        assert [r.study_instance_uid for r in s.scalars(select(Study))] == [first_study]
    assert _files(deps.spool) == [Path(first.path)]
    assert _files_in(deps.spool.tmp_dir) == []


@pytest.mark.parametrize("policy", [DuplicatePolicy.KEEP, DuplicatePolicy.REPLACE])
def test_sop_instance_already_in_another_study_is_refused(deps, tmp_path, policy) -> None:
    deps = replace(deps, on_duplicate=policy)
    raw, sop_class, sop = _encoded(tmp_path)
    _receive(deps, raw, sop_class, sop)
    raw2, _, _ = _encoded(tmp_path, SOPInstanceUID=sop, StudyInstanceUID=generate_uid())
    exc = _rejected(deps, raw2, sop_class, sop)
    assert exc.status is StoreStatus.SERIES_IN_OTHER_STUDY
    with deps.sessions.begin() as s:
        row = s.scalars(select(Instance)).one()
    assert dataset_bytes(Path(row.path)) == raw
    assert len(_files(deps.spool)) == 1


_FAIL_INSERT = """
CREATE TRIGGER fail_{op} BEFORE {op} ON instances
BEGIN SELECT RAISE(ABORT, 'injected index failure'); END
"""


def test_failed_index_insert_after_the_rename_leaves_no_file(deps, tmp_path: Path) -> None:
    raw, sop_class, sop = _encoded(tmp_path)
    with deps.sessions.begin() as s:
        s.execute(text(_FAIL_INSERT.format(op="INSERT")))
    exc = _rejected(deps, raw, sop_class, sop)
    assert exc.status is StoreStatus.OUT_OF_RESOURCES_INDEX
    assert _files(deps.spool) == []
    assert _files_in(deps.spool.tmp_dir) == []
    with deps.sessions.begin() as s:
        assert s.scalars(select(Study)).all() == []


def test_failed_commit_under_replace_keeps_the_old_bytes(deps, tmp_path: Path) -> None:
    deps = replace(deps, on_duplicate=DuplicatePolicy.REPLACE)
    raw, sop_class, sop = _encoded(tmp_path)
    _receive(deps, raw, sop_class, sop)
    with deps.sessions.begin() as s:
        before = s.scalars(select(Instance)).one()
        s.execute(text(_FAIL_INSERT.format(op="UPDATE")))
    # Same UIDs, other bytes: the file name would be the same as the stored one.
    with deps.sessions.begin() as s:
        study = s.scalars(select(Study)).one().study_instance_uid
    changed, _, _ = _encoded(
        tmp_path,
        SOPInstanceUID=sop,
        StudyInstanceUID=study,
        SeriesInstanceUID=Path(before.path).parent.name,
        PatientName="Changed^Name",
    )
    exc = _rejected(deps, changed, sop_class, sop)
    assert exc.status is StoreStatus.OUT_OF_RESOURCES_INDEX
    with deps.sessions.begin() as s:
        after = s.scalars(select(Instance)).one()
    assert after.path == before.path and after.size_bytes == before.size_bytes
    assert dataset_bytes(Path(after.path)) == raw
    assert _files(deps.spool) == [Path(before.path)]
    assert _files_in(deps.spool.tmp_dir) == []


def test_replace_with_same_uids_swaps_the_file_only_after_commit(deps, tmp_path: Path) -> None:
    deps = replace(deps, on_duplicate=DuplicatePolicy.REPLACE)
    raw, sop_class, sop = _encoded(tmp_path)
    _receive(deps, raw, sop_class, sop)
    with deps.sessions.begin() as s:
        before = s.scalars(select(Instance)).one()
        study = s.scalars(select(Study)).one().study_instance_uid
    changed, _, _ = _encoded(
        tmp_path,
        SOPInstanceUID=sop,
        StudyInstanceUID=study,
        SeriesInstanceUID=Path(before.path).parent.name,
        PatientName="Changed^Name",
    )
    assert _receive(deps, changed, sop_class, sop).outcome is IndexOutcome.REPLACED
    with deps.sessions.begin() as s:
        after = s.scalars(select(Instance)).one()
        assert s.scalars(select(Study)).one().instance_count == 1
    assert dataset_bytes(Path(after.path)) == changed
    assert _files(deps.spool) == [Path(after.path)]
