"""The test harness's peers: a port taken between choosing and binding it is not a failure."""

from __future__ import annotations

import socket
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
