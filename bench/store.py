#!/usr/bin/env python3
"""The C-STORE logic without the network: node.receive.receive_instance on small instances.

What the receive path costs in Python (validate, write, fsync, index), apart from
any DICOM network library: bench/make_study.py's 1000 small instances are read
into memory and stored with ``receive_instance`` into a fresh data folder and
SQLite index (or a PostgreSQL database on a server started for the run), from one
thread and from four (group commit shares transactions between them). Prints the
median instances/s of ``--runs`` runs each.

Usage: .venv/bin/python bench/store.py [--runs 3] [--threads 1,4] [--database sqlite]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/ itself: bench/queue.py would shadow the stdlib queue

from pynetdicom.dsutils import split_dataset  # noqa: E402

from core.config import DuplicatePolicy  # noqa: E402
from node.receive import ReceiveDeps, receive_instance  # noqa: E402
from storage.db import (  # noqa: E402
    DatabaseConfig,
    create_sqlite_engine,
    make_sessionmaker,
    migrate,
    open_engine,
)
from storage.spool import Spool  # noqa: E402
from tests.pg import PostgresServer  # noqa: E402  (the tests' own server harness)

Item = tuple[bytes, str, str, str]


def _items(folder: Path) -> list[Item]:
    """Each file's dataset bytes (after its File Meta Information) and its UIDs."""
    items = []
    for path in sorted(folder.rglob("*.dcm")):
        meta, start = split_dataset(path)
        items.append(
            (path.read_bytes()[start:], str(meta.TransferSyntaxUID),
             meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID)
        )  # fmt: skip
    return items


def _run(items: list[Item], threads: int, work: Path, database_url: str | None) -> float:
    work.mkdir(parents=True)
    if database_url is None:
        engine = create_sqlite_engine(work / "index.sqlite3")
    else:
        engine = open_engine(DatabaseConfig(url=database_url), work / "unused.sqlite3")
    migrate(engine)
    spool = Spool(work / "data")
    spool.prepare()
    deps = ReceiveDeps(
        spool=spool,
        sessions=make_sessionmaker(engine),
        on_duplicate=DuplicatePolicy.KEEP,
        min_free_bytes=0,
    )

    def store(part: list[Item]) -> None:
        for raw, syntax, sop_class, sop_instance in part:
            receive_instance(
                deps,
                dataset=raw,
                transfer_syntax_uid=syntax,
                requested_sop_class_uid=sop_class,
                requested_sop_instance_uid=sop_instance,
                calling_ae_title="BENCH",
            )

    workers = [threading.Thread(target=store, args=(items[i::threads],)) for i in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - start
    engine.dispose()
    return len(items) / seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", default="1,4")
    ap.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ainode-store-") as tmp:
        server = None
        if args.database == "postgresql":
            Path(tmp).chmod(0o755)  # the server runs as the postgres user
            server = PostgresServer(Path(tmp) / "pg").start()
        try:
            _bench(args, Path(tmp), server)
        finally:
            if server is not None:
                server.stop()
    return 0


def _bench(args: argparse.Namespace, tmp: Path, server: PostgresServer | None) -> None:
    data = tmp / "study"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "make_study.py"), "--out", str(data),
         "--ct-slices", "0", "--small-count", "1000"],
        check=True, capture_output=True,
    )  # fmt: skip
    items = _items(data / "small")
    for threads in (int(t) for t in args.threads.split(",")):
        # Every run in a folder of its own (and on PostgreSQL a database of its own), all
        # deleted at the end: on ext4 without a journal, files made right after a thousand
        # were deleted cost ~20x more to create (bench/ingest.py says why).
        rates = [
            _run(
                items,
                threads,
                tmp / f"node-{threads}-{n}",
                None if server is None else server.new_database(),
            )
            for n in range(args.runs)
        ]
        runs = ", ".join(f"{r:.0f}" for r in rates)
        print(
            f"{len(items)} small instances, {threads} thread(s), {args.database}: "
            f"{statistics.median(rates):.0f} instances/s (median of {runs})"
        )


if __name__ == "__main__":
    raise SystemExit(main())
