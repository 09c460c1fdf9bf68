"""serve's children: a broken package gives a slow, logged restart loop, never a tight one."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from node.supervise import MAX_BACKOFF_S, backoff_s
from tests.packages import threshold_segmenter

pytestmark = pytest.mark.network


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_s(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_s(30) == MAX_BACKOFF_S


def _children(pid: int) -> list[int]:
    """Spawned multiprocessing children of ``pid`` (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and "spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def test_a_worker_that_keeps_dying_is_restarted_with_growing_delays(
    node_factory, tmp_path: Path
) -> None:
    package = threshold_segmenter(tmp_path / "pkg")
    node, _cfg = node_factory(
        inference={"workers": 1},
        pipelines=f"\n[[pipelines]]\nname = 'ct'\nmodels = ['{package}']\n",
    )
    assert node.proc is not None
    deadline = time.monotonic() + 60
    while "model(s) loaded" not in node.output():  # serve answers C-ECHO before that
        assert time.monotonic() < deadline, node.output()[-3000:]
        time.sleep(0.2)
    (worker,) = _children(node.proc.pid)
    # The package breaks while the node runs; then its worker dies.
    with open(package / "weights.pt", "ab") as f:
        f.write(b"corrupted")
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 60
    delays: list[str] = []
    while time.monotonic() < deadline and len(delays) < 3:
        delays = re.findall(
            r"worker-1 died \(exit code -?\d+\).*restarting in ([\d.]+) s", node.output()
        )
        time.sleep(0.2)
    assert delays[:3] == ["0.5", "1.0", "2.0"], node.output()[-3000:]
    # The restarts say why they fail: the child's own reason, not a bare exit code.
    assert "does not match [model] sha256" in node.output()
    assert node.terminate() == 0
