#!/usr/bin/env python3
"""Priors prefetch: first instance of a follow-up -> the moment its job can start.

Orthanc (Debian package, 127.0.0.1) holds two prior CT studies of the patient,
200 slices of 512 x 512 each (bench/make_study.py, given the patient's ID and
earlier dates). The follow-up (also 200 slices) is sent to ``ainode serve`` with
dcmtk storescu, three times, each into a fresh node:

- **no priors**: no ``[[sources]]``; the job can start when the study is complete;
- **prefetch**: ``priors_from`` the Orthanc source; the job can start when the
  study is complete *and* both priors are retrieved (the prefetch starts at the
  first instance, so it overlaps the reception and the quiet period);
- **prefetch + count**: the same, with the follow-up also in Orthanc, whose
  instance count completes it without the quiet period.

No worker runs (the model's time is bench/progression.py's subject): the job's
start is when it is queued or, if later, when the prefetch is done. Target
(issue #14): with prefetch, the job starts no later than without priors.

Usage: .venv/bin/python bench/priors.py [--slices 200] [--quiet 2] [--retrieve move]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/ itself: bench/queue.py would shadow the stdlib queue

from bench.make_study import make_ct  # noqa: E402
from bench.study import temp_folder  # noqa: E402
from core.config_file import load_config  # noqa: E402
from storage import queue  # noqa: E402
from storage.db import create_sqlite_engine, make_sessionmaker  # noqa: E402
from storage.models import Prefetch, Study  # noqa: E402
from storage.prefetches import prefetch_of  # noqa: E402
from tests.peers import DCMTK_ENV, NodeProcess, Orthanc, free_port  # noqa: E402

PATIENT = "BENCH-PRIORS-1"


def _study(out: Path, slices: int, seed: int, date: str) -> list[Path]:
    """A CT of ``slices`` slices for the benchmark's patient on ``date``."""
    files = make_ct(out, slices, seed)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientID = PATIENT
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.save_as(path, enforce_file_format=True)
    return files


def _config(work: Path, port: int, pacs: Orthanc, quiet: float, retrieve: str | None) -> Path:
    source = ""
    priors_from = ""
    if retrieve:
        source = pacs.toml_table("sources", retrieve=retrieve)
        priors_from = 'priors_from = ["pacs"]'
    path = work / "config.toml"
    path.write_text(
        f"""
[node]
port = {port}
listener_processes = 1
[storage]
data_dir = "data"
min_free_mb = 0
[completion]
quiet_period_s = {quiet}
check_interval_s = 0.05
[inference]
workers = 0
[logging]
level = "INFO"
[web]
enabled = false
{source}
[[pipelines]]
name = "change"
models = ["{ROOT / "models" / "lesion-change"}"]
{priors_from}
[pipelines.match]
modality = "CT"
"""
    )
    return path


def _run(
    work: Path,
    port: int,
    files: list[Path],
    pacs: Orthanc,
    quiet: float,
    retrieve: str | None,
) -> dict[str, float]:
    work.mkdir(parents=True)
    config = _config(work, port, pacs, quiet, retrieve)
    node = NodeProcess(config, port, work / "node.log").start()
    try:
        subprocess.run(
            ["storescu", "-aec", "AINODE", "127.0.0.1", str(port), *map(str, files)],
            check=True,
            env=DCMTK_ENV,
        )
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        engine = create_sqlite_engine(load_config(config).storage.database_path)
        sessions = make_sessionmaker(engine)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            with sessions.begin() as s:
                jobs = queue.list_jobs(s)
                prefetch = prefetch_of(s, study_uid)
                study = s.query(Study).filter_by(study_instance_uid=study_uid).one()
                first, last = study.first_received_at, study.last_received_at
            done = prefetch is None or not prefetch.open
            if jobs and done and (retrieve is None or prefetch is not None):
                break
            time.sleep(0.05)
        else:
            raise SystemExit("no job within 15 min")
        if prefetch is not None and prefetch.state != "done":
            raise SystemExit(f"prefetch {prefetch.state}: {prefetch.last_error}")
        queued: datetime = jobs[0].created_at
        start = queued
        prefetched = None
        if prefetch is not None:
            with sessions.begin() as s:
                row = s.query(Prefetch).filter_by(study_instance_uid=study_uid).one()
                prefetched = row.updated_at
                retrieved = row.instances_retrieved
            start = max(queued, prefetched)
        engine.dispose()
    finally:
        node.terminate()
    figures = {
        "received": (last - first).total_seconds(),
        "queued": (queued - first).total_seconds(),
        "start": (start - first).total_seconds(),
    }
    if prefetched is not None:
        figures["prefetched"] = (prefetched - first).total_seconds()
        figures["retrieved"] = float(retrieved)
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--quiet", type=float, default=2.0, help="quiet period (s)")
    ap.add_argument("--retrieve", choices=["move", "get"], default="move")
    args = ap.parse_args(argv)
    work = temp_folder("ainode-priors-")
    priors = [
        _study(work / "prior1", args.slices, 11, "20240105"),
        _study(work / "prior2", args.slices, 12, "20240610"),
    ]
    follow_up = _study(work / "follow-up", args.slices, 13, "20241120")
    pacs = Orthanc(work / "orthanc", dicom_port=free_port(), http_port=free_port()).start()
    rows = []
    try:
        for files in priors:
            pacs.upload(files)
        for name, retrieve, in_pacs in (
            ("no priors (no [[sources]])", None, False),
            ("prefetch", args.retrieve, False),
            ("prefetch + count (follow-up in Orthanc)", args.retrieve, True),
        ):
            if in_pacs:
                pacs.upload(follow_up)
            # Each run is a fresh node holding none of the priors; Orthanc routes
            # C-MOVE to it by its AE title.
            port = free_port()
            pacs.put("/modalities/ainode", {"AET": "AINODE", "Host": "127.0.0.1", "Port": port})
            figures = _run(work / f"run{len(rows)}", port, follow_up, pacs, args.quiet, retrieve)
            rows.append((name, figures))
    finally:
        pacs.stop()
    print(
        f"\nfollow-up of {args.slices} slices; 2 priors of {args.slices} slices in Orthanc; "
        f"quiet period {args.quiet:g} s; retrieve by C-{args.retrieve.upper()}"
    )
    print(
        f"{'seconds after the first instance':42} {'received':>9} {'queued':>8} "
        f"{'priors in':>10} {'job start':>10}"
    )
    for name, f in rows:
        prefetched = f"{f['prefetched']:10.2f}" if "prefetched" in f else f"{'-':>10}"
        print(f"{name:42} {f['received']:9.2f} {f['queued']:8.2f} {prefetched} {f['start']:10.2f}")
    base = rows[0][1]["start"]
    for name, f in rows[1:]:
        print(
            f"{name}: job start {f['start']:.2f} s vs {base:.2f} s without priors "
            f"({f.get('retrieved', 0):.0f} instances retrieved): "
            + ("met" if f["start"] <= base else "NOT met")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
