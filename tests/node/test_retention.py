"""Retention with a clock the test controls: what is deleted, what never is, and the audit.

Studies arrive through the real C-STORE logic (files on disk, index rows),
complete, get jobs, results and deliveries in the states each case needs;
then retention runs at a chosen "now".
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from core.config_file import load_config
from dicomio.errors import InconsistentSeries
from node.audit import parse_frame
from node.errors import OutOfResources
from node.receive import ReceiveDeps, receive_instance
from node.retention import RoomMaker, run_retention
from storage import deliveries, queue
from storage.completion import PipelineTarget, complete_due
from storage.db import create_sqlite_engine, make_sessionmaker, migrate
from storage.models import Instance, Job, ResultObject, Study
from storage.spool import Spool
from tests.dicomgen import ct_slice

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture
def world(write_config, tmp_path: Path):
    cfg = load_config(
        write_config(
            "[[destinations]]\nname = 'pacs'\nae_title = 'PACS'\nhost = '127.0.0.1'\n",
            storage={"data_dir": "data", "min_free_mb": 0},
            retention={"instances_days": 10, "results_days": 30},
        )
    )
    spool = Spool(cfg.storage.data_dir)
    spool.prepare()
    engine = create_sqlite_engine(cfg.storage.database_path)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    yield cfg, sessions, spool
    engine.dispose()


def _receive(deps: ReceiveDeps, study: str, patient: str, n: int = 2) -> None:
    series = generate_uid()
    for k in range(n):
        ds = ct_slice(study_uid=study, series_uid=series, index=k, patient_id=patient)
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_dataset(buf, ds)
        receive_instance(
            deps,
            dataset=buf.getvalue(),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            requested_sop_class_uid=str(ds.SOPClassUID),
            requested_sop_instance_uid=str(ds.SOPInstanceUID),
            calling_ae_title="CT1",
        )


def _study(cfg, sessions, spool, *, patient: str, at: datetime, job: str, delivery: str | None):
    """A study received and completed at ``at``; its job ends as ``job`` at ``at`` + 1 h."""
    study = generate_uid()
    deps = ReceiveDeps(
        spool=spool, sessions=sessions, on_duplicate=cfg.storage.on_duplicate,
        min_free_bytes=0, clock=lambda: at,
    )  # fmt: skip
    _receive(deps, study, patient)
    with sessions.begin() as s:
        complete_due(
            s, level="study", quiet_s=1, now=at + timedelta(seconds=5),
            pipelines=[PipelineTarget(name=study[-12:], priority=1, max_attempts=3)],
        )  # fmt: skip
    done = at + timedelta(hours=1)
    with sessions.begin() as s:
        record = next(j for j in queue.list_jobs(s) if j.study_instance_uid == study)
        if job != "todo":
            claimed = queue.claim_next(s, worker="w", lease_s=60, now=done, pipelines=[study[-12:]])
            assert claimed is not None and claimed.id == record.id
            if job == "succeeded":
                queue.mark_succeeded(s, job_id=record.id, worker="w", now=done)
            else:
                queue.mark_failed(
                    s, job_id=record.id, worker="w", error=InconsistentSeries("gaps"),
                    policy=cfg.queue.retry, now=done,
                )  # fmt: skip
    if delivery is not None:
        path = spool.result_path(study, generate_uid())
        spool.write(path, [b"an SR"])
        with sessions.begin() as s:
            result_id = deliveries.record_result(
                s, job_id=record.id, pipeline="p", kind="SR", study_instance_uid=study,
                series_instance_uid=generate_uid(), source_series_instance_uid="1.2",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34", sop_instance_uid=path.stem,
                path=str(path), size_bytes=5, destinations=["pacs"], max_attempts=3, now=done,
            )  # fmt: skip
            (row,) = [d for d in deliveries.list_deliveries(s) if d.result.id == result_id]
            if delivery == "delivered":
                deliveries.mark_delivered(
                    s, delivery_id=row.id, status=0, comment=None, now=done + timedelta(hours=1)
                )
    return study


def _files(spool: Spool, study: str) -> list[Path]:
    return [p for p in spool.instances_dir.rglob("*.dcm") if study in str(p)]


def test_retention_deletes_only_processed_studies_past_their_days(world) -> None:
    cfg, sessions, spool = world
    delivered = _study(cfg, sessions, spool, patient="P-A", at=T0, job="succeeded",
                       delivery="delivered")  # fmt: skip
    waiting = _study(cfg, sessions, spool, patient="P-B", at=T0, job="todo", delivery=None)
    sending = _study(cfg, sessions, spool, patient="P-C", at=T0, job="succeeded",
                     delivery="pending")  # fmt: skip
    dead = _study(cfg, sessions, spool, patient="P-D", at=T0, job="dead", delivery=None)
    recent = _study(cfg, sessions, spool, patient="P-E", at=T0 + 8 * DAY, job="succeeded",
                    delivery=None)  # fmt: skip

    assert run_retention(cfg, sessions, now=T0 + 9 * DAY) == 0  # nothing is 10 days old yet
    assert run_retention(cfg, sessions, now=T0 + 11 * DAY) == 2
    for study in (delivered, dead):
        assert _files(spool, study) == []
    for study in (waiting, sending, recent):
        assert len(_files(spool, study)) == 2
    with sessions.begin() as s:
        rows = {r.study_instance_uid: r for r in s.scalars(select(Study))}
        assert rows[delivered].purged_at is not None
        assert "processed more than 10 days ago" in (rows[delivered].purge_reason or "")
        assert rows[waiting].purged_at is None and rows[sending].purged_at is None
        assert s.scalars(select(Instance.path)).all()  # the kept studies' rows remain
        kept = {Path(p).parts[-3] for p in s.scalars(select(Instance.path))}
        assert kept == {waiting, sending, recent}
        # Its result stays indexed, marked purged; its file is gone.
        result = s.scalars(
            select(ResultObject).where(ResultObject.study_instance_uid == delivered)
        ).one()
        assert result.purged_at is not None and not Path(result.path).exists()
    assert cfg.audit is not None
    deleted = [parse_frame(f)[2] for f in cfg.audit.file.read_text().splitlines() if "110105" in f]
    patients = sorted(
        o.get("ParticipantObjectID")
        for m in deleted
        for o in m.iter("ParticipantObjectIdentification")
        if o.get("ParticipantObjectTypeCode") == "1"
    )
    assert patients == ["P-A", "P-D"]


class _SmallDisk(Spool):
    """A data folder on a disk of ``capacity`` bytes: free = capacity - what is stored."""

    def __init__(self, data_dir: Path, capacity: int) -> None:
        super().__init__(data_dir)
        self.capacity = capacity

    def free_bytes(self, *, above: int | None = None) -> int:
        used = sum(p.stat().st_size for p in self.data_dir.rglob("*.dcm") if p.is_file())
        return self.capacity - used


def test_a_full_disk_evicts_the_oldest_processed_study_before_refusing(world) -> None:
    cfg, sessions, spool = world
    one_study = 2 * (8192 + 2000)  # two 64x64 slices with their headers, roughly
    disk = _SmallDisk(spool.data_dir, capacity=3 * one_study)
    old = _study(cfg, sessions, disk, patient="P-OLD", at=T0, job="succeeded", delivery=None)
    newer = _study(cfg, sessions, disk, patient="P-NEW", at=T0 + DAY, job="succeeded",
                   delivery=None)  # fmt: skip
    busy = _study(cfg, sessions, disk, patient="P-BUSY", at=T0 + DAY, job="todo", delivery=None)
    deps = ReceiveDeps(
        spool=disk, sessions=sessions, on_duplicate=cfg.storage.on_duplicate,
        min_free_bytes=1000, make_room=RoomMaker(cfg, sessions, disk),
    )  # fmt: skip
    _receive(deps, generate_uid(), "P-INCOMING")  # fits only if something goes
    assert _files(disk, old) == [] and len(_files(disk, newer)) == 2
    _receive(deps, generate_uid(), "P-INCOMING-2")  # the next oldest processed goes
    assert _files(disk, newer) == [] and len(_files(disk, busy)) == 2
    with pytest.raises(OutOfResources, match="disk reserve reached"):
        _receive(deps, generate_uid(), "P-TOO-MUCH")  # only a busy study is left
    assert len(_files(disk, busy)) == 2


def test_admin_purge_stops_jobs_and_deliveries_and_is_audited(world, tmp_path: Path) -> None:
    cfg, sessions, spool = world
    study = _study(cfg, sessions, spool, patient="P-WRONG", at=T0, job="todo", delivery="pending")
    run = subprocess.run(
        [sys.executable, "-m", "node", "purge", "--config", str(cfg.path), "--study", study,
         "--reason", "wrong patient"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"study {study} purged: 2 instance(s) and 1 result object(s) deleted" in run.stdout
    assert _files(spool, study) == []
    with sessions.begin() as s:
        (job,) = s.scalars(select(Job).where(Job.study_instance_uid == study))
        assert job.status == "dead" and "wrong patient" in (job.last_error or "")
        assert all(d.status == "dead" for d in deliveries.list_deliveries(s))
    assert cfg.audit is not None
    frames = cfg.audit.file.read_text()
    assert "110105" in frames and "110132" in frames and "wrong patient" in frames
    again = subprocess.run(
        [sys.executable, "-m", "node", "purge", "--config", str(cfg.path), "--study", study,
         "--reason", "twice"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 1 and "purged already" in again.stderr


def test_a_purged_study_sent_again_is_a_study_again(world) -> None:
    cfg, sessions, spool = world
    study = _study(cfg, sessions, spool, patient="P-A", at=T0, job="succeeded", delivery=None)
    assert run_retention(cfg, sessions, now=T0 + 11 * DAY) == 1
    deps = ReceiveDeps(
        spool=spool, sessions=sessions, on_duplicate=cfg.storage.on_duplicate, min_free_bytes=0
    )
    _receive(deps, study, "P-A")
    with sessions.begin() as s:
        row = s.scalars(select(Study).where(Study.study_instance_uid == study)).one()
        assert row.purged_at is None and row.state == "receiving" and row.instance_count == 2
