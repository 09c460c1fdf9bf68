"""Results back to the PACS: storescu -> ainode -> worker -> SR/SEG/PM -> a real Orthanc.

Orthanc (Debian package) runs on 127.0.0.1 with a temp config and is stopped by
PID. Its REST API tells where each result landed. The second test stops Orthanc
while results are pending, restarts ainode, and checks everything arrives once.
"""

from __future__ import annotations

import io
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from core.config import NodeConfig
from inference.execute import ATTENTION_LEVELS
from storage import deliveries, queue
from storage.db import create_sqlite_engine, make_sessionmaker
from storage.deliveries import DeliveryRecord
from tests.dicomgen import write_lesion_ct
from tests.packages import threshold_segmenter
from tests.peers import HungPeer, Orthanc, free_port, storescu
from tests.receivers import RECEIVERS

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[2]
# Within the shipped lesion-class package's validated spacing (its domain.json).
_SPACING = (2.0, 1.2, 1.2)


def _config(package: Path, pacs: Orthanc) -> tuple[str, dict[str, dict[str, object]]]:
    text = f"""
{pacs.toml_table("destinations")}
[[pipelines]]
name = "lesions"
models = ["{package}", "{ROOT / "models" / "lesion-class"}"]
destinations = ["pacs"]
series_number = 800
[pipelines.match]
modality = "CT"
min_instances = 2
"""
    tables: dict[str, dict[str, object]] = {
        "inference": {"workers": 1, "poll_interval_s": 0.1},
        "delivery": {"check_interval_s": 0.2, "retry_wait_s": 0.5, "retry_backoff": 1.0},
    }
    return text, tables


def _state(cfg: NodeConfig) -> tuple[list, list[DeliveryRecord]]:
    engine = create_sqlite_engine(cfg.storage.database_path)
    try:
        with make_sessionmaker(engine).begin() as s:
            return queue.list_jobs(s), deliveries.list_deliveries(s, limit=1000)
    finally:
        engine.dispose()


def _wait(cfg: NodeConfig, done, what: str, timeout: float = 180) -> list[DeliveryRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs, rows = _state(cfg)
        if done(jobs, rows):
            return rows
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {_state(cfg)}")


def _send_lesion_ct(cfg: NodeConfig, tmp_path: Path) -> str:
    """storescu a CT with lesions to the node; its Study Instance UID."""
    files, _truth = write_lesion_ct(tmp_path / "ct", spacing=_SPACING)
    assert storescu(cfg.node.port, files).returncode == 0
    return str(dcmread(files[0]).StudyInstanceUID)


def _delivered(study_uid: str, count: int):
    def done(_jobs, rows: list[DeliveryRecord]) -> bool:
        mine = [r for r in rows if r.result.study_instance_uid == study_uid]
        return len(mine) == count and all(r.status == "delivered" for r in mine)

    return done


def test_results_arrive_in_orthanc_in_the_source_study(
    node_factory, orthanc: Orthanc, tmp_path: Path
) -> None:
    package = threshold_segmenter(tmp_path / "pkg", threshold_hu=120)
    text, tables = _config(package, orthanc)
    _node, cfg = node_factory(text, pipelines="", **tables)
    study = _send_lesion_ct(cfg, tmp_path)

    rows = _wait(cfg, _delivered(study, 3), "SR, SEG and PM delivered")
    kinds = {}
    for row in rows:
        where = orthanc.find_instance(row.result.sop_instance_uid)
        assert where is not None, f"{row.result.kind} not in Orthanc"
        assert where["study"] == study
        kinds[row.result.kind] = where["modality"]
        assert row.attempts == 1 and row.last_status == 0
    assert kinds == {"SR": "SR", "SEG": "SEG", "PM": "OT"}
    # Sent straight from the files (chunked, not re-encoded): Orthanc keeps the same data.
    for row in rows:
        (instance,) = orthanc.post(
            "/tools/find",
            {"Level": "Instance", "Query": {"SOPInstanceUID": row.result.sop_instance_uid}},
        )
        with urllib.request.urlopen(
            f"http://127.0.0.1:{orthanc.http_port}/instances/{instance}/file", timeout=30
        ) as r:
            kept = dcmread(io.BytesIO(r.read()))
        assert kept == dcmread(row.result.path)  # every element, pixels included


def test_pacs_down_then_back_across_a_node_restart(
    node_factory, orthanc: Orthanc, tmp_path: Path
) -> None:
    package = threshold_segmenter(tmp_path / "pkg", threshold_hu=120)
    text, tables = _config(package, orthanc)
    node, cfg = node_factory(text, pipelines="", **tables)
    first, _ = write_lesion_ct(tmp_path / "ct1", seed=1, spacing=_SPACING)
    second, _ = write_lesion_ct(tmp_path / "ct2", seed=2, spacing=_SPACING)
    study1, study2 = (str(dcmread(f[0]).StudyInstanceUID) for f in (first, second))

    assert storescu(cfg.node.port, first).returncode == 0
    _wait(cfg, _delivered(study1, 3), "first study delivered")
    orthanc.stop()

    assert storescu(cfg.node.port, second).returncode == 0

    def failing(jobs, rows) -> bool:
        mine = [r for r in rows if r.result.study_instance_uid == study2]
        return len(mine) == 3 and all(r.status == "pending" and r.attempts >= 2 for r in mine)

    rows = _wait(cfg, failing, "deliveries to the stopped PACS to fail and wait")
    waiting = [r for r in rows if r.result.study_instance_uid == study2]
    assert all(
        f"cannot associate with ORTHANC@127.0.0.1:{orthanc.dicom_port}" in (r.last_error or "")
        for r in waiting
    )

    assert node.terminate() == 0  # results pending while the node is down
    orthanc.start()
    node.start()
    rows = _wait(cfg, _delivered(study2, 3), "pending results delivered after restart")

    everything = [r for r in _state(cfg)[1]]
    assert len(everything) == 6 and all(r.status == "delivered" for r in everything)
    for row in everything:
        where = orthanc.find_instance(row.result.sop_instance_uid)
        assert where is not None and where["copies"] == "1"
    # Orthanc stored each result exactly once (plus the two source studies it never got).
    assert orthanc.new_instance_events() == 6


def test_a_hung_destination_does_not_hold_up_the_others(
    node_factory, orthanc: Orthanc, tmp_path: Path
) -> None:
    hung = HungPeer()
    try:
        package = threshold_segmenter(tmp_path / "pkg", threshold_hu=120)
        text, tables = _config(package, orthanc)
        text = text.replace('destinations = ["pacs"]', 'destinations = ["hung", "pacs"]')
        text += (
            f'\n[[destinations]]\nname = "hung"\nae_title = "HUNG"\n'
            f'host = "127.0.0.1"\nport = {hung.port}\n'
        )
        tables["delivery"] |= {"connect_timeout_s": 120, "dimse_timeout_s": 120}
        _node, cfg = node_factory(text, pipelines="", **tables)
        files, _ = write_lesion_ct(tmp_path / "ct", spacing=_SPACING)
        study = str(dcmread(files[0]).StudyInstanceUID)
        assert storescu(cfg.node.port, files).returncode == 0

        def pacs_done(_jobs, rows: list[DeliveryRecord]) -> bool:
            mine = [r for r in rows if r.destination == "pacs"]
            return len(mine) == 3 and all(r.status == "delivered" for r in mine)

        # Well inside the hung destination's 120 s association timeout.
        rows = _wait(cfg, pacs_done, "deliveries to the PACS beside a hung one", timeout=90)
        assert hung.connections >= 1
        assert all(r.status == "pending" for r in rows if r.destination == "hung")
        assert {r.result.study_instance_uid for r in rows} == {study}
    finally:
        hung.stop()


_DELETE_FIRST_SEG = """
deleted = false
function OnStoredInstance(instanceId, tags, metadata, origin)
  if not deleted and tags['Modality'] == 'SEG' then
    deleted = true
    Delete(instanceId)
  end
end
"""


@pytest.mark.parametrize("receiver", RECEIVERS)  # the report comes in on the listener
def test_storage_commitment_confirms_and_a_failed_reference_is_sent_again(
    node_factory, tmp_path: Path
) -> None:
    """Orthanc commits the results; the SEG it lost before committing is sent and asked again.

    Orthanc's Lua hook deletes the first SEG it stores, so its storage
    commitment report names that SEG failed (no such object instance): ainode
    sends it again, asks again, and every delivery ends ``confirmed``.
    """
    node_port = free_port()
    lua = tmp_path / "delete-first-seg.lua"
    lua.write_text(_DELETE_FIRST_SEG)
    pacs = Orthanc(
        tmp_path / "orthanc",
        dicom_port=free_port(),
        http_port=free_port(),
        extra={
            "DicomModalities": {
                "ainode": {"AET": "AINODE", "Host": "127.0.0.1", "Port": node_port}
            },
            "LuaScripts": [str(lua)],
        },
    ).start()
    try:
        package = threshold_segmenter(tmp_path / "pkg", threshold_hu=120)
        text, tables = _config(package, pacs)
        text = text.replace(
            f"port = {pacs.dicom_port}\n",
            f"port = {pacs.dicom_port}\nstorage_commitment = true\ncommitment_timeout_s = 120\n",
            1,
        )
        # Orthanc reports on an association of its own: it must be a peer.
        text += '\n[[peers]]\nae_title = "STORESCU"\n\n[[peers]]\nae_title = "ORTHANC"\n'
        node, cfg = node_factory(text, pipelines="", node={"port": node_port}, **tables)
        assert cfg.destination("pacs").storage_commitment
        study = _send_lesion_ct(cfg, tmp_path)

        def confirmed(_jobs, rows: list[DeliveryRecord]) -> bool:
            return len(rows) == 3 and all(r.status == "confirmed" for r in rows)

        rows = _wait(cfg, confirmed, "SR, SEG and PM confirmed by storage commitment")
        by_kind = {r.result.kind: r for r in rows}
        assert by_kind["SR"].attempts == 1 and by_kind["PM"].attempts == 1
        seg = by_kind["SEG"]
        assert seg.attempts == 2, seg
        # The failed commitment is what made it go again.
        assert "SEG" in node.output() and "did not commit it: failure reason 0x" in node.output()
        for row in rows:
            where = pacs.find_instance(row.result.sop_instance_uid)
            assert where is not None and where["study"] == study
    finally:
        pacs.stop()


def test_heat_map_deflated_for_one_destination_and_off_for_another(
    node_factory, orthanc: Orthanc, tmp_path: Path
) -> None:
    """heat_map = "deflated": the map travels deflated (and compresses); "off": no map sent."""
    package = threshold_segmenter(tmp_path / "pkg", threshold_hu=120)
    text, tables = _config(package, orthanc)
    text = text.replace(
        f"port = {orthanc.dicom_port}\n", f'port = {orthanc.dicom_port}\nheat_map = "deflated"\n', 1
    )
    text = text.replace('destinations = ["pacs"]', 'destinations = ["pacs", "viewer"]')
    text += "\n" + orthanc.toml_table("destinations", "viewer", heat_map="off")
    _node, cfg = node_factory(text, pipelines="", **tables)
    study = _send_lesion_ct(cfg, tmp_path)

    def done(_jobs, rows: list[DeliveryRecord]) -> bool:
        return len(rows) == 5 and all(r.status == "delivered" for r in rows)

    rows = _wait(cfg, done, "SR, SEG, PM to pacs and SR, SEG to viewer")
    assert sorted(r.result.kind for r in rows if r.destination == "viewer") == ["SEG", "SR"]
    (pm,) = [r for r in rows if r.result.kind == "PM"]
    assert pm.destination == "pacs"
    found = orthanc.post(
        "/tools/find",
        {"Level": "Instance", "Query": {"SOPInstanceUID": pm.result.sop_instance_uid}},
    )
    (instance,) = found
    stored = orthanc.get(f"/instances/{instance}/metadata?expand")
    assert stored["TransferSyntax"] == "1.2.840.10008.1.2.1.99"
    # The map the PACS keeps is the one written, value for value (deflate is lossless).
    with urllib.request.urlopen(
        f"http://127.0.0.1:{orthanc.http_port}/instances/{instance}/file", timeout=30
    ) as r:
        kept = dcmread(io.BytesIO(r.read()))
    assert kept.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    written = dcmread(pm.result.path).pixel_array
    assert np.array_equal(kept.pixel_array, written)
    # Its values are in steps of 1/ATTENTION_LEVELS, which is what lets Deflate shrink
    # a float map (raw model floats lose about a third): here to under a tenth.
    assert np.array_equal(written * ATTENTION_LEVELS, np.rint(written * ATTENTION_LEVELS))
    raw = written.astype("<f4").tobytes()
    assert len(zlib.compress(raw)) < len(raw) / 10
    assert orthanc.find_instance(pm.result.sop_instance_uid)["study"] == study
