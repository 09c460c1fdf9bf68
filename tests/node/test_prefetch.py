"""Prefetch against sources that fail: an error status, malformed identifiers, nobody there.

The source here is a small pynetdicom C-FIND SCP written for these tests (it
answers what each test tells it to); the end-to-end proof against a real PACS
is tests/node/test_prefetch_e2e.py (Orthanc). ``run_prefetches`` runs in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)
from sqlalchemy.orm import Session, sessionmaker

from core.clock import utc_now
from core.config import NodeConfig
from core.config_file import load_config
from node.prefetch import reset_prefetches, run_prefetches
from node.report import status_report
from node.server import make_deps
from storage import prefetches
from tests.peers import free_port


class FindScp:
    """Answers every C-FIND with ``matches`` (pending) and then ``status``."""

    def __init__(self, status: int, matches: list[Dataset]) -> None:
        self.port = free_port()
        self.queries: list[str] = []
        ae = AE(ae_title="FAKEPACS")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)

        def find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
            self.queries.append(str(event.identifier.QueryRetrieveLevel))
            for match in matches:
                yield 0xFF00, match
            yield status, None

        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_FIND, find)]
        )

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def scps() -> Iterator[list[FindScp]]:
    started: list[FindScp] = []
    yield started
    for scp in started:
        scp.stop()


def _config(write_config, tmp_path: Path, port: int) -> NodeConfig:
    path = write_config(
        f"""
[[sources]]
name = "pacs"
ae_title = "FAKEPACS"
host = "127.0.0.1"
port = {port}
max_attempts = 2
retry_wait_s = 0
connect_timeout_s = 2

[[pipelines]]
name = "change"
priors_from = ["pacs"]
""",
        storage={"data_dir": "data", "min_free_mb": 0},
    )
    (tmp_path / "data").mkdir(exist_ok=True)
    return load_config(path)


def _queue(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        prefetches.request_prefetch(
            s,
            study_instance_uid="1.2.3",
            patient_id="P1",
            study_date="20240301",
            want_priors=True,
            now=utc_now(),
        )


def _row(sessions: sessionmaker[Session]) -> prefetches.PrefetchRecord:
    with sessions.begin() as s:
        row = prefetches.prefetch_of(s, "1.2.3")
    assert row is not None
    return row


def test_error_status_ends_the_prefetch_at_once_and_says_why(
    write_config, sessions, tmp_path: Path, scps: list[FindScp]
) -> None:
    scp = FindScp(0xC001, [])
    scps.append(scp)
    cfg = _config(write_config, tmp_path, scp.port)
    _queue(sessions)
    assert run_prefetches(cfg, sessions, make_deps(cfg, sessions)) == 1
    row = _row(sessions)
    assert row.state == "failed" and row.attempts == 1  # retrying does not help
    assert row.last_error == "C-FIND at pacs failed: status 0xC001"
    assert run_prefetches(cfg, sessions, make_deps(cfg, sessions)) == 0
    report = status_report(sessions)
    assert "prefetches:            failed 1" in report
    assert "failed prefetch for study 1.2.3: C-FIND at pacs failed: status 0xC001" in report


def test_malformed_identifiers_end_the_prefetch(
    write_config, sessions, tmp_path: Path, scps: list[FindScp]
) -> None:
    bad = Dataset()
    bad.QueryRetrieveLevel = "SERIES"
    bad.SeriesInstanceUID = ""  # every match must name its series
    bad.Modality = "CT"
    bad.NumberOfSeriesRelatedInstances = "12"
    scp = FindScp(0x0000, [bad])
    scps.append(scp)
    cfg = _config(write_config, tmp_path, scp.port)
    _queue(sessions)
    run_prefetches(cfg, sessions, make_deps(cfg, sessions))
    row = _row(sessions)
    assert row.state == "failed"
    assert row.last_error == "C-FIND at pacs: a match with SeriesInstanceUID ''"


# pynetdicom never closes the socket of a refused connection (see test_send.py).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_source_that_is_down_is_tried_again_then_given_up(
    write_config, sessions, tmp_path: Path
) -> None:
    cfg = _config(write_config, tmp_path, free_port())
    _queue(sessions)
    deps = make_deps(cfg, sessions)
    run_prefetches(cfg, sessions, deps)
    row = _row(sessions)
    assert row.state == "pending" and row.attempts == 1
    assert "cannot associate with FAKEPACS@127.0.0.1" in (row.last_error or "")
    run_prefetches(cfg, sessions, deps)
    row = _row(sessions)
    assert row.state == "failed" and row.attempts == 2  # max_attempts = 2


def test_a_prefetch_cut_off_by_a_stop_runs_again(write_config, sessions, tmp_path: Path) -> None:
    _queue(sessions)
    with sessions.begin() as s:
        (_claimed,) = prefetches.claim_due(s, now=utc_now())
    assert _row(sessions).state == "running"
    reset_prefetches(sessions)
    assert _row(sessions).state == "pending"


@pytest.mark.network
def test_the_job_runs_without_priors_and_says_why(
    node_factory, tmp_path: Path, scps: list[FindScp]
) -> None:
    """A node whose source answers C-FIND with an error: the model's outcome names it."""
    import time

    from storage.db import create_sqlite_engine, make_sessionmaker
    from storage.outcomes import list_outcomes
    from tests.peers import storescu
    from training.synthetic import generate_longitudinal

    scp = FindScp(0xC001, [])
    scps.append(scp)
    generate_longitudinal(tmp_path / "patient", 1, seed=7405)
    first_study = tmp_path / "patient" / "studies" / "0000" / "0"
    models = Path(__file__).resolve().parents[2] / "models" / "lesion-change"
    _node, cfg = node_factory(
        f"""
[[sources]]
name = "pacs"
ae_title = "FAKEPACS"
host = "127.0.0.1"
port = {scp.port}

[[pipelines]]
name = "change"
models = ["{models}"]
priors_from = ["pacs"]
[pipelines.match]
modality = "CT"
""",
        pipelines="",
        inference={"workers": 1, "poll_interval_s": 0.1},
        completion={"quiet_period_s": 1, "check_interval_s": 0.2},
    )
    assert storescu(cfg.node.port, sorted(first_study.rglob("*.dcm"))).returncode == 0
    engine = create_sqlite_engine(cfg.storage.database_path)
    try:
        deadline = time.monotonic() + 120
        outcomes: list = []
        while time.monotonic() < deadline and not outcomes:
            with make_sessionmaker(engine).begin() as s:
                outcomes = list_outcomes(s)
            time.sleep(0.2)
        (outcome,) = outcomes
        assert outcome.result["not_run"] == (
            "no earlier study of this patient in the store; priors not retrieved from pacs: "
            "C-FIND at pacs failed: status 0xC001"
        )
    finally:
        engine.dispose()
