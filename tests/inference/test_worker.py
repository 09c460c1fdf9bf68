"""The worker end to end: storescu -> ainode -> completion -> worker -> stored outcome."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from core.config import NodeConfig
from storage import queue
from storage.db import create_sqlite_engine, make_sessionmaker
from storage.outcomes import list_outcomes
from storage.records import JobRecord
from tests.dicomgen import write_ct_series, write_lesion_ct
from tests.packages import failing_segmenter, threshold_segmenter
from tests.peers import storescu

pytestmark = pytest.mark.network


def _pipeline(package: Path) -> str:
    return f"""
[[pipelines]]
name = "lesions"
models = ["{package}"]
[pipelines.match]
modality = "CT"
min_instances = 2
"""


def _jobs(cfg: NodeConfig) -> list[JobRecord]:
    engine = create_sqlite_engine(cfg.storage.database_path)
    try:
        with make_sessionmaker(engine).begin() as s:
            return queue.list_jobs(s)
    finally:
        engine.dispose()


def _outcomes(cfg: NodeConfig, job_id: int):
    engine = create_sqlite_engine(cfg.storage.database_path)
    try:
        with make_sessionmaker(engine).begin() as s:
            return list_outcomes(s, job_id=job_id)
    finally:
        engine.dispose()


def _wait_job(cfg: NodeConfig, status: str, timeout: float = 120) -> JobRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = _jobs(cfg)
        if jobs and jobs[0].status == status:
            return jobs[0]
        time.sleep(0.05)
    raise AssertionError(f"no job reached {status!r} in {timeout} s: {_jobs(cfg)}")


def test_lesions_found_and_measured_end_to_end(node_factory, tmp_path: Path) -> None:
    package = threshold_segmenter(tmp_path / "pkg", threshold_hu=120)
    node, cfg = node_factory(inference={"workers": 1}, pipelines=_pipeline(package))
    spheres = [((30.0, 20.0, 20.0), 6.0), ((50.0, 32.0, 32.0), 8.0)]
    files, truth = write_lesion_ct(tmp_path / "ct", spheres=spheres)
    assert storescu(cfg.node.port, files).returncode == 0

    job = _wait_job(cfg, "succeeded")
    assert job.attempts == 1
    (outcome,) = _outcomes(cfg, job.id)
    assert outcome.model_name == "threshold-lesions" and outcome.task == "segmentation"
    assert len(outcome.model_sha256) == 64
    found = outcome.result["lesions"]
    assert len(found) == 2
    measured = sorted(lesion["volume_mm3"] for lesion in found)
    for got, true in zip(measured, sorted(truth), strict=True):
        assert got == pytest.approx(true, rel=0.10)
    # Centroids in patient space: the generator puts voxel (k, j, i) at (i*0.8, j*0.8, k*2).
    centres = sorted((tuple(lesion["centroid_mm"]) for lesion in found), key=lambda c: c[2])
    for (cz, cy, cx), _ in spheres:
        assert any(np.allclose(c, (cx, cy, cz), atol=1.0) for c in centres)
    assert set(outcome.result["timings_s"]) == {"read", "forward", "postprocess"}
    assert node.terminate() == 0


def test_inconsistent_series_is_dead_at_once_with_its_reason(node_factory, tmp_path: Path) -> None:
    package = threshold_segmenter(tmp_path / "pkg")
    node, cfg = node_factory(inference={"workers": 1}, pipelines=_pipeline(package))
    files = write_ct_series(tmp_path / "ct", count=4)
    ds = dcmread(files[2])
    ds.ImagePositionPatient = dcmread(files[1]).ImagePositionPatient
    ds.save_as(files[2], enforce_file_format=True)
    assert storescu(cfg.node.port, files).returncode == 0
    job = _wait_job(cfg, "dead")
    assert job.attempts == 1
    assert job.last_error.startswith("permanent error: duplicate slice position")
    assert node.terminate() == 0


def test_model_that_raises_is_retried_then_dead_lettered(node_factory, tmp_path: Path) -> None:
    # A package that passes its trial run but raises on every real CT.
    package = failing_segmenter(tmp_path / "broken")
    node, cfg = node_factory(
        inference={"workers": 1, "poll_interval_s": 0.1},
        queue={"max_attempts": 2, "retry_wait_s": 0.5},
        pipelines=_pipeline(package),
    )
    assert storescu(cfg.node.port, write_ct_series(tmp_path / "ct", count=4)).returncode == 0
    job = _wait_job(cfg, "dead")
    assert job.attempts == 2
    assert job.last_error.startswith("gave up after 2 attempts: ")
    assert "input too bright for this test model" in job.last_error
    assert "will retry" in node.output() and f"job {job.id} dead" in node.output()
    assert node.terminate() == 0


def test_worker_killed_mid_job_is_redone_once(node_factory, tmp_path: Path) -> None:
    package = threshold_segmenter(tmp_path / "pkg")
    node, cfg = node_factory(
        queue={"lease_s": 3, "lease_check_interval_s": 0.2},
        inference={"workers": 0, "heartbeat_s": 0.5, "poll_interval_s": 0.1},
        pipelines=_pipeline(package),
    )
    files, _ = write_lesion_ct(tmp_path / "ct", shape=(160, 128, 128))
    assert storescu(cfg.node.port, files).returncode == 0

    def worker(log: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / log, "wb") as out:  # the child keeps its own descriptor
            return subprocess.Popen(
                [sys.executable, "-m", "node", "worker", "--config", str(node.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    first = worker("worker1.log")
    try:
        _wait_job(cfg, "doing", timeout=60)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert _jobs(cfg)[0].status == "doing"  # still leased to the dead worker
    second = worker("worker2.log")
    try:
        job = _wait_job(cfg, "succeeded", timeout=120)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    assert job.attempts == 2
    assert len(_outcomes(cfg, job.id)) == 1
    assert node.terminate() == 0


def test_result_files_of_a_lost_lease_are_removed(write_config, sessions, tmp_path: Path) -> None:
    """A worker that lost its job's lease leaves no result file behind (no row points to it)."""
    from core.clock import utc_now
    from core.config_file import load_config
    from dicomio.results.write import WrittenResult
    from inference.pipeline import PipelineRun
    from inference.worker import Worker

    package = threshold_segmenter(tmp_path / "pkg", threshold_hu=120)
    (tmp_path / "data").mkdir()
    cfg = load_config(write_config(_pipeline(package), storage={"data_dir": "data"}))
    worker = Worker(cfg, sessions, name="me")
    with sessions.begin() as s:  # queued, never claimed by "me"
        job = queue.enqueue(
            s,
            pipeline="lesions",
            level="study",
            study_instance_uid="1.2.3",
            series_instance_uid=None,
            completion_event=1,
            priority=1,
            max_attempts=1,
            now=utc_now(),
        ).job
    worker.spool.prepare()  # as serve does at start-up
    path = worker.spool.result_path("1.2.3", "1.2.3.9")
    worker.spool.write(path, [b"result bytes"])
    written = WrittenResult(
        kind="SR",
        path=path,
        size_bytes=12,
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.8",
        source_series_instance_uid="1.2.3.7",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
        sop_instance_uid="1.2.3.9",
    )
    worker._succeed(job, worker.pipelines["lesions"], PipelineRun(results=()), [written])
    assert not path.exists()
    with sessions.begin() as s:
        (row,) = queue.list_jobs(s)
        assert row.status == "todo"  # untouched: it belongs to whoever holds the lease
