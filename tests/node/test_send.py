"""Delivery outcomes by DIMSE status, against a small pynetdicom C-STORE SCP of the tests.

The SCP answers every C-STORE with a chosen status (and Error Comment); it is
a project-written fake for unit tests of the classification, not a stand-in for
a PACS (the end-to-end tests use Orthanc). ``deliver_due`` runs in-process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy.orm import Session, sessionmaker

import node.send
from core.clock import utc_now
from core.config import NodeConfig
from core.config_file import load_config
from node.commitment import STORAGE_COMMITMENT
from node.delivery import deliver_due
from node.send import DEFLATED, classify_status, deflated_copy, settle_reactor
from storage import deliveries, queue
from tests.dicomgen import ct_slice
from tests.peers import free_port


class StatusScp:
    """``commitment``: also take Storage Commitment requests (kept in ``actions``), never report."""

    def __init__(self, status: int, comment: str = "", *, commitment: bool = False) -> None:
        self.received: list[str] = []
        self.actions: list[Dataset] = []
        self.port = free_port()
        ae = AE(ae_title="FAKEPACS")
        ae.add_supported_context(CTImageStorage)
        if commitment:
            ae.add_supported_context(STORAGE_COMMITMENT)

        def action(event: evt.Event) -> tuple[int, None]:
            self.actions.append(event.action_information)
            return 0x0000, None

        def store(event: evt.Event) -> Dataset:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
            reply = Dataset()
            reply.Status = status
            if comment:
                reply.ErrorComment = comment
            return reply

        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, store), (evt.EVT_N_ACTION, action)],
        )

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def scp_factory() -> Iterator:
    started: list[StatusScp] = []

    def factory(status: int, comment: str = "", *, commitment: bool = False) -> StatusScp:
        scp = StatusScp(status, comment, commitment=commitment)
        started.append(scp)
        return scp

    yield factory
    for scp in started:
        scp.stop()


def setup_results(
    write_config,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    port: int,
    n: int = 2,
    destination: str = "",
) -> NodeConfig:
    """``n`` result objects queued for the destination "pacs" (``destination``: more keys)."""
    path = write_config(
        f"""
[[destinations]]
name = "pacs"
ae_title = "FAKEPACS"
host = "127.0.0.1"
port = {port}
{destination}
""",
        storage={"data_dir": "data"},
        delivery={"max_attempts": 3, "retry_wait_s": 0},
    )
    (tmp_path / "data").mkdir(exist_ok=True)
    cfg = load_config(path)
    now = utc_now()
    with sessions.begin() as s:
        job = queue.enqueue(
            s,
            pipeline="p",
            level="study",
            study_instance_uid="1.2.3",
            series_instance_uid=None,
            completion_event=1,
            priority=1,
            max_attempts=1,
            now=now,
        )
        for k in range(n):
            ds = ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=k)
            file = tmp_path / f"r{k}.dcm"
            ds.save_as(file, enforce_file_format=True)
            deliveries.record_result(
                s,
                job_id=job.job.id,
                pipeline="p",
                kind="SR",
                study_instance_uid="1.2.3",
                series_instance_uid="1.2.3.4",
                source_series_instance_uid="1.2.3.5",
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                path=str(file),
                size_bytes=file.stat().st_size,
                destinations=["pacs"],
                max_attempts=3,
                now=now,
            )
    return cfg


def rows_of(sessions: sessionmaker[Session]) -> list[deliveries.DeliveryRecord]:
    with sessions.begin() as s:
        return deliveries.list_deliveries(s)


def test_status_classification() -> None:
    assert classify_status(0x0000) == (True, False)
    assert classify_status(0xB000) == (True, False)  # coercion warning: delivered
    assert classify_status(0xA700) == (False, True)  # out of resources: retry
    assert classify_status(0x0110) == (False, True)  # processing failure: retry
    assert classify_status(0xA900) == (False, False)  # data set does not match
    assert classify_status(0xC123) == (False, False)  # cannot understand
    assert classify_status(0x0122) == (False, False)  # SOP class not supported


def test_refusal_is_dead_at_once_with_status_and_comment(
    write_config, sessions, tmp_path: Path, scp_factory
) -> None:
    scp = scp_factory(0xC123, "no such patient here")
    cfg = setup_results(write_config, sessions, tmp_path, scp.port)
    assert deliver_due(cfg, sessions, "pacs") == 0
    rows = rows_of(sessions)
    assert len(scp.received) == 2
    for row in rows:
        assert row.status == "dead" and row.attempts == 1 and row.last_status == 0xC123
        assert row.last_error == "status 0xC123: no such patient here"
    assert deliver_due(cfg, sessions, "pacs") == 0 and len(scp.received) == 2  # not sent again
    with sessions.begin() as s:
        assert deliveries.replay_delivery(s, delivery_id=rows[0].id, now=utc_now())
    assert deliver_due(cfg, sessions, "pacs") == 0 and len(scp.received) == 3


def test_out_of_resources_retries_then_dead(
    write_config, sessions, tmp_path: Path, scp_factory
) -> None:
    scp = scp_factory(0xA700)
    cfg = setup_results(write_config, sessions, tmp_path, scp.port, n=1)
    for attempt in (1, 2):
        deliver_due(cfg, sessions, "pacs")
        (row,) = rows_of(sessions)
        assert row.status == "pending" and row.attempts == attempt
    deliver_due(cfg, sessions, "pacs")
    (row,) = rows_of(sessions)
    assert row.status == "dead" and row.attempts == 3 and row.last_status == 0xA700
    assert len(scp.received) == 3


def test_success_and_warning_are_delivered_once(
    write_config, sessions, tmp_path: Path, scp_factory
) -> None:
    scp = scp_factory(0xB000)
    cfg = setup_results(write_config, sessions, tmp_path, scp.port)
    assert deliver_due(cfg, sessions, "pacs") == 2
    rows = rows_of(sessions)
    assert all(r.status == "delivered" and r.last_status == 0xB000 for r in rows)
    assert deliver_due(cfg, sessions, "pacs") == 0 and len(scp.received) == 2


# pynetdicom shuts down but never closes the socket of a refused connection
# (transport.py, AssociationSocket.connect): the GC then warns about it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unreachable_destination_waits_by_the_policy(
    write_config, sessions, tmp_path: Path
) -> None:
    cfg = setup_results(write_config, sessions, tmp_path, free_port(), n=1)
    deliver_due(cfg, sessions, "pacs")
    (row,) = rows_of(sessions)
    assert row.status == "pending" and row.attempts == 1 and row.last_status is None
    assert "cannot associate with FAKEPACS@127.0.0.1" in (row.last_error or "")


def test_results_sent_are_audited(write_config, sessions, tmp_path: Path, scp_factory) -> None:
    """DICOM Instances Transferred, action R, naming the PACS and the study."""
    from node.audit import parse_frame

    scp = scp_factory(0x0000)
    cfg = setup_results(write_config, sessions, tmp_path, scp.port)
    assert deliver_due(cfg, sessions, "pacs") == 2
    assert cfg.audit is not None
    frames = cfg.audit.file.read_text().splitlines()
    begin, frame = frames  # Begin Transferring, then Instances Transferred
    assert "110102" in begin
    _pri, _msgid, msg = parse_frame(frame)
    event = msg.find("EventIdentification")
    assert event is not None and event.get("EventActionCode") == "R"
    assert next(p.get("UserID") for p in msg.iter("ActiveParticipant")) == "FAKEPACS"
    study = next(msg.iter("ParticipantObjectIdentification"))
    assert study.get("ParticipantObjectID") == "1.2.3"
    assert [s.get("NumberOfInstances") for s in study.iter("SOPClass")] == ["2"]


def test_a_deflated_copy_is_the_file_value_for_value_and_smaller(tmp_path: Path) -> None:
    """heat_map = "deflated" sends a copy deflated as it streams, never decoding the dataset."""
    ds = ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=0, size=256)
    ds.PixelData = np.repeat(np.arange(256, dtype=np.uint16), 256).tobytes()  # smooth: compresses
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    original = tmp_path / "map.dcm"
    ds.save_as(original, enforce_file_format=True)
    with deflated_copy(original) as copy:
        assert copy.stat().st_size < original.stat().st_size / 10
        sent = pydicom.dcmread(copy)
        assert sent.file_meta.TransferSyntaxUID == DEFLATED
        assert sent.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert sent.SOPInstanceUID == ds.SOPInstanceUID and sent.PixelData == ds.PixelData
    assert not copy.exists()  # gone once sent


class _Reactor:
    """Stands in for a pynetdicom association's reactor flag (a unit test of the wait)."""

    def __init__(self, paused: bool, *, established: bool = True) -> None:
        self._is_paused = paused
        self.is_established = established


def test_settle_waits_until_the_reactor_has_run(monkeypatch: pytest.MonkeyPatch) -> None:
    woken = _Reactor(paused=True)  # paused until a send returned; the reactor runs 50 ms later
    timer = threading.Timer(0.05, lambda: setattr(woken, "_is_paused", False))
    start = time.monotonic()
    timer.start()
    settle_reactor(woken)
    assert woken._is_paused is False and time.monotonic() - start >= 0.04
    # Already running, gone, or a pynetdicom without the flag: no wait.
    for assoc in (_Reactor(paused=False), _Reactor(paused=True, established=False), object()):
        start = time.monotonic()
        settle_reactor(assoc)
        assert time.monotonic() - start < 0.02
    # A reactor that never runs holds the sender for a bounded time only.
    monkeypatch.setattr(node.send, "_SETTLE_S", 0.05)
    start = time.monotonic()
    settle_reactor(_Reactor(paused=True))
    assert 0.05 <= time.monotonic() - start < 1.0
