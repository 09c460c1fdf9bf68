"""``ainode serve`` on a real PostgreSQL server: receive, complete, queue, run, report.

Two listener processes and a worker share one PostgreSQL database (the
shape of a scaled-out node, on one host); storescu sends two studies at once.
Then the refusals: an unreachable server (named by host and port) and a schema
older than the code (naming ``ainode db upgrade``, which fixes it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.config import DatabaseConfig
from storage import queue
from storage.db import make_sessionmaker, migrate, open_engine
from tests.dicomgen import write_lesion_ct
from tests.packages import threshold_segmenter
from tests.peers import NodeProcess, free_port, storescu
from tests.pg import PostgresServer

pytestmark = pytest.mark.network


def _ainode(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _worker(config: Path, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """``ainode worker`` in the background; its output goes to ``log`` (or nowhere)."""
    with open(log, "ab") if log else open(os.devnull, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "node", "worker", "--config", str(config), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Callable[[str], sessionmaker[Session]]]:
    """``index(url)``: sessions on that database, disposed after the test whatever it did
    (an engine left open fails a later test with psycopg's unraisable-warning)."""
    engines: list[Engine] = []

    def open_(url: str) -> sessionmaker[Session]:
        engines.append(open_engine(DatabaseConfig(url=url), tmp_path))
        return make_sessionmaker(engines[-1])

    yield open_
    for engine in engines:
        engine.dispose()


def _shared_nodes(tmp_path: Path, url: str, extra: str) -> list[NodeProcess]:
    """Two ``serve`` processes, own ports and configs, one database and one data folder."""
    nodes = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        port = free_port()
        (folder / "config.toml").write_text(
            f"[node]\nport = {port}\n[storage]\ndata_dir = '{tmp_path / 'shared'}'\n"
            f"min_free_mb = 0\n[database]\nurl = '{url}'\n[web]\nenabled = false\n{extra}"
        )
        nodes.append(NodeProcess(folder / "config.toml", port, folder / "node.log").start())
    return nodes


def test_serve_on_postgresql_receives_queues_and_runs(
    node_factory, postgres: PostgresServer, index, tmp_path: Path
) -> None:
    url = postgres.new_database()
    package = threshold_segmenter(tmp_path / "pkg", threshold_hu=120)
    pipelines = f'\n[[pipelines]]\nname = "lesions"\nmodels = ["{package}"]\n'
    node, cfg = node_factory(
        pipelines=pipelines,
        database={"url": url},
        node={"listener_processes": 2},
        inference={"workers": 1, "poll_interval_s": 0.1},
    )
    studies = [write_lesion_ct(tmp_path / f"ct{n}", seed=n)[0] for n in range(2)]
    results: list[subprocess.CompletedProcess[str]] = []
    senders = [
        threading.Thread(target=lambda f=f: results.append(storescu(cfg.node.port, f)))
        for f in studies
    ]
    for t in senders:
        t.start()
    for t in senders:
        t.join(120)
    refused = [r.stdout[-1500:] for r in results if r.returncode != 0]
    assert len(results) == 2 and not refused, f"{refused}\n{node.output()[-3000:]}"

    sessions = index(url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with sessions.begin() as s:
            jobs = queue.list_jobs(s)
        if len(jobs) == 2 and all(j.status == "succeeded" for j in jobs):
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"jobs not done on PostgreSQL: {jobs}\n{node.output()[-3000:]}")
    status = _ainode(node.config, "status")
    assert status.returncode == 0, status.stderr
    assert f"PostgreSQL postgres@127.0.0.1:{postgres.port}/" in status.stdout
    assert "instances:             80" in status.stdout
    assert "succeeded 2" in status.stdout


def test_serve_refuses_an_unreachable_server_naming_it(node_factory, tmp_path: Path) -> None:
    port = free_port()
    node, _cfg = node_factory(
        database={"url": f"postgresql+psycopg://ainode@127.0.0.1:{port}/ainode"}, start=False
    )
    run = _ainode(node.config, "serve")
    assert run.returncode == 1
    assert f"PostgreSQL ainode@127.0.0.1:{port}/ainode" in run.stderr
    assert "Traceback" not in run.stderr


def test_an_older_schema_is_refused_until_db_upgrade(
    node_factory, postgres: PostgresServer
) -> None:
    url = postgres.new_database()
    engine = open_engine(DatabaseConfig(url=url), Path("unused"))
    migrate(engine, "0003")  # what an older ainode left
    engine.dispose()
    node, _cfg = node_factory(database={"url": url}, start=False)
    refused = _ainode(node.config, "serve")
    assert refused.returncode == 1
    assert "is at revision 0003, older than" in refused.stderr
    assert "run `ainode db upgrade`" in refused.stderr
    current = _ainode(node.config, "db", "current")
    assert "schema at 0003 (this ainode's is" in current.stdout, current.stdout + current.stderr
    upgraded = _ainode(node.config, "db", "upgrade")
    assert "schema upgraded from 0003 to" in upgraded.stdout, upgraded.stderr
    node.start()  # now it serves
    assert "(current)" in _ainode(node.config, "db", "current").stdout


def test_two_listeners_and_three_workers_share_one_database_and_store(
    postgres: PostgresServer, index, orthanc, tmp_path: Path
) -> None:
    """Two ``serve`` listeners on two ports (no workers) and three ``ainode worker`` processes
    share one PostgreSQL database and one data folder; storescu sends six studies split
    across both listeners. Each study gets one job per pipeline, each job succeeds on its
    first attempt, and every result reaches a real Orthanc exactly once.
    """
    from storage import deliveries

    url = postgres.new_database()
    package = threshold_segmenter(tmp_path / "pkg", threshold_hu=120)
    nodes = _shared_nodes(
        tmp_path,
        url,
        "[completion]\nquiet_period_s = 2\ncheck_interval_s = 0.2\n"
        "[inference]\nworkers = 0\npoll_interval_s = 0.5\n"
        "[delivery]\ncheck_interval_s = 0.1\n"
        + orthanc.toml_table("destinations")
        + f'[[pipelines]]\nname = "lesions"\nmodels = ["{package}"]\ndestinations = ["pacs"]\n',
    )
    logs = [tmp_path / f"worker{n}.log" for n in range(3)]
    workers = [_worker(nodes[n % 2].config, log=logs[n]) for n in range(3)]
    try:
        senders = []
        sent: dict[int, subprocess.CompletedProcess[str]] = {}
        for n in range(6):
            files, _ = write_lesion_ct(tmp_path / f"ct{n}", seed=10 + n)
            port = nodes[n % 2].port

            def send(n: int = n, port: int = port, files: list[Path] = files) -> None:
                sent[n] = storescu(port, files)

            senders.append(threading.Thread(target=send))
        for t in senders:
            t.start()
        for t in senders:
            t.join(180)
        refused = {n: r.stdout[-1500:] for n, r in sent.items() if r.returncode != 0}
        assert len(sent) == 6 and not refused, refused
        sessions = index(url)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with sessions.begin() as s:
                rows = deliveries.list_deliveries(s, limit=100)
                jobs = queue.list_jobs(s)
            if len(rows) == 12 and all(r.status == "delivered" for r in rows):
                break
            time.sleep(0.3)
        else:
            states = [(j.id, j.study_instance_uid[-6:], j.status, j.attempts) for j in jobs]
            said = "\n".join(
                f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}"
                for log in [n.log for n in nodes] + logs
            )
            raise AssertionError(
                f"not delivered: {[(r.id, r.status) for r in rows]}\njobs {states}\n{said}"
            )
        time.sleep(1.0)  # a second send, if any, would land now
        assert len(jobs) == 6 and len({j.study_instance_uid for j in jobs}) == 6
        assert all(j.status == "succeeded" and j.attempts == 1 for j in jobs)
        assert all(r.attempts == 1 for r in rows)
        assert orthanc.new_instance_events() == 12  # SR and SEG per study
        # Orthanc takes a second copy of an instance silently: the nodes' own logs say
        # how many times anything was sent.
        sends = sum(n.output().count(" to pacs: delivered") for n in nodes)
        assert sends == 12, sends
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(30)
        for node in nodes:
            node.stop()


def test_an_idle_worker_wakes_when_a_job_is_queued(
    node_factory, postgres: PostgresServer, index, tmp_path: Path
) -> None:
    """LISTEN/NOTIFY: with a 60 s poll interval the job still starts within seconds."""
    url = postgres.new_database()
    package = threshold_segmenter(tmp_path / "pkg", threshold_hu=120)
    node, cfg = node_factory(
        pipelines=f'\n[[pipelines]]\nname = "lesions"\nmodels = ["{package}"]\n',
        database={"url": url},
        inference={"workers": 1, "poll_interval_s": 60},
    )
    time.sleep(1.0)  # the worker has polled once and is waiting
    files, _ = write_lesion_ct(tmp_path / "ct")
    assert storescu(cfg.node.port, files).returncode == 0
    sent = time.monotonic()
    sessions = index(url)
    while time.monotonic() - sent < 40:
        with sessions.begin() as s:
            jobs = queue.list_jobs(s)
        if jobs and jobs[0].status == "succeeded":
            break
        time.sleep(0.2)
    took = time.monotonic() - sent
    assert jobs and jobs[0].status == "succeeded", node.output()[-2000:]
    # Quiet period 2 s, a check every 0.2 s, the job itself: far below the 60 s poll.
    assert took < 15, took


def test_a_worker_host_runs_its_pipelines_and_the_roster_shows_every_process(
    node_factory, postgres: PostgresServer, index, tmp_path: Path
) -> None:
    """A listener host (serve, no worker) and a GPU-host-style ``ainode worker --pipelines``."""
    url = postgres.new_database()
    package = threshold_segmenter(tmp_path / "pkg", threshold_hu=120)
    pipelines = (
        f'\n[[pipelines]]\nname = "lesions"\nmodels = ["{package}"]\n'
        f'[[pipelines]]\nname = "other"\nmodels = ["{package}"]\n'
    )
    node, cfg = node_factory(
        pipelines=pipelines, database={"url": url}, inference={"workers": 0, "poll_interval_s": 0.2}
    )
    for bad, message in (
        (["--pipelines", "nope"], "--pipelines: nope not in [[pipelines]] (lesions, other)"),
        (["--device", "gpu"], '--device: must be "auto", "cpu", "cuda" or "cuda:N"'),
    ):
        refused = _ainode(node.config, "worker", *bad)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    worker = _worker(node.config, "--pipelines", "lesions", "--device", "cpu")
    try:
        files, _ = write_lesion_ct(tmp_path / "ct")
        assert storescu(cfg.node.port, files).returncode == 0
        sessions = index(url)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with sessions.begin() as s:
                jobs = {j.pipeline: j.status for j in queue.list_jobs(s)}
            if jobs.get("lesions") == "succeeded":
                break
            time.sleep(0.3)
        # Only its own pipeline: "other" waits for a worker that runs it.
        assert jobs == {"lesions": "succeeded", "other": "todo"}, jobs
        status = _ainode(node.config, "status").stdout
        assert "processes:             2 running" in status, status
        assert "serve " in status and "worker " in status
        assert "on cpu: lesions, last seen" in status
        assert "NOT SEEN" not in status
    finally:
        worker.terminate()
        worker.wait(30)


def test_a_database_outage_is_answered_0xa701_and_the_node_recovers_by_itself(
    node_factory, postgres: PostgresServer, tmp_path: Path
) -> None:
    from tests.dicomgen import write_ct_series
    from tests.peers import acknowledged

    url = postgres.new_database()
    node, cfg = node_factory(database={"url": url})
    assert storescu(cfg.node.port, write_ct_series(tmp_path / "a", count=2)).returncode == 0
    postgres.pause()
    try:
        during = write_ct_series(tmp_path / "b", count=2)
        sent = storescu(cfg.node.port, during, extra=["--no-halt", "-d"])
        assert list(acknowledged(sent.stdout).values()) == ["0xa701", "0xa701"], sent.stdout
        assert "index unavailable" in sent.stdout  # the Error Comment
    finally:
        postgres.resume()
    # No restart of the node: its pool reconnects (pre-ping) on the next store.
    assert storescu(cfg.node.port, write_ct_series(tmp_path / "c", count=2)).returncode == 0
    assert node.proc is not None and node.proc.poll() is None
    status = _ainode(node.config, "status").stdout
    assert "instances:             4" in status, status  # what was acknowledged, and only that


def test_a_worker_killed_mid_job_leaves_it_to_another(
    node_factory, postgres: PostgresServer, index, tmp_path: Path
) -> None:
    """kill -9 the worker that holds a job: its lease runs out and another worker redoes it."""
    url = postgres.new_database()
    package = threshold_segmenter(tmp_path / "pkg", threshold_hu=120)
    node, cfg = node_factory(
        pipelines=f'\n[[pipelines]]\nname = "lesions"\nmodels = ["{package}"]\n',
        database={"url": url},
        queue={"lease_s": 3, "lease_check_interval_s": 0.5},
        inference={"workers": 0, "poll_interval_s": 0.2, "heartbeat_s": 1},
    )

    first = _worker(node.config)
    sessions = index(url)
    second = None
    try:
        files, _ = write_lesion_ct(tmp_path / "ct", shape=(160, 256, 256))  # seconds of work
        assert storescu(cfg.node.port, files).returncode == 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sessions.begin() as s:
                jobs = queue.list_jobs(s)
            if jobs and jobs[0].status == "doing":
                break
            time.sleep(0.05)
        assert jobs and jobs[0].status == "doing", jobs
        first.kill()  # kill -9, mid-job
        first.wait(10)
        second = _worker(node.config)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with sessions.begin() as s:
                jobs = queue.list_jobs(s)
            if jobs[0].status == "succeeded":
                break
            time.sleep(0.2)
        assert jobs[0].status == "succeeded" and jobs[0].attempts == 2, jobs
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_kill_9_of_one_listener_loses_nothing_it_acknowledged_and_the_other_receives(
    postgres: PostgresServer, index, tmp_path: Path
) -> None:
    from pydicom import dcmread
    from sqlalchemy import select

    from storage.models import Instance
    from tests.dicomgen import dataset_bytes, write_ct_series
    from tests.peers import DCMTK_ENV, acknowledged

    url = postgres.new_database()
    nodes = _shared_nodes(tmp_path, url, "[inference]\nworkers = 0\n")
    a, b = nodes
    try:
        files = write_ct_series(tmp_path / "big", count=200, size=256)
        sender = subprocess.Popen(
            ["storescu", "-v", "-aec", "AINODE", "127.0.0.1", str(a.port), *map(str, files)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV,
        )  # fmt: skip
        sessions = index(url)

        def indexed() -> dict[str, Path]:
            with sessions.begin() as s:
                rows = s.execute(select(Instance.sop_instance_uid, Instance.path))
                return {u: Path(p) for u, p in rows}

        deadline = time.monotonic() + 60
        while len(indexed()) < 40:  # kill in the middle of the association
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.02)
        a.kill9()
        out, _ = sender.communicate(timeout=60)
        acked = {p for p, status in acknowledged(out).items() if status == "Success"}
        assert 0 < len(acked) < len(files), "the kill must land mid-association"
        # The other listener keeps receiving.
        other = write_ct_series(tmp_path / "other", count=5)
        assert storescu(b.port, other).returncode == 0
        stored = indexed()
        for path in acked | set(other):
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert uid in stored, f"acknowledged {path.name} lost"
            assert dataset_bytes(stored[uid]) == dataset_bytes(path)
    finally:
        for node in nodes:
            node.stop()
