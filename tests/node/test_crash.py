"""kill -9 during concurrent C-STOREs: nothing acknowledged is lost, nothing partial shows."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from storage.db import create_sqlite_engine, make_sessionmaker
from storage.models import Instance, Job
from tests.dicomgen import dataset_bytes, write_ct_series
from tests.peers import DCMTK_ENV, acknowledged

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _snapshot(db: Path) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    engine = create_sqlite_engine(db)
    try:
        with make_sessionmaker(engine).begin() as s:
            instances = {
                u: Path(p) for u, p in s.execute(select(Instance.sop_instance_uid, Instance.path))
            }
            jobs = [tuple(r) for r in s.execute(select(Job.study_instance_uid, Job.status))]
            return instances, jobs
    finally:
        engine.dispose()


def test_kill_9_during_four_concurrent_senders(node_factory, tmp_path: Path) -> None:
    node, cfg = node_factory(node={"listener_processes": 2}, completion={"quiet_period_s": 3})
    db = cfg.storage.database_path
    study = generate_uid()
    series = [
        write_ct_series(tmp_path / f"s{i}", count=120, size=256, study_uid=study) for i in range(4)
    ]
    by_uid = {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for files in series
        for p in files
    }

    senders = [
        subprocess.Popen(
            ["storescu", "-v", "-aec", "AINODE", "127.0.0.1", str(cfg.node.port), *map(str, files)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=DCMTK_ENV,
        )
        for files in series
    ]
    deadline = time.monotonic() + 60
    while len(_snapshot(db)[0]) < 60:  # kill in the middle of the transfer
        assert time.monotonic() < deadline, "senders made no progress"
        time.sleep(0.02)
    node.kill9()
    acks: dict[Path, str] = {}
    for sender in senders:
        out, _ = sender.communicate(timeout=60)
        acks |= acknowledged(out)
    succeeded = {p for p, status in acks.items() if status == "Success"}
    total = sum(len(f) for f in series)
    assert 0 < len(succeeded) < total, "the kill must land mid-transfer"

    node.start()  # restart on the same data folder
    instances, _ = _snapshot(db)
    # Every acknowledged instance is indexed, present and byte-identical.
    for path in succeeded:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert uid in instances, f"acknowledged {path.name} lost"
        assert dataset_bytes(instances[uid]) == dataset_bytes(path)
    # No partial file is visible: tmp/ was cleared, and every file under
    # instances/ is a whole instance equal to one that was sent.
    assert list((cfg.storage.data_dir / "tmp").iterdir()) == []
    for stored in (cfg.storage.data_dir / "instances").rglob("*.dcm"):
        assert dataset_bytes(stored) == dataset_bytes(by_uid[stored.stem])

    # The study still completes after the restart, and is queued exactly once.
    deadline = time.monotonic() + 30
    while not (jobs := _snapshot(db)[1]):
        assert time.monotonic() < deadline, "study never completed after restart"
        time.sleep(0.2)
    time.sleep(cfg.completion.quiet_period_s + 1)
    assert _snapshot(db)[1] == jobs == [(study, "todo")]
    assert node.terminate() == 0
