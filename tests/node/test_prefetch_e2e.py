"""Priors from the PACS: Orthanc holds a patient's earlier CT studies; ainode gets them itself.

Orthanc (Debian package, temp config on 127.0.0.1) is the PACS: source and
destination. The synthetic patient's studies are uploaded to it through its
REST API, as a modality would have sent them; only the newest is then sent to
ainode with storescu. ainode asks Orthanc for the study's instance count
(completing it without the quiet period), finds the earlier studies by C-FIND,
retrieves them by C-MOVE (or C-GET), and the lesion-change model compares; the
SR in Orthanc cites the priors' instances in its Pertinent Other Evidence.
"""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from pathlib import Path

import pytest
from pydicom import dcmread

from core.config import NodeConfig
from storage import deliveries, queue
from storage.db import create_sqlite_engine, make_sessionmaker
from storage.models import Study
from storage.outcomes import list_outcomes
from storage.prefetches import prefetch_of
from storage.spool import Spool
from tests.dicomcheck import validate
from tests.peers import Orthanc, free_port, storescu
from tests.receivers import both_receivers  # noqa: F401 (every test here on both paths)
from training.synthetic import generate_longitudinal

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[2]


def _patient(folder: Path, seed: int) -> tuple[list[str], dict[str, list[Path]]]:
    """The studies of one synthetic patient in date order, and each study's files."""
    labels = generate_longitudinal(folder, 1, seed=seed)
    with open(labels, newline="") as f:
        studies = [r["study_uid"] for r in csv.DictReader(f)]
    files: dict[str, list[Path]] = defaultdict(list)
    for path in sorted((folder / "studies").rglob("*.dcm")):
        files[str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)].append(path)
    return studies, files


def _orthanc(tmp_path: Path, node_port: int) -> Orthanc:
    return Orthanc(
        tmp_path / "orthanc",
        dicom_port=free_port(),
        http_port=free_port(),
        extra={
            "DicomModalities": {"ainode": {"AET": "AINODE", "Host": "127.0.0.1", "Port": node_port}}
        },
    ).start()


def _node(node_factory, pacs: Orthanc, node_port: int, retrieve: str, quiet_s: float):
    text = f"""
{pacs.toml_table("sources", retrieve=retrieve, retry_wait_s=1)}
{pacs.toml_table("destinations")}
[[pipelines]]
name = "change"
models = ["{ROOT / "models" / "lesion-change"}"]
destinations = ["pacs"]
priors_from = ["pacs"]
[pipelines.match]
modality = "CT"
min_instances = 8
"""
    return node_factory(
        text,
        pipelines="",
        node={"port": node_port},
        completion={"quiet_period_s": quiet_s, "check_interval_s": 0.2},
        inference={"workers": 1, "poll_interval_s": 0.1},
        delivery={"check_interval_s": 0.2},
    )


def _wait_for_sr(cfg: NodeConfig, study: str, timeout: float = 180):
    engine = create_sqlite_engine(cfg.storage.database_path)
    sessions = make_sessionmaker(engine)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with sessions.begin() as s:
                sent = deliveries.list_deliveries(s, study_instance_uid=study)
                jobs = queue.list_jobs(s)
            if sent and all(d.status == "delivered" for d in sent):
                with sessions.begin() as s:
                    outcomes = {o.study_instance_uid: o.result for o in list_outcomes(s)}
                    prefetch = prefetch_of(s, study)
                    retrieved = {
                        st.study_instance_uid: (st.retrieved, st.completed_at, st.first_received_at)
                        for st in s.query(Study)
                    }
                return sent, jobs, outcomes[study], prefetch, retrieved
            time.sleep(0.2)
        with sessions.begin() as s:
            raise AssertionError(
                f"timed out: jobs {queue.list_jobs(s)}, prefetch {prefetch_of(s, study)}"
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("retrieve", ["move", "get"])
def test_priors_are_retrieved_from_the_pacs_and_compared(
    node_factory, tmp_path: Path, retrieve: str
) -> None:
    studies, files = _patient(tmp_path / "patient", seed=7402)
    follow_up = studies[-1]
    node_port = free_port()
    pacs = _orthanc(tmp_path, node_port)
    try:
        for uid in studies:  # the PACS has them all; the node gets only the newest
            pacs.upload(files[uid])
        # Quiet period 60 s: a study completes well before only because Orthanc counted it.
        _node_process, cfg = _node(node_factory, pacs, node_port, retrieve, quiet_s=60)
        assert storescu(cfg.node.port, files[follow_up]).returncode == 0
        sent_at = time.monotonic()
        sent, jobs, result, prefetch, studies_held = _wait_for_sr(cfg, follow_up)
        assert time.monotonic() - sent_at < 50, "completed by the count, not the quiet period"

        priors = studies[:-1][::-1][:3]  # newest first, at most max_studies_per_patient
        assert prefetch is not None and prefetch.state == "done"
        assert prefetch.priors == tuple(priors)
        assert prefetch.instances_retrieved == sum(len(files[u]) for u in priors)
        # Retrieved priors are held, marked, and queue no jobs of their own.
        for uid in priors:
            assert studies_held[uid][0] is True
        assert studies_held[follow_up][0] is False
        assert [j.study_instance_uid for j in jobs] == [follow_up]

        assert result["not_run"] == ""
        compared = [p["study_instance_uid"] for p in result["extra"]["priors"]]
        assert compared == studies[-3:-1]  # the model's max_priors = 2, oldest first
        (sr_row,) = sent
        where = pacs.find_instance(sr_row.result.sop_instance_uid)
        assert where is not None and where["study"] == follow_up
        sr = dcmread(sr_row.result.path)
        cited = {e.StudyInstanceUID for e in sr.PertinentOtherEvidenceSequence}
        assert cited == set(studies[-3:-1])
        check = validate(Path(sr_row.result.path), entity=False)
        assert check.ok, check.report()
    finally:
        pacs.stop()


def test_a_study_the_pacs_does_not_know_waits_for_the_quiet_period(
    node_factory, tmp_path: Path
) -> None:
    studies, files = _patient(tmp_path / "patient", seed=7403)
    node_port = free_port()
    pacs = _orthanc(tmp_path, node_port)
    try:
        known, unknown = studies[-1], studies[-2]
        pacs.upload(files[known])
        _node_process, cfg = _node(node_factory, pacs, node_port, "move", quiet_s=60)
        assert storescu(cfg.node.port, files[unknown] + files[known]).returncode == 0
        engine = create_sqlite_engine(cfg.storage.database_path)
        sessions = make_sessionmaker(engine)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with sessions.begin() as s:
                    state = {st.study_instance_uid: st.state for st in s.query(Study)}
                if state.get(known) == "complete":
                    break
                time.sleep(0.2)
            assert state[known] == "complete"
            assert state[unknown] == "receiving"  # Orthanc has no count: the 60 s apply
        finally:
            engine.dispose()
    finally:
        pacs.stop()


def test_pacs_down_the_job_waits_and_runs_when_it_is_back(node_factory, tmp_path: Path) -> None:
    studies, files = _patient(tmp_path / "patient", seed=7404)
    follow_up = studies[-1]
    node_port = free_port()
    pacs = _orthanc(tmp_path, node_port)
    try:
        for uid in studies[:-1]:
            pacs.upload(files[uid])
        pacs.stop()
        _node_process, cfg = _node(node_factory, pacs, node_port, "move", quiet_s=1)
        assert storescu(cfg.node.port, files[follow_up]).returncode == 0
        engine = create_sqlite_engine(cfg.storage.database_path)
        sessions = make_sessionmaker(engine)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with sessions.begin() as s:
                    prefetch = prefetch_of(s, follow_up)
                    jobs = queue.list_jobs(s)
                if prefetch and prefetch.attempts >= 2 and jobs:
                    break
                time.sleep(0.2)
            assert prefetch is not None and prefetch.state in ("pending", "running")
            assert "cannot associate with ORTHANC" in (prefetch.last_error or "")
            (job,) = jobs
            assert job.status == "todo" and "waiting for the priors" in (job.last_error or "")
        finally:
            engine.dispose()
        pacs.start()
        _sent, _jobs, result, prefetch, _held = _wait_for_sr(cfg, follow_up)
        assert prefetch is not None and prefetch.state == "done"
        assert result["not_run"] == ""
        assert [p["study_instance_uid"] for p in result["extra"]["priors"]] == studies[-3:-1]
    finally:
        pacs.stop()


def test_a_node_killed_during_a_retrieve_finishes_it_after_restart(
    node_factory, tmp_path: Path
) -> None:
    """kill -9 while C-MOVE sub-operations arrive: after restart the prior is complete, once."""
    from bench.make_study import make_ct
    from storage.lookup import held_instances

    def study(folder: Path, slices: int, seed: int, date: str) -> list[Path]:
        files = make_ct(folder, slices, seed)
        for path in files:
            ds = dcmread(path)
            ds.PatientID, ds.StudyDate = "KILL-1", date
            ds.save_as(path, enforce_file_format=True)
        return files

    prior = study(tmp_path / "prior", 120, 21, "20240105")
    follow_up = study(tmp_path / "follow-up", 10, 22, "20241120")
    prior_uid = str(dcmread(prior[0]).StudyInstanceUID)
    follow_uid = str(dcmread(follow_up[0]).StudyInstanceUID)
    node_port = free_port()
    pacs = _orthanc(tmp_path, node_port)
    try:
        pacs.upload(prior)
        node, cfg = _node(node_factory, pacs, node_port, "move", quiet_s=1)
        engine = create_sqlite_engine(cfg.storage.database_path)
        sessions = make_sessionmaker(engine)
        try:
            assert storescu(cfg.node.port, follow_up).returncode == 0
            deadline = time.monotonic() + 60
            held = 0
            while time.monotonic() < deadline:
                with sessions.begin() as s:
                    held = sum(held_instances(s, prior_uid)[0].values())
                if held >= 5:
                    break
                time.sleep(0.02)
            assert 5 <= held < len(prior), f"the retrieve was not caught in flight ({held})"
            node.kill9()
            node.start()
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                with sessions.begin() as s:
                    prefetch = prefetch_of(s, follow_uid)
                    jobs = queue.list_jobs(s)
                if jobs and jobs[0].status in ("succeeded", "dead"):
                    break
                time.sleep(0.2)
            (job,) = jobs  # the follow-up's; the prior queues none
            assert job.status == "succeeded" and job.study_instance_uid == follow_uid
            assert prefetch is not None and prefetch.state == "done"
            assert prefetch.priors == (prior_uid,)
            with sessions.begin() as s:
                counts, _ = held_instances(s, prior_uid)
                prior_row = s.query(Study).filter_by(study_instance_uid=prior_uid).one()
            assert sum(counts.values()) == len(prior)  # all of it, each once
            assert prior_row.retrieved and prior_row.instance_count == len(prior)
            held_files = list((Spool(cfg.storage.data_dir).instances_dir / prior_uid).rglob("*"))
            assert len([f for f in held_files if f.is_file()]) == len(prior)  # nothing half-kept
        finally:
            engine.dispose()
    finally:
        pacs.stop()
