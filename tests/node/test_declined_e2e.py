"""The worker end to end on a series the models were not made for: storescu -> job -> Orthanc.

A noise CT goes to ``ainode serve`` whose CT pipeline runs the shipped
lesion-seg, lesion-class and lesion-detect with ``report_declined = true``. All
three decline it; the only object that reaches the PACS (a real Orthanc) is an
SR saying so and why; ``ainode jobs`` and ``ainode status`` show the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from core.config import NodeConfig
from storage import deliveries
from storage.db import create_sqlite_engine, make_sessionmaker
from tests.peers import Orthanc, storescu
from tests.phantoms import noise_ct, write_series

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[2]


def _delivered(cfg: NodeConfig) -> list[deliveries.DeliveryRecord]:
    engine = create_sqlite_engine(cfg.storage.database_path)
    try:
        with make_sessionmaker(engine).begin() as s:
            return deliveries.list_deliveries(s, limit=100)
    finally:
        engine.dispose()


def _ainode(cfg_path: Path, *args: str) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "node", *args, "--config", str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_a_noise_ct_is_declined_and_the_pacs_gets_an_sr_saying_why(
    node_factory, orthanc: Orthanc, tmp_path: Path
) -> None:
    text = f"""
{orthanc.toml_table("destinations")}
[[pipelines]]
name = "ct"
models = [
    "{ROOT / "models" / "lesion-seg"}",
    "{ROOT / "models" / "lesion-class"}",
    "{ROOT / "models" / "lesion-detect"}",
]
destinations = ["pacs"]
report_declined = true
[pipelines.match]
modality = "CT"
"""
    tables: dict[str, dict[str, object]] = {
        "inference": {"workers": 1, "poll_interval_s": 0.1},
        "delivery": {"check_interval_s": 0.2},
    }
    node, cfg = node_factory(text, pipelines="", **tables)
    files = write_series(tmp_path / "noise", noise_ct((30, 64, 64)), (2.0, 1.2, 1.2))
    study = str(dcmread(files[0]).StudyInstanceUID)
    assert storescu(cfg.node.port, files).returncode == 0

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = _delivered(cfg)
        if rows and all(r.status == "delivered" for r in rows):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"nothing delivered: {_delivered(cfg)}")
    assert [r.result.kind for r in rows] == ["SR"]  # no SEG, no heat map, no findings
    where = orthanc.find_instance(rows[0].result.sop_instance_uid)
    assert where is not None and where["study"] == study
    sr = orthanc.read_instance(rows[0].result.sop_instance_uid)
    content = json.dumps(sr.to_json_dict())
    for model in ("lesion-seg", "lesion-class", "lesion-detect"):
        assert f"Not analysed: outside the validated input of {model} (" in content
    assert "below -500 HU" in content

    config_path = node.config
    jobs = _ainode(config_path, "jobs")
    assert "not analysed: outside the validated input of lesion-seg (" in jobs
    status = _ainode(config_path, "status")
    assert "series not analysed:   3 (outside a model's validated input)" in status
