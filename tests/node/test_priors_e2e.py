"""Priors end to end: storescu sends a patient's studies, the worker compares each with the
earlier ones it stored, and the report of every follow-up reaches a real Orthanc.

The patient is synthetic (``generate_longitudinal``): 3-4 CT studies months apart.
The shipped lesion-change model runs on each; the first study has no prior, so the
model says why and writes nothing, while each follow-up is compared with up to two
earlier studies, newest first, found in the node's own index by Patient ID and date.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from storage import deliveries, queue
from storage.db import create_sqlite_engine, make_sessionmaker
from storage.outcomes import list_outcomes
from tests.peers import Orthanc, storescu
from training.synthetic import generate_longitudinal

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[2]


def test_follow_ups_are_compared_with_their_priors(
    node_factory, orthanc: Orthanc, tmp_path: Path
) -> None:
    labels = generate_longitudinal(tmp_path / "patient", 1, seed=7402)
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))  # in date order: the first study is the baseline
    studies = [r["study_uid"] for r in rows]
    text = f"""
{orthanc.toml_table("destinations")}
[[pipelines]]
name = "change"
models = ["{ROOT / "models" / "lesion-change"}"]
destinations = ["pacs"]
[pipelines.match]
modality = "CT"
min_instances = 8
"""
    _node, cfg = node_factory(
        text,
        pipelines="",
        inference={"workers": 1, "poll_interval_s": 0.1},
        delivery={"check_interval_s": 0.2},
    )
    files = sorted((tmp_path / "patient" / "studies").rglob("*.dcm"))
    assert storescu(cfg.node.port, files).returncode == 0

    engine = create_sqlite_engine(cfg.storage.database_path)
    sessions = make_sessionmaker(engine)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with sessions.begin() as s:
            jobs = queue.list_jobs(s)
            sent = deliveries.list_deliveries(s, limit=100)
        done = len(jobs) == len(studies) and all(j.status == "succeeded" for j in jobs)
        if done and len(sent) == len(studies) - 1 and all(d.status == "delivered" for d in sent):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"timed out: jobs {jobs}, deliveries {sent}")
    with sessions.begin() as s:
        outcomes = {o.study_instance_uid: o.result for o in list_outcomes(s)}
    engine.dispose()

    assert outcomes[studies[0]]["not_run"] == "no earlier study of this patient in the store"
    assert outcomes[studies[0]]["findings"] == []
    for t in range(1, len(studies)):
        result = outcomes[studies[t]]
        assert result["not_run"] == ""
        compared = [p["study_instance_uid"] for p in result["extra"]["priors"]]
        assert compared == studies[max(0, t - 2) : t]  # oldest first, at most two
        assert all(p["days_before"] >= 60 for p in result["extra"]["priors"])
        assert len(result["findings"]) == 3
        assert abs(sum(f["probability"] for f in result["findings"]) - 1) < 1e-3
    # One SR per follow-up, in its own study in the PACS, citing the priors it compared with.
    for row in sent:
        assert row.result.kind == "SR"
        where = orthanc.find_instance(row.result.sop_instance_uid)
        assert where is not None and where["study"] == row.result.study_instance_uid
        sr = dcmread(row.result.path)
        t = studies.index(row.result.study_instance_uid)
        assert {e.StudyInstanceUID for e in sr.PertinentOtherEvidenceSequence} == set(
            studies[max(0, t - 2) : t]
        )
    assert {row.result.study_instance_uid for row in sent} == set(studies[1:])
