"""ainode against real dcmtk peers over 127.0.0.1: echo, store, access control, faults."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from core.config import NodeConfig
from storage.db import create_sqlite_engine, make_sessionmaker
from storage.models import Instance, Job
from tests.corpus import corpus_files, read_header, storable
from tests.dicomgen import dataset_bytes, write_ct_series
from tests.peers import StoreScp, acknowledged, echoscu, storescu
from tests.receivers import both_receivers  # noqa: F401 (every test here on both paths)
from tests.storage.stored import files_in as _files_in

pytestmark = pytest.mark.network


def _indexed(cfg: NodeConfig) -> dict[str, Path]:
    engine = create_sqlite_engine(cfg.storage.database_path)
    try:
        with make_sessionmaker(engine).begin() as s:
            return {
                uid: Path(p)
                for uid, p in s.execute(select(Instance.sop_instance_uid, Instance.path))
            }
    finally:
        engine.dispose()


def _jobs(cfg: NodeConfig) -> list[tuple[str, str, int]]:
    engine = create_sqlite_engine(cfg.storage.database_path)
    try:
        with make_sessionmaker(engine).begin() as s:
            return [
                tuple(r)
                for r in s.execute(select(Job.study_instance_uid, Job.status, Job.completion_event))
            ]
    finally:
        engine.dispose()


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _sop_uid(path: Path) -> str:
    return str(read_header(path).SOPInstanceUID)


def test_ct_series_stored_byte_exact_indexed_completed_and_queued_once(
    node_factory, tmp_path: Path
) -> None:
    node, cfg = node_factory()
    files = write_ct_series(tmp_path / "ct", count=200, size=256)
    study_uid = str(read_header(files[0]).StudyInstanceUID)

    assert echoscu(cfg.node.port).returncode == 0
    sent = storescu(cfg.node.port, files)
    assert sent.returncode == 0, sent.stdout
    acks = acknowledged(sent.stdout)
    assert len(acks) == 200 and set(acks.values()) == {"Success"}

    indexed = _indexed(cfg)
    assert len(indexed) == 200
    for path in files:
        stored = indexed[_sop_uid(path)]
        assert dataset_bytes(stored) == dataset_bytes(path)
    assert _files_in(cfg.storage.data_dir / "tmp") == []

    jobs = _wait_for(lambda: _jobs(cfg), 30, "the completion job")
    time.sleep(cfg.completion.quiet_period_s + 1)  # no second job may follow
    assert _jobs(cfg) == jobs == [(study_uid, "todo", 1)]

    status = subprocess.run(
        [sys.executable, "-m", "node", "status", "--config", str(node.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "studies received:      1" in status
    assert "pending completion:  0" in status
    assert "instances:             200" in status
    assert "todo 1" in status
    assert node.terminate() == 0


# storescu sends a file in its own transfer syntax only when told to propose it.
_PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
}


def _corpus_by_transfer_syntax() -> dict[str, list[Path]]:
    """Storable corpus files by transfer syntax, one file per SOP Instance UID in each.

    The corpus holds the same instance in several encodings (same SOP Instance
    UID): each encoding is sent in its own group, with the node set to replace.
    """
    groups: dict[str, dict[str, Path]] = defaultdict(dict)
    for path in corpus_files():
        if storable(path):
            ds = read_header(path)
            ts = str(ds.file_meta.TransferSyntaxUID)
            if ts in _PROPOSE:
                groups[ts].setdefault(str(ds.SOPInstanceUID), path)
    return {ts: sorted(files.values()) for ts, files in groups.items()}


def test_pydicom_corpus_every_transfer_syntax_byte_identical_to_what_was_sent(
    node_factory, tmp_path: Path
) -> None:
    """Each file goes to ainode and to dcmtk storescp +B with the same options;
    what ainode stored must equal, byte for byte, what storescp received."""
    groups = _corpus_by_transfer_syntax()
    assert len(groups) >= 10, f"corpus too small: {sorted(groups)}"
    node, cfg = node_factory(storage={"on_duplicate": "replace"})
    stored_ok = 0
    for ts, files in sorted(groups.items()):
        extra = ["-R", "--no-halt", _PROPOSE[ts]]
        ref_dir = tmp_path / f"ref-{ts}"
        reference = StoreScp(ref_dir, tmp_path / f"storescp-{ts}.log")
        try:
            ours = acknowledged(storescu(cfg.node.port, files, extra=extra).stdout)
            theirs = acknowledged(storescu(reference.port, files, extra=extra).stdout)
        finally:
            reference.stop()
        assert ours == theirs, f"ainode and storescp answered differently for {ts}"
        received = {_sop_uid(p): p for p in ref_dir.iterdir()}
        indexed = _indexed(cfg)
        for path, status in ours.items():
            if status != "Success":
                continue
            uid = _sop_uid(path)
            stored = indexed[uid]
            assert dataset_bytes(stored) == dataset_bytes(received[uid]), path.name
            # Compressed data arrived compressed: no transcoding on either side.
            assert str(read_header(stored).file_meta.TransferSyntaxUID) == ts
            stored_ok += 1
    # 87 distinct instances at the time of writing; the 3 that dcmtk itself cannot
    # send fail against storescp too (checked above by ours == theirs).
    assert stored_ok >= 80, f"only {stored_ok} corpus files were stored"
    assert node.terminate() == 0


def test_access_control(node_factory) -> None:
    node, cfg = node_factory(
        "[[peers]]\nae_title = 'CT1'\n[[peers]]\nae_title = 'PACS'\nhost = '10.0.0.0/8'\n"
    )
    port = cfg.node.port
    assert echoscu(port, aet="CT1").returncode == 0
    unknown = echoscu(port, aet="INTRUDER")
    assert unknown.returncode != 0
    assert "Calling AE Title Not Recognized" in unknown.stdout + unknown.stderr
    wrong_host = echoscu(port, aet="PACS")  # allowed only from 10.0.0.0/8
    assert "Calling AE Title Not Recognized" in wrong_host.stdout + wrong_host.stderr
    wrong_called = echoscu(port, aet="CT1", aec="NOTME")
    assert "Called AE Title Not Recognized" in wrong_called.stdout + wrong_called.stderr
    assert node.terminate() == 0
    log = node.output()
    assert "calling AE 'INTRUDER' from 127.0.0.1 is not a configured peer" in log
    assert "calling AE 'PACS' from 127.0.0.1 is not allowed from this host" in log


def test_malformed_instance_refused_and_the_association_goes_on(
    node_factory, tmp_path: Path
) -> None:
    node, cfg = node_factory()
    good1, good2 = write_ct_series(tmp_path / "a", count=2)
    ds = dcmread(write_ct_series(tmp_path / "b", count=1)[0])
    del ds.StudyInstanceUID
    bad = tmp_path / "no-study-uid.dcm"
    ds.save_as(bad, enforce_file_format=True)

    sent = storescu(cfg.node.port, [good1, bad, good2], extra=["--no-halt", "-d"])
    acks = acknowledged(sent.stdout)
    assert acks == {good1: "0x0000", bad: "0xc001", good2: "0x0000"}
    assert "missing (0020,000D) Study Instance UID" in sent.stdout  # Error Comment
    assert set(_indexed(cfg)) == {_sop_uid(good1), _sop_uid(good2)}
    assert node.terminate() == 0
    assert (
        f"C-STORE refused (0xC001 missing (0020,000D) Study Instance UID): "
        f"sop={ds.SOPInstanceUID} from AE 'STORESCU'"
    ) in node.output()


def test_series_filed_under_another_study_is_refused_and_never_joins_its_jobs(
    node_factory, tmp_path: Path
) -> None:
    node, cfg = node_factory(completion={"quiet_period_s": 1})
    first = write_ct_series(tmp_path / "a", count=2, patient_id="PAT-A")
    series_uid = str(read_header(first[0]).SeriesInstanceUID)
    study_a = str(read_header(first[0]).StudyInstanceUID)
    # A broken anonymiser: another patient's study reusing the Series Instance UID.
    second = write_ct_series(tmp_path / "b", count=2, series_uid=series_uid, patient_id="PAT-B")
    study_b = str(read_header(second[0]).StudyInstanceUID)
    assert storescu(cfg.node.port, first).returncode == 0
    sent = storescu(cfg.node.port, second, extra=["--no-halt", "-d"])
    assert list(acknowledged(sent.stdout).values()) == ["0xc004", "0xc004"]
    comment = f"series is in study ..{study_a[-17:]}, not ..{study_b[-17:]}"
    assert f"[{comment}] #  64, 1 ErrorComment" in sent.stdout
    assert set(_indexed(cfg)) == {_sop_uid(p) for p in first}
    _wait_for(lambda: _jobs(cfg), 20, "the first study's job")
    assert [j[0] for j in _jobs(cfg)] == [study_a]
    assert node.terminate() == 0
    assert (
        f"series {series_uid} is already stored in study {study_a}; "
        f"this instance says study {study_b}"
    ) in node.output()


def test_disk_reserve_refuses_with_out_of_resources(node_factory, tmp_path: Path) -> None:
    node, cfg = node_factory(storage={"min_free_mb": 2**40})
    files = write_ct_series(tmp_path / "ct", count=2)
    sent = storescu(cfg.node.port, files, extra=["--no-halt", "-d"])
    acks = acknowledged(sent.stdout)
    assert list(acks.values()) == ["0xa700", "0xa700"]
    assert "disk reserve reached" in sent.stdout
    assert _indexed(cfg) == {}
    assert node.terminate() == 0


def test_sigterm_finishes_the_running_association_then_exits_zero(
    node_factory, tmp_path: Path
) -> None:
    node, cfg = node_factory(node={"listener_processes": 2})
    files = write_ct_series(tmp_path / "ct", count=150, size=256)
    sender = subprocess.Popen(
        ["storescu", "-v", "-aec", "AINODE", "127.0.0.1", str(cfg.node.port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**__import__("os").environ, "TCP_NODELAY": "1"},
    )
    _wait_for(lambda: len(_indexed(cfg)) >= 5, 30, "the first instances")
    assert node.terminate() == 0
    out, _ = sender.communicate(timeout=60)
    assert sender.returncode == 0, out
    acks = acknowledged(out)
    assert len(acks) == 150 and set(acks.values()) == {"Success"}
    assert len(_indexed(cfg)) == 150
    assert echoscu(cfg.node.port).returncode != 0  # no longer accepting
