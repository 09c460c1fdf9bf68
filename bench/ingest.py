#!/usr/bin/env python3
"""Ingest benchmark: ainode against dcmtk storescp and Orthanc, same data, one run.

Data come from bench/make_study.py (200-slice 512x512 CT, 1000 small
64x64 instances). Each receiver starts fresh for every run; the sender is dcmtk
``storescu`` with TCP_NODELAY=1. Reported: median instances/s and MB/s over the
runs, the receiver's peak RSS, and ainode's ratio to each anchor. Every run is
verified: the receiver must hold every instance sent. The runs are interleaved:
round after round, every receiver once, the order turned by one each round, so a
machine that drifts during the benchmark favours none of them (run in blocks,
the same code measured 0.70x against Orthanc with four senders where the
interleaved rounds of the same hour gave 0.95x).

Nothing a run wrote is deleted before the whole benchmark ends. On ext4 without
a journal (this project's test machines) the kernel will not reuse an inode
freed a short while ago (minutes), and checks the recently freed ones it
meets one by one on each file it creates: after a run's thousand files were
deleted, creating a file in the next run took ~0.4 ms instead of ~0.02 ms
(``perf``: ``recently_deleted`` under the inode allocator; four minutes
later, fast again). Which receiver paid that depended on where its folders
landed, not on how it stores.

Note: storescp never fsyncs (the speed of light); Orthanc (default settings) and
ainode do, so Orthanc is the like-for-like peer. The "durable floor" row is no
receiver: the same files written, fsynced and renamed into place by a plain loop
(one thread per sender) in the same run, what durability alone costs here.

ainode runs with each ``[node] receiver`` asked for (``--receivers``):
pynetdicom, and dcmtk's libdcmnet through node/native (its rows say "dcmtk").

Usage: .venv/bin/python bench/ingest.py [--runs 3] [--processes 1,2] [--skip-orthanc]
                                        [--database sqlite,postgresql]
                                        [--receivers pynetdicom,dcmtk]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/ itself: bench/queue.py would shadow the stdlib queue

from bench.study import run_threads, temp_folder  # noqa: E402
from tests.peers import DCMTK_ENV  # noqa: E402

GENERATOR = ROOT / "bench" / "make_study.py"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_echo(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}")
        echo = subprocess.run(
            ["echoscu", "-aec", "AINODE", "127.0.0.1", str(port)],
            capture_output=True,
            env=DCMTK_ENV,
        )
        if echo.returncode == 0:
            return
        time.sleep(0.1)
    raise TimeoutError("receiver did not answer C-ECHO")


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a process and its children (ainode's listener processes)."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(c) for c in children.read_text().split()]
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


@dataclass
class Receiver:
    name: str
    start: Callable[[Path, int], subprocess.Popen[bytes]]
    count: Callable[[Path, int], int]


def start_storescp(work: Path, port: int) -> subprocess.Popen[bytes]:
    out = work / "storescp"
    out.mkdir()
    return subprocess.Popen(
        ["storescp", "+xa", "-aet", "AINODE", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=DCMTK_ENV,
    )


def count_storescp(work: Path, port: int) -> int:
    return sum(1 for _ in (work / "storescp").iterdir())


def start_orthanc(work: Path, port: int) -> subprocess.Popen[bytes]:
    http = free_port()
    (work / "orthanc.http").write_text(str(http))
    config = {
        "Name": "bench",
        "DicomAet": "AINODE",
        "DicomPort": port,
        "HttpPort": http,
        "StorageDirectory": str(work / "orthanc-storage"),
        "IndexDirectory": str(work / "orthanc-index"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "Plugins": [],
        "ConcurrentJobs": 2,
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    return subprocess.Popen(
        ["Orthanc", str(work / "orthanc.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=DCMTK_ENV,  # dcmtk inside
    )


def count_orthanc(work: Path, port: int) -> int:
    http = (work / "orthanc.http").read_text()
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/statistics", timeout=30) as r:
        return int(json.load(r)["CountInstances"])


def ainode_receiver(
    processes: int, new_database: Callable[[], str] | None = None, *, receiver: str = "pynetdicom"
) -> Receiver:
    """ainode with ``processes`` listener processes of ``[node] receiver``; its index on
    SQLite, or on a fresh PostgreSQL database per run (``new_database`` gives its URL)."""

    def start(work: Path, port: int) -> subprocess.Popen[bytes]:
        cfg = work / "config.toml"
        database = f'[database]\nurl = "{new_database()}"\n' if new_database else ""
        cfg.write_text(
            f'[node]\nport = {port}\nlistener_processes = {processes}\nreceiver = "{receiver}"\n'
            f'[storage]\ndata_dir = "data"\n{database}'
            f'[logging]\nlevel = "WARNING"\n[web]\nenabled = false\n'
            f'[[pipelines]]\nname = "default"\n'
        )
        return subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )

    def count(work: Path, port: int) -> int:
        out = subprocess.run(
            [sys.executable, "-m", "node", "status", "--config", str(work / "config.toml")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout
        line = next(x for x in out.splitlines() if x.startswith("instances:"))
        return int(line.split()[1])

    where = " (PostgreSQL)" if new_database else ""
    which = " dcmtk" if receiver == "dcmtk" else ""
    return Receiver(f"ainode{which} x{processes}{where}", start, count)


def send(port: int, files: list[Path], senders: int) -> float:
    chunks = [files[i::senders] for i in range(senders)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aec", "AINODE", "127.0.0.1", str(port), *map(str, chunk)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=DCMTK_ENV,
        )
        for chunk in chunks
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - t0


def durable_floor(files: list[Path], writers: int, scratch: Path) -> float:
    """Seconds to make the same files durable with nothing else: per file a write to a
    temporary name, fsync, rename into its series folder, fsync of that folder (what
    ainode's store does to a file, without DICOM, parsing or an index), by ``writers``
    threads at once (fsync releases the GIL), as many as there are senders."""
    import threading

    from pydicom import dcmread

    work = Path(tempfile.mkdtemp(prefix="floor-", dir=scratch))
    (work / "tmp").mkdir()
    items = []
    for f in files:  # read before the clock starts: a receiver gets the bytes from the wire
        series = str(dcmread(f, stop_before_pixels=True).SeriesInstanceUID)
        (work / series).mkdir(exist_ok=True)
        items.append((f.read_bytes(), work / series / f.name))

    def write(share: list[tuple[bytes, Path]], n: int) -> None:
        for k, (data, final) in enumerate(share):
            staged = work / "tmp" / f"{n}.{k}.part"
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(staged, final)
            folder = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    seconds = run_threads(
        [threading.Thread(target=write, args=(items[n::writers], n)) for n in range(writers)]
    )
    stored = sum(1 for d in work.iterdir() if d.name != "tmp" for _ in d.iterdir())
    if stored != len(files):
        raise RuntimeError(f"durable floor: {stored} of {len(files)} files in place")
    return seconds


FLOOR = "durable floor (write+fsync+rename)"


def run_once(rx: Receiver, files: list[Path], senders: int, scratch: Path) -> tuple[float, float]:
    work = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    port = free_port()
    proc = rx.start(work, port)
    try:
        wait_echo(port, proc)
        seconds = send(port, files, senders)
        got = rx.count(work, port)
        if got != len(files):
            raise RuntimeError(f"{rx.name}: {got} of {len(files)} instances stored")
        return seconds, peak_rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--processes", default="1,2", help="ainode listener processes to try")
    ap.add_argument("--skip-orthanc", action="store_true")
    ap.add_argument(
        "--receivers", default="pynetdicom,dcmtk", help="ainode's [node] receiver(s) to try"
    )
    ap.add_argument("--data", type=Path, help="reuse data made by make_study.py")
    ap.add_argument(
        "--database",
        default="sqlite",
        help="ainode's index: sqlite, postgresql, or both (a server started for the run)",
    )
    a = ap.parse_args(argv)
    server = None
    if "postgresql" in a.database:
        from tests.pg import PostgresServer  # the tests' own server harness

        server = PostgresServer(temp_folder("ingest-pg-")).start()
    runs = Path(tempfile.mkdtemp(prefix="ingest-runs-"))  # every run's folder, kept to the end
    try:
        return _run(a, server, runs)
    finally:
        shutil.rmtree(runs, ignore_errors=True)
        if server is not None:
            server.stop()


def _run(a: argparse.Namespace, server: object, scratch: Path) -> int:

    data = a.data or temp_folder("ingest-data-")
    if not ((data / "ct").is_dir() and (data / "small").is_dir()):
        subprocess.run(
            [sys.executable, str(GENERATOR), "--out", str(data)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    ct, small = sorted((data / "ct").glob("*.dcm")), sorted((data / "small").glob("*.dcm"))
    sets = {  # named after what they hold, so a smaller --data run is not mislabelled
        f"CT {len(ct)}x512²": (ct, 1),
        f"{len(small)} small": (small, 1),
        f"{len(small)} small, 4 senders": (small, 4),
    }
    receivers = [Receiver("storescp (no fsync)", start_storescp, count_storescp)]
    if not a.skip_orthanc and shutil.which("Orthanc"):
        receivers.append(Receiver("Orthanc (fsync)", start_orthanc, count_orthanc))
    kinds = [(int(n), r) for r in a.receivers.split(",") for n in a.processes.split(",")]
    if "sqlite" in a.database:
        receivers += [ainode_receiver(n, receiver=r) for n, r in kinds]
    if server is not None:
        new_database = server.new_database  # type: ignore[attr-defined]
        receivers += [ainode_receiver(n, new_database, receiver=r) for n, r in kinds]

    # Round after round, each receiver (and the durable floor) once per round, the order
    # turned by one each round: what drifts on a shared machine over a benchmark (other
    # load, the disk's cache, recently freed inodes) falls on every receiver alike
    # instead of on whichever ran its runs last.
    names = [FLOOR] + [rx.name for rx in receivers]
    by_name = {rx.name: rx for rx in receivers}
    results: dict[str, dict[str, tuple[float, float, float]]] = {n: {} for n in names}
    rounds: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for label, (files, senders) in sets.items():
        mb = sum(f.stat().st_size for f in files) / 1e6
        seconds: dict[str, list[float]] = {n: [] for n in names}
        rss: dict[str, float] = dict.fromkeys(names, 0.0)
        for r in range(a.runs):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                # storescp never fsyncs: up to half a gigabyte of its writes can still be
                # waiting for the kernel's writeback, which would then compete with the
                # next receiver's fsyncs. Each run starts with nothing dirty.
                os.sync()
                if name == FLOOR:
                    seconds[name].append(durable_floor(files, senders, scratch))
                    continue
                secs, peak = run_once(by_name[name], files, senders, scratch)
                seconds[name].append(secs)
                rss[name] = max(rss[name], peak)
        for name in names:
            secs = statistics.median(seconds[name])
            results[name][label] = (len(files) / secs, mb / secs, rss[name])
            rounds[name][label] = [len(files) / x for x in seconds[name]]
            memory = "" if name == FLOOR else f"  peak RSS {rss[name]:5.0f} MiB"
            print(
                f"  {name:22} {label:24} {len(files) / secs:7.0f} inst/s "
                f"{mb / secs:6.1f} MB/s{memory}",
                file=sys.stderr,
            )

    print(
        f"\nIngest over 127.0.0.1, storescu TCP_NODELAY=1, median of {a.runs} runs "
        f"(receivers interleaved, round by round), {os.cpu_count()} cores\n"
    )
    header = "| receiver | " + " | ".join(sets) + " | peak RSS |"
    print(header)
    print("|" + "---|" * (len(sets) + 2))
    for name, row in results.items():
        cells = [f"{v[0]:.0f}/s, {v[1]:.0f} MB/s" for v in row.values()]
        peak = max(v[2] for v in row.values())
        memory = "—" if name == FLOOR else f"{peak:.0f} MiB"
        print(f"| {name} | " + " | ".join(cells) + f" | {memory} |")
    for name in [n for n in results if n.endswith("(PostgreSQL)")]:
        sqlite = name.removesuffix(" (PostgreSQL)")
        if sqlite in results:
            ratios = [results[name][s][0] / results[sqlite][s][0] for s in sets]
            print(f"\n{name} / {sqlite}: " + ", ".join(f"{r:.2f}x" for r in ratios))
    ainodes = [n for n in results if n.startswith("ainode")]
    anchors = [n for n in results if not n.startswith("ainode")]
    print(
        "\nainode's ratio to each anchor (instances/s; medians, then in brackets the "
        "lowest and highest of the rounds' own ratios):\n"
    )
    print("| ainode vs | " + " | ".join(sets) + " |")
    print("|" + "---|" * (len(sets) + 1))
    for ours in ainodes:
        for anchor in anchors:
            cells = []
            for s in sets:
                paired = [x / y for x, y in zip(rounds[ours][s], rounds[anchor][s], strict=True)]
                ratio = results[ours][s][0] / results[anchor][s][0]
                cells.append(f"{ratio:.2f}x ({min(paired):.2f}-{max(paired):.2f})")
            print(f"| {ours} / {anchor} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
