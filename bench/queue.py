#!/usr/bin/env python3
"""Queue benchmark: claims per second on SQLite and PostgreSQL, and enqueue-to-claim latency.

Empty jobs (claim, then mark succeeded at once) by 1, 4 and 16 concurrent
workers (threads, each with its own sessions, as worker processes would), on
the embedded SQLite and on a PostgreSQL server started for the run (its own
cluster on a free loopback port, as the tests do). Every claimed job id is
recorded: a job claimed twice is printed and fails the run. Then the time from
an enqueue's commit to a waiting worker's claim: polling every second (both
databases) against LISTEN/NOTIFY (PostgreSQL).

Usage: .venv/bin/python bench/queue.py [--jobs 600]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Replace (not prepend to) the script's own folder: this file would shadow stdlib ``queue``.
sys.path[0] = str(ROOT)

from bench.study import run_threads, temp_folder  # noqa: E402
from core.config import DatabaseConfig  # noqa: E402
from core.retry import RetryPolicy  # noqa: E402
from storage import queue  # noqa: E402
from storage.db import make_sessionmaker, migrate, open_engine  # noqa: E402
from storage.dialect import JobWaiter  # noqa: E402
from tests.pg import PostgresServer  # noqa: E402  (the tests' own server harness)

POLICY = RetryPolicy(max_attempts=3, wait_s=1, backoff=1, max_wait_s=1)


def _now() -> datetime:
    return datetime.now(UTC)


def _enqueue(sessions, n: int, tag: str) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as s:
        for i in range(n):
            queue.enqueue(
                s, pipeline="p", level="study", study_instance_uid=f"{tag}.{i}",
                series_instance_uid=None, completion_event=1, priority=100, max_attempts=3,
                now=_now(),
            )  # fmt: skip


def _drain(sessions, workers: int) -> tuple[float, int, int]:  # type: ignore[no-untyped-def]
    """Claim and finish every job with ``workers`` threads: (seconds, jobs, double claims)."""
    claimed: list[list[int]] = [[] for _ in range(workers)]

    def work(k: int) -> None:
        name = f"w{k}"
        while True:
            with sessions.begin() as s:
                job = queue.claim_next(s, worker=name, lease_s=60, now=_now(), policy=POLICY)
            if job is None:
                return
            claimed[k].append(job.id)
            with sessions.begin() as s:
                queue.mark_succeeded(s, job_id=job.id, worker=name, now=_now())

    seconds = run_threads([threading.Thread(target=work, args=(k,)) for k in range(workers)])
    ids = [i for c in claimed for i in c]
    return seconds, len(ids), len(ids) - len(set(ids))


def _latency(sessions, engine, *, notify: bool, samples: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds from an enqueue's commit to a waiting worker's claim."""
    waiter = JobWaiter(engine) if notify else None
    got: list[float] = []
    stop = threading.Event()
    committed: list[float] = []
    ready = threading.Event()

    def worker() -> None:
        while len(got) < samples and not stop.is_set():
            with sessions.begin() as s:
                job = queue.claim_next(s, worker="lat", lease_s=60, now=_now(), policy=POLICY)
            if job is not None:
                got.append(time.perf_counter() - committed[-1])
                with sessions.begin() as s:
                    queue.mark_succeeded(s, job_id=job.id, worker="lat", now=_now())
                ready.set()
                continue
            ready.set()
            if waiter is not None:
                waiter.wait(1.0, stop)
            else:
                stop.wait(1.0)

    thread = threading.Thread(target=worker)
    thread.start()
    for i in range(samples):
        ready.wait(5)
        ready.clear()
        time.sleep(0.3)  # the worker is waiting again
        with sessions.begin() as s:
            queue.enqueue(
                s, pipeline="p", level="study", study_instance_uid=f"lat.{notify}.{i}",
                series_instance_uid=None, completion_event=1, priority=100, max_attempts=3,
                now=_now(),
            )  # fmt: skip
            committed.append(0.0)
        committed[-1] = time.perf_counter()
    thread.join(30)
    stop.set()
    if waiter is not None:
        waiter.close()
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=600)
    ap.add_argument("--samples", type=int, default=10)
    a = ap.parse_args(argv)
    work = temp_folder("ainode-bench-queue-")
    server = PostgresServer(temp_folder("ainode-bench-pg-")).start()
    doubles = 0
    try:
        print("| database | workers | jobs | seconds | jobs/s | double claims |")
        print("|---|---|---|---|---|---|")
        engines = {
            "SQLite": open_engine(None, work / "q.sqlite3"),
            "PostgreSQL": open_engine(DatabaseConfig(url=server.new_database()), work),
        }
        for name, engine in engines.items():
            migrate(engine)
            sessions = make_sessionmaker(engine)
            for workers in (1, 4, 16):
                _enqueue(sessions, a.jobs, f"{name}.{workers}")
                seconds, jobs, double = _drain(sessions, workers)
                doubles += double
                print(f"| {name} | {workers} | {jobs} | {seconds:.2f} | {jobs / seconds:.0f} "
                      f"| {double} |")  # fmt: skip
        print("\n| database | wake-up | median s | max s |")
        print("|---|---|---|---|")
        for name, engine in engines.items():
            sessions = make_sessionmaker(engine)
            modes = [False, True] if name == "PostgreSQL" else [False]
            for notify in modes:
                lat = _latency(sessions, engine, notify=notify, samples=a.samples)
                how = "LISTEN/NOTIFY" if notify else "polling every 1 s"
                print(f"| {name} | {how} | {statistics.median(lat):.3f} | {max(lat):.3f} |")
        for engine in engines.values():
            engine.dispose()
    finally:
        server.stop()
    if doubles:
        print(f"DOUBLE CLAIMS: {doubles}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
