#!/usr/bin/env python3
"""Send the demo's study to a freshly started node, again and again; count lost responses.

Reproduces what once left ``ainode demo``'s last C-STORE unanswered for 60 s:
each round starts ``ainode serve`` with the demo's pipelines (so a worker loads
its models while the study arrives, both cores busy), sends the demo's 129
files with new UIDs through ``node.send.send_files`` (what the demo and every
delivery use) and stops the node. A C-STORE without a response within
``--dimse-timeout`` is counted; the node's log of that round is kept.

Usage: .venv/bin/python scripts/send_loop.py [--minutes 10] [--dimse-timeout 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

import pydicom  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from core.config import DestinationConfig  # noqa: E402
from node.demo import _studies, _write_config  # noqa: E402
from node.send import SendOutcome, items_for, send_files  # noqa: E402
from tests.peers import free_port  # noqa: E402


def _fresh_copies(sources: list[Path], folder: Path) -> list[Path]:
    """The files with new Study, Series and SOP Instance UIDs (each round a new study)."""
    folder.mkdir(parents=True)
    new: dict[str, str] = {}
    out = []
    for k, path in enumerate(sources):
        ds = pydicom.dcmread(path)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            old = str(getattr(ds, keyword))
            setattr(ds, keyword, new.setdefault(old, generate_uid()))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        target = folder / f"{k:04d}.dcm"
        ds.save_as(target)
        out.append(target)
    return out


def _round(sources: list[Path], work: Path, dimse_timeout: float) -> list[SendOutcome]:
    """One node, one association of the demo's files: the outcomes not delivered."""
    port = free_port()
    config = _write_config(work, port, None)
    files = _fresh_copies(sources, work / "send")
    with open(work / "serve.log", "wb") as log:
        node = subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(config)],
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the listener is up before the worker is ready
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    time.sleep(0.05)
            lost: list[SendOutcome] = []
            dest = DestinationConfig(name="node", ae_title="AINODE", host="127.0.0.1", port=port)
            send_files(
                dest,
                items_for(files),
                lambda o: None if o.delivered else lost.append(o),
                calling_ae="DEMO",
                connect_timeout_s=10,
                dimse_timeout_s=dimse_timeout,
            )
            return lost
        finally:
            os.killpg(node.pid, signal.SIGTERM)
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--dimse-timeout", type=float, default=20.0)
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="ainode-send-loop-"))
    sources, _ = _studies(base / "demo")
    end = time.monotonic() + 60 * args.minutes
    rounds = failed = 0
    while time.monotonic() < end:
        rounds += 1
        work = base / "round"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        lost = _round(sources, work, args.dimse_timeout)
        if lost:
            failed += 1
            kept = base / f"lost-{rounds}"
            shutil.copytree(work, kept, ignore=shutil.ignore_patterns("send", "data"))
            print(f"round {rounds}: {lost[0].key}: {lost[0].detail} (log in {kept})", flush=True)
    print(f"{rounds} rounds of {len(sources)} C-STOREs, {failed} with a lost response")
    shutil.rmtree(base / "round", ignore_errors=True)
    if not failed:
        shutil.rmtree(base)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
