"""Start-up reconciliation: files without rows, rows without files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.models import Instance, ResultObject, Series, Study
from storage.reconcile import ReconcileRefused, reconcile
from storage.spool import Spool
from tests.storage.stored import files_in, store


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "data")
    spool.prepare()
    return spool


def _stored_file(sessions, spool: Spool, sop: str) -> Path:
    """Index an instance and write its file where the row says."""
    store(sessions, sop, study="1.1", series="1.1.1")
    with sessions.begin() as s:
        row = s.scalars(select(Instance).where(Instance.sop_instance_uid == sop)).one()
        path = spool.instance_path("1.1", "1.1.1", sop)
        row.path = str(path)
    spool.write(path, [sop.encode()])
    return path


def test_consistent_store_is_left_alone(sessions, spool: Spool) -> None:
    paths = [_stored_file(sessions, spool, f"1.1.1.{i}") for i in range(3)]
    with sessions.begin() as s:
        found = reconcile(s, spool, grace_s=0)
    assert found.quarantined == () and found.lost == ()
    assert found.rows_checked == 3 and found.files_checked == 3
    assert files_in(spool.instances_dir) == sorted(paths)


def test_file_without_row_is_quarantined_and_row_without_file_removed(
    sessions, spool: Spool
) -> None:
    paths = [_stored_file(sessions, spool, f"1.1.1.{i}") for i in range(4)]
    # A crash between publish and commit: a file no row points to.
    stray = spool.instance_path("1.1", "1.1.1", "1.1.1.99")
    spool.write(stray, [b"never acknowledged"])
    # An acknowledged file lost from disk.
    paths[0].unlink()
    with sessions.begin() as s:
        found = reconcile(s, spool, grace_s=0)
    assert found.quarantined == (spool.orphans_dir / "instances/1.1/1.1.1/1.1.1.99.dcm",)
    assert found.quarantined[0].read_bytes() == b"never acknowledged"
    assert [x.sop_instance_uid for x in found.lost] == ["1.1.1.0"]
    assert found.lost[0].study_instance_uid == "1.1"
    with sessions.begin() as s:
        assert sorted(s.scalars(select(Instance.sop_instance_uid))) == [
            "1.1.1.1",
            "1.1.1.2",
            "1.1.1.3",
        ]
        assert s.scalars(select(Series.instance_count)).one() == 3
        assert s.scalars(select(Study.instance_count)).one() == 3
    assert files_in(spool.instances_dir) == sorted(paths[1:])


def test_unmounted_storage_is_refused_not_repaired(sessions, spool: Spool) -> None:
    paths = [_stored_file(sessions, spool, f"1.1.1.{i}") for i in range(4)]
    for p in paths[:3]:
        p.unlink()
    with sessions.begin() as s, pytest.raises(ReconcileRefused, match="3 of the 4"):
        reconcile(s, spool, grace_s=0)
    with sessions.begin() as s:
        assert len(s.scalars(select(Instance)).all()) == 4


def test_result_files_without_row_are_quarantined_once_old(sessions, spool: Spool) -> None:
    old = spool.result_path("1.1", "1.1.9.1")
    young = spool.result_path("1.1", "1.1.9.2")
    spool.write(old, [b"old"])
    spool.write(young, [b"young"])
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    with sessions.begin() as s:
        assert s.scalars(select(ResultObject)).all() == []
        found = reconcile(s, spool, grace_s=600)
    assert found.quarantined == (spool.orphans_dir / "results/1.1/1.1.9.1.dcm",)
    assert young.exists()
