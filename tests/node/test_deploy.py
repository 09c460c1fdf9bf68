"""What an admin installs: the systemd unit, and logs a collector can read."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from core.config import ListenerConfig
from tests.dicomgen import write_ct_series
from tests.peers import storescu

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "ainode.service"


@pytest.mark.tools("systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = tmp_path / "ainode.service"
    ainode = ROOT / ".venv" / "bin" / "ainode"
    unit.write_text(UNIT.read_text().replace("/opt/ainode/.venv/bin/ainode", str(ainode)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_systemd_unit_stops_the_main_process_and_waits_for_the_grace() -> None:
    text = UNIT.read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.MULTILINE))
    assert settings["KillMode"] == "mixed"  # SIGTERM to serve alone; it stops its children
    assert float(settings["TimeoutStopSec"]) > ListenerConfig().shutdown_grace_s + 10
    assert settings["ExecStartPre"].endswith("ainode check-config")
    assert settings["User"] == "ainode" and settings["Restart"] == "on-failure"


@pytest.mark.network
def test_json_logs_are_one_object_a_line(node_factory, tmp_path: Path) -> None:
    node, cfg = node_factory(logging={"format": "json"})
    ds = dcmread(write_ct_series(tmp_path / "ct", count=1)[0])
    del ds.StudyInstanceUID
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad, enforce_file_format=True)
    storescu(cfg.node.port, [bad])
    assert node.terminate() == 0
    lines = [line for line in node.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"time", "level", "process", "logger", "message"} <= set(records[0])
    refused = [r for r in records if "C-STORE refused" in r["message"]]
    assert refused and refused[0]["level"] == "ERROR" and refused[0]["logger"] == "node.handlers"
    assert "Test^Patient" not in node.output()  # no patient names in logs
