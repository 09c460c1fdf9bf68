"""serve's children: a broken package gives a slow, logged restart loop, never a tight one."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from node.supervise import MAX_BACKOFF_S, backoff_s
from storage.db import create_sqlite_engine, make_sessionmaker
from storage.models import Job
from tests.dicomgen import write_ct_series
from tests.packages import slow_segmenter, threshold_segmenter
from tests.peers import storescu

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


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone, only not reaped


def _job(cfg) -> tuple[str, int, str | None, str | None] | None:
    engine = create_sqlite_engine(cfg.storage.database_path)
    try:
        with make_sessionmaker(engine).begin() as s:
            row = s.execute(
                select(Job.status, Job.attempts, Job.lease_owner, Job.last_error)
            ).first()
            return None if row is None else tuple(row)  # type: ignore[return-value]
    finally:
        engine.dispose()


def _slow_node(node_factory, tmp_path: Path, **node: object):
    package = slow_segmenter(tmp_path / "slow")
    proc, cfg = node_factory(
        node={"listener_processes": 2, "shutdown_grace_s": 3, **node},
        inference={"workers": 1, "poll_interval_s": 0.1},
        completion={"quiet_period_s": 0.5},
        pipelines=f"\n[[pipelines]]\nname = 'ct'\nmodels = ['{package}']\n",
    )
    deadline = time.monotonic() + 60
    while "model(s) loaded" not in proc.output():
        assert time.monotonic() < deadline, proc.output()[-3000:]
        time.sleep(0.2)
    assert storescu(cfg.node.port, write_ct_series(tmp_path / "ct", count=4)).returncode == 0
    while (job := _job(cfg)) is None or job[0] != "doing":
        assert time.monotonic() < deadline, (job, proc.output()[-3000:])
        time.sleep(0.1)
    return proc, cfg


def test_kill_9_of_serve_takes_every_child_with_it(node_factory, tmp_path: Path) -> None:
    node, _cfg = _slow_node(node_factory, tmp_path)  # a worker busy in a long forward pass
    assert node.proc is not None
    children = _children(node.proc.pid)
    assert len(children) == 3  # two listeners, one worker
    node.kill9_main_only()  # serve only: its children are not signalled
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in children if _alive(pid)] == []


def test_sigterm_stops_a_busy_worker_within_the_grace_and_releases_its_job(
    node_factory, tmp_path: Path
) -> None:
    node, cfg = _slow_node(node_factory, tmp_path)
    assert node.proc is not None
    children = _children(node.proc.pid)
    start = time.monotonic()
    assert node.terminate(timeout=30) == 0
    took = time.monotonic() - start
    assert took < 3 + 5, f"serve took {took:.1f} s with shutdown_grace_s = 3"
    assert [pid for pid in children if _alive(pid)] == []
    status, attempts, owner, error = _job(cfg) or ("?", -1, "?", "?")
    assert (status, attempts, owner) == ("todo", 0, None)  # claimable at once, not counted
    assert "which was stopping" in (error or "")
    assert "released: this worker is stopping before it finished" in node.output()


def test_sigusr1_writes_where_each_thread_waits_and_serve_goes_on(
    node_factory, tmp_path: Path
) -> None:
    node, cfg = node_factory(node={"listener_processes": 2})
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 20
    while "most recent call first" not in node.output():
        assert time.monotonic() < deadline, "no stacks written after SIGUSR1"
        time.sleep(0.1)
    time.sleep(0.5)  # the rest of the dump
    main = r"Current thread .*\n(  File .*\n)*  File .*service\.py.* in serve"
    assert re.search(main, node.output())
    assert node.proc.poll() is None  # it goes on: stores, then stops as usual
    assert storescu(cfg.node.port, write_ct_series(tmp_path / "ct", count=1)).returncode == 0
    assert node.terminate() == 0
