"""Garbage on the DICOM port (a vulnerability scanner) must not lock out the scanners.

Junk connections come from 127.0.0.2 (sockets bound to that source address);
dcmtk storescu stores from 127.0.0.1 meanwhile. Every instance must be stored,
none rejected. Loops are bounded by time and stop by themselves.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.dicomgen import write_ct_series
from tests.peers import acknowledged, echoscu, storescu
from tests.receivers import both_receivers  # noqa: F401 (every test here on both paths)

pytestmark = pytest.mark.network

JUNK_HOST = "127.0.0.2"


def _junk(port: int, kind: str) -> None:
    try:
        with socket.socket() as s:
            s.bind((JUNK_HOST, 0))
            s.settimeout(2)
            s.connect(("127.0.0.1", port))
            if kind == "random":
                s.sendall(os.urandom(64))
            elif kind == "unknown-pdu":  # PDU type 0x09 does not exist
                s.sendall(bytes([0x09, 0]) + (58).to_bytes(4, "big") + os.urandom(58))
            time.sleep(0.2)  # then the scanner hangs up ("reset by its peer")
    except OSError:
        pass  # refused or closed by the node: what it should do


def _scanner(port: int, stop: threading.Event, sent: list[int]) -> None:
    kinds = ("random", "unknown-pdu", "silent")
    while not stop.is_set():
        burst = [
            threading.Thread(target=_junk, args=(port, kinds[i % 3]), daemon=True)
            for i in range(100)
        ]
        for t in burst:
            t.start()
        for t in burst:
            t.join(5)
        sent[0] += len(burst)


def test_junk_from_one_host_does_not_lock_out_another(node_factory, tmp_path: Path) -> None:
    node, cfg = node_factory(node={"max_associations": 16})
    files = write_ct_series(tmp_path / "ct", count=60)
    stop, sent = threading.Event(), [0]
    scanner = threading.Thread(target=_scanner, args=(cfg.node.port, stop, sent), daemon=True)
    scanner.start()
    try:
        time.sleep(1.0)  # the scanner is at full speed before the modality starts
        results = []
        for chunk in (files[:20], files[20:40], files[40:]):  # three associations
            done = storescu(cfg.node.port, chunk, extra=["--no-halt"], timeout=120)
            results.append(done)
        echo = echoscu(cfg.node.port)
    finally:
        stop.set()
        scanner.join(30)
    assert sent[0] >= 100
    for done in results:
        acks = acknowledged(done.stdout)
        assert done.returncode == 0 and "Rejected" not in done.stdout, done.stdout[-2000:]
        assert set(acks.values()) == {"Success"}
    assert sum(len(acknowledged(d.stdout)) for d in results) == len(files)
    assert echo.returncode == 0
    assert node.terminate() == 0
    assert f"connection from {JUNK_HOST} closed: it holds its share of the association" in (
        node.output()
    )


def test_junk_gives_its_slots_back_within_seconds(node_factory) -> None:
    """The same host's junk, then a real caller from that host: slots are free again."""
    node, cfg = node_factory(node={"max_associations": 16})
    burst = [
        threading.Thread(
            target=_junk, args=(cfg.node.port, ("random", "unknown-pdu", "silent")[i % 3])
        )
        for i in range(100)
    ]
    for t in burst:
        t.start()
    for t in burst:
        t.join(10)
    deadline = time.monotonic() + 3.5  # "at once, or within a second or two"
    while (echo := echoscu(cfg.node.port)).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert node.terminate() == 0


def test_callers_that_stop_half_way_through_their_request_delay_nobody(node_factory) -> None:
    """A-ASSOCIATE-RQ headers announcing 200 bytes, 20 sent, then silence (until the node's
    ACSE timeout ends them): a caller meanwhile is answered at once, not behind them."""
    node, cfg = node_factory(node={"max_associations": 16})
    stop = threading.Event()

    def half_request() -> None:
        with socket.socket() as s:
            s.bind((JUNK_HOST, 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", cfg.node.port))
            s.sendall(bytes([0x01, 0]) + (200).to_bytes(4, "big") + bytes([0, 1, 0, 0]) + bytes(16))
            stop.wait(5)

    stalled = [threading.Thread(target=half_request) for _ in range(4)]
    for t in stalled:
        t.start()
    try:
        time.sleep(0.5)  # all four are in, each waiting for the rest of its request
        start = time.monotonic()
        echo = echoscu(cfg.node.port)
        took = time.monotonic() - start
    finally:
        stop.set()
        for t in stalled:
            t.join(10)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert took < 1.0, f"a caller waited {took:.1f} s behind half-sent requests"
    assert node.terminate() == 0
