"""kill -9 during concurrent C-STOREs: nothing acknowledged is lost, nothing partial shows."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from storage.db import create_sqlite_engine, make_sessionmaker
from storage.models import Instance, Job
from tests.dicomgen import dataset_bytes, write_ct_series
from tests.peers import DCMTK_ENV, acknowledged, storescu
from tests.receivers import both_receivers  # noqa: F401 (every test here on both paths)
from tests.storage.stored import files_in as _files_in

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
    assert _files_in(cfg.storage.data_dir / "tmp") == []
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


def test_second_serve_is_refused_before_it_touches_the_running_nodes_files(
    node_factory, tmp_path: Path
) -> None:
    node, cfg = node_factory()
    in_flight = cfg.storage.data_dir / "tmp" / "1.2.3.4.999.0.part"
    in_flight.write_bytes(b"an instance being received right now")
    second = subprocess.run(
        [sys.executable, "-m", "node", "serve", "--config", str(node.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "another ainode process is using the data folder" in second.stderr
    assert in_flight.read_bytes() == b"an instance being received right now"
    assert node.terminate() == 0


def test_restart_reconciles_files_and_index(node_factory, tmp_path: Path) -> None:
    node, cfg = node_factory()
    files = write_ct_series(tmp_path / "ct", count=4)
    assert storescu(cfg.node.port, files).returncode == 0
    assert node.terminate() == 0
    instances, _ = _snapshot(cfg.storage.database_path)
    lost_uid, lost_path = sorted(instances.items())[0]
    lost_path.unlink()  # an acknowledged file lost from disk
    stray = lost_path.with_name("1.2.3.4.5.6.dcm")  # a file no row points to
    stray.write_bytes(b"never acknowledged")

    node.start()
    assert node.terminate() == 0
    log = node.output()
    assert f"acknowledged instance lost from disk, removed from the index: sop={lost_uid}" in log
    orphan = cfg.storage.data_dir / "orphans" / stray.relative_to(cfg.storage.data_dir)
    assert f"file without an index row moved to {orphan}" in log
    assert orphan.read_bytes() == b"never acknowledged" and not stray.exists()
    assert "reconciled 4 file(s) with 4 index row(s)" in log
    assert sorted(_snapshot(cfg.storage.database_path)[0]) == sorted(instances)[1:]
