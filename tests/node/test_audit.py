"""The audit trail: DICOM audit messages (PS3.15 A.5) over syslog, to a real collector.

A small collector in the test (UDP, or TCP with RFC 6587 octet counting)
receives what the node sends while dcmtk stores a study and an unknown caller
is refused. Each frame must be RFC 5424 with an XML AuditMessage naming the
right event, participants, study and patient.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pydicom import dcmread

from node.audit import parse_frame
from tests.dicomgen import write_ct_series
from tests.peers import SyslogReceiver, echoscu, free_port, storescu
from tests.receivers import both_receivers  # noqa: F401 (every test here on both paths)

pytestmark = pytest.mark.network

RFC5424 = re.compile(r"^<(\d+)>1 \S+Z \S+ ainode \d+ DICOM\+RFC3881 - <AuditMessage>")


def _events(frames: list[str]) -> list[tuple[str, str, ET.Element]]:
    """(EventID code, EventTypeCode code or "", message) of each frame."""
    found = []
    for frame in frames:
        assert RFC5424.match(frame), frame[:120]
        _pri, _msgid, msg = parse_frame(frame)
        event = msg.find("EventIdentification")
        assert event is not None
        code = event.find("EventID").get("csd-code")  # type: ignore[union-attr]
        kind = event.find("EventTypeCode")
        found.append((code, "" if kind is None else kind.get("csd-code", ""), msg))
    return found


def _peers() -> str:
    return '\n[[peers]]\nae_title = "STORESCU"\n[[peers]]\nae_title = "ECHOSCU"\n'


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_audit_messages_reach_the_collector(node_factory, tmp_path: Path, transport) -> None:
    collector = SyslogReceiver(transport)
    try:
        node, cfg = node_factory(
            _peers(), audit={"syslog": f"{transport}://127.0.0.1:{collector.port}"}
        )
        files = write_ct_series(tmp_path / "ct", count=2, patient_id="PAT-77")
        ds = dcmread(files[0])
        assert storescu(cfg.node.port, files).returncode == 0
        assert echoscu(cfg.node.port, aet="INTRUDER").returncode != 0
        assert node.terminate() == 0
        frames = collector.wait_for(lambda f: any("110121" in x for x in f))
    finally:
        collector.stop()
    events = _events(frames)
    codes = [(c, k) for c, k, _ in events]
    assert codes[0] == ("110100", "110120") and codes[-1] == ("110100", "110121")
    (refused,) = [m for c, k, m in events if (c, k) == ("110113", "110126")]
    users = [p.get("UserID") for p in refused.iter("ActiveParticipant")]
    assert "INTRUDER" in users
    assert refused.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
    (begun,) = [m for c, _k, m in events if c == "110102"]
    assert next(begun.iter("ParticipantObjectIdentification")).get("ParticipantObjectID") == str(
        ds.StudyInstanceUID
    )
    (stored,) = [m for c, _k, m in events if c == "110104"]
    assert stored.find("EventIdentification").get("EventActionCode") == "C"  # type: ignore[union-attr]
    objects = {
        o.get("ParticipantObjectTypeCode"): o
        for o in stored.iter("ParticipantObjectIdentification")
    }
    assert objects["2"].get("ParticipantObjectID") == str(ds.StudyInstanceUID)
    assert objects["1"].get("ParticipantObjectID") == "PAT-77"
    (sop,) = objects["2"].iter("SOPClass")
    assert sop.get("UID") == str(ds.SOPClassUID) and sop.get("NumberOfInstances") == "2"
    source = [p for p in stored.iter("ActiveParticipant") if p.get("UserID") == "STORESCU"]
    assert source and source[0].get("UserIsRequestor") == "true"
    # The local audit file holds the same frames, one a line.
    local = cfg.audit.file.read_text().splitlines()
    assert sorted(local) == sorted(frames)
    assert "Test^Patient" not in node.output()  # operational logs: no patient names


def test_a_collector_that_is_down_gets_the_backlog_when_back(node_factory, tmp_path: Path) -> None:
    port = free_port()
    node, cfg = node_factory(audit={"syslog": f"tcp://127.0.0.1:{port}"})
    assert storescu(cfg.node.port, write_ct_series(tmp_path / "ct", count=2)).returncode == 0
    time.sleep(1.5)  # the sender has tried and failed at least once
    assert "audit target tcp://127.0.0.1" in node.output()
    collector = SyslogReceiver("tcp", port)
    try:
        frames = collector.wait_for(lambda f: len(f) >= 3, timeout=30)
        assert node.terminate() == 0
        frames = collector.wait_for(lambda f: any("110121" in x for x in f))
    finally:
        collector.stop()
    codes = [c for c, _k, _m in _events(frames)]
    # In order, nothing lost, nothing twice: start, begin, transferred, stop.
    assert codes == ["110100", "110102", "110104", "110100"]
