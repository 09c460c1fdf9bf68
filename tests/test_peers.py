"""The test harness's peers: a port taken between choosing and binding it is not a failure."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests import peers

pytestmark = pytest.mark.network


def test_storescp_moves_to_another_port_when_its_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        busy = int(taken.getsockname()[1])
        ports = iter([busy, peers.free_port()])
        monkeypatch.setattr(peers, "free_port", lambda: next(ports))
        scp = peers.StoreScp(tmp_path / "in", tmp_path / "storescp.log")
        try:
            assert scp.port != busy and peers.echoscu(scp.port).returncode == 0
        finally:
            scp.stop()
    assert "Address already in use" in (tmp_path / "storescp.log").read_text()


def test_own_bin_folder_goes_last_so_dcmtk_comes_first() -> None:
    own = os.path.dirname(sys.executable)
    path = os.pathsep.join([own, "/usr/local/bin", "/usr/bin"])
    assert peers.own_bin_last(path) == os.pathsep.join(["/usr/local/bin", "/usr/bin", own])
    assert peers.own_bin_last("/usr/bin") == "/usr/bin"


@pytest.mark.tools("storescp")
def test_storescp_on_path_is_dcmtks_even_with_the_virtual_environment_activated() -> None:
    # PATH as `. .venv/bin/activate` leaves it: pynetdicom's Python storescp comes first
    activated = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])
    found = shutil.which("storescp", path=peers.own_bin_last(activated))
    assert found is not None
    out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
    assert "dcmtk" in (out.stdout + out.stderr).lower()
