"""``ainode analyze`` and ``ainode demo`` as a newcomer runs them (subprocesses, real peers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from tests.peers import StoreScp
from training.synthetic import generate_ct

ROOT = Path(__file__).resolve().parents[2]


def _ainode(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_analyze_writes_results_and_prints_findings(tmp_path: Path) -> None:
    generate_ct(tmp_path / "in", 1, 7313)
    out = tmp_path / "out"
    run = _ainode("analyze", str(tmp_path / "in" / "studies"), "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "lesion 1:" in run.stdout and "malignant" in run.stdout
    written = sorted(out.rglob("*.dcm"))
    kinds = sorted(p.name.split("_")[0] for p in written)
    assert kinds == ["PM", "SEG", "SR"]
    source = pydicom.dcmread(next((tmp_path / "in" / "studies").rglob("*.dcm")))
    for path in written:
        assert pydicom.dcmread(path).StudyInstanceUID == source.StudyInstanceUID


def test_analyze_names_a_missing_path(tmp_path: Path) -> None:
    run = _ainode("analyze", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert run.returncode == 1 and f"{tmp_path / 'nope'}: no such file or folder" in run.stderr


@pytest.mark.network
def test_demo_sends_results_to_the_given_pacs(tmp_path: Path) -> None:
    pacs = StoreScp(tmp_path / "pacs", tmp_path / "storescp.log")
    port = pacs.port
    try:
        run = _ainode(
            "demo", "--work", str(tmp_path / "demo"), "--send-to", f"PACS@127.0.0.1:{port}"
        )
    finally:
        pacs.stop()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # Every result object was delivered: each CT study an SR, a SEG and a map; the ECG an SR.
    objects = run.stdout.split("\nresult objects\n")[1]
    assert objects.count("delivered to pacs") == objects.count(".dcm") >= 4
    received = {pydicom.dcmread(p).Modality for p in (tmp_path / "pacs").iterdir()}
    assert received == {"SR", "SEG", "OT"}
    # The follow-up patient: its first study has no prior, its follow-ups are compared.
    assert "lesion-change not run: no earlier study of this patient in the store" in run.stdout
    assert run.stdout.count("lesion-change compared with") == 2


def test_demo_refuses_a_malformed_destination() -> None:
    run = _ainode("demo", "--send-to", "PACS-10.0.0.5")
    assert run.returncode == 1 and "--send-to must look like PACS@10.0.0.5:104" in run.stderr
