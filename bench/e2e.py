#!/usr/bin/env python3
"""End-to-end latency: last C-STORE acknowledged by ainode -> last result acknowledged by Orthanc.

A 200-slice 512x512 CT (bench/make_study.py) is sent with dcmtk
storescu to ``ainode serve`` (one worker, the shipped lesion-seg and
lesion-class models) whose destination is a real Orthanc on 127.0.0.1. The
timestamps come from the node's database (job queued, results committed,
deliveries acknowledged) and the outcome's own stage timings.

Target (issue #5): total minus the quiet period and the model forward pass
<= 1 s for a 200-slice CT. Prints the per-stage split beside the target.

Usage: .venv/bin/python bench/e2e.py [--slices 200] [--quiet 2]
       [--heat-map float|deflated|off] [--pacs-compression] [--keep]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/ itself: bench/queue.py would shadow the stdlib queue

from bench.study import temp_folder  # noqa: E402
from core.config_file import load_config  # noqa: E402
from node.send import deflated_copy  # noqa: E402
from storage import deliveries, queue  # noqa: E402
from storage.db import create_sqlite_engine, make_sessionmaker  # noqa: E402
from storage.outcomes import list_outcomes  # noqa: E402
from tests.peers import DCMTK_ENV, NodeProcess, Orthanc, free_port  # noqa: E402

GENERATOR = ROOT / "bench" / "make_study.py"
TARGET_S = 1.0


def _config(work: Path, port: int, pacs: Orthanc, quiet: float, heat_map: str) -> Path:
    models = ROOT / "models"
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
workers = 1
poll_interval_s = 0.05
[delivery]
check_interval_s = 0.05
[logging]
level = "INFO"  # NodeProcess waits for the "listening on" line
[web]
enabled = false
{pacs.toml_table("destinations", heat_map=heat_map)}
[[pipelines]]
name = "ct-lesions"
models = ["{models / "lesion-seg"}", "{models / "lesion-class"}"]
destinations = ["pacs"]
# The benchmark's phantom (air, lungs, spine) lies outside the models' validated input:
# they would decline it. This measures the path's speed, not findings: analyse anyway.
domain_check = false
[pipelines.match]
modality = "CT"
"""
    )
    return path


def _deflated_size(path: Path) -> int:
    """Bytes of the file as the sender sends it deflated (node.send.deflated_copy)."""
    with deflated_copy(path) as copy:
        return copy.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--quiet", type=float, default=2.0, help="quiet period (s)")
    ap.add_argument(
        "--heat-map",
        choices=["float", "deflated", "off"],
        default="float",
        help="the destination's heat_map setting",
    )
    ap.add_argument(
        "--pacs-compression",
        action="store_true",
        help="Orthanc keeps its files zlib-compressed (its StorageCompression option)",
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the run's folder (study, node data, Orthanc's; ~630 MB) and print its path",
    )
    args = ap.parse_args(argv)
    work = temp_folder("ainode-e2e-", keep=args.keep)
    subprocess.run(
        [
            sys.executable,
            str(GENERATOR),
            "--out",
            str(work / "study"),
            "--ct-slices",
            str(args.slices),
            "--small-count",
            "0",
            "--seed",
            "5",
        ],
        check=True,
    )
    files = sorted((work / "study" / "ct").rglob("*.dcm"))
    pacs = Orthanc(
        work / "orthanc",
        dicom_port=free_port(),
        http_port=free_port(),
        extra={"StorageCompression": args.pacs_compression},
    ).start()
    port = free_port()
    config = _config(work, port, pacs, args.quiet, args.heat_map)
    node = NodeProcess(config, port, work / "node.log").start()
    try:
        t0 = time.perf_counter()
        subprocess.run(
            ["storescu", "-aec", "AINODE", "127.0.0.1", str(port), *map(str, files)],
            check=True,
            env=DCMTK_ENV,
        )
        acked = datetime.now(UTC)
        send_s = time.perf_counter() - t0
        cfg = load_config(config)
        engine = create_sqlite_engine(cfg.storage.database_path)
        sessions = make_sessionmaker(engine)
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            with sessions.begin() as s:
                rows = deliveries.list_deliveries(s)
                jobs = queue.list_jobs(s)
            if jobs and jobs[0].status == "dead":
                raise SystemExit(f"job failed: {jobs[0].last_error}")
            wanted = 2 if args.heat_map == "off" else 3
            if rows and all(r.status == "delivered" for r in rows) and len(rows) == wanted:
                break
            time.sleep(0.05)
        else:
            raise SystemExit("results not delivered in 30 min")
        with sessions.begin() as s:
            (job,) = queue.list_jobs(s)
            outcomes = list_outcomes(s, job_id=job.id)
            results = deliveries.list_results(s, job_id=job.id)
        engine.dispose()
        kept = {}
        for r in results:
            found = pacs.post(
                "/tools/find",
                {"Level": "Instance", "Query": {"SOPInstanceUID": r.sop_instance_uid}},
            )
            if found:  # the bytes of Orthanc's file on its disk (compressed, if it does)
                kept[r.kind] = int(
                    pacs.get(f"/instances/{found[0]}/attachments/dicom/compressed-size")
                )
    finally:
        node.terminate()
        pacs.stop()
    stage = {
        k: sum(o.result["timings_s"].get(k, 0.0) for o in outcomes)
        for k in ("read", "forward", "postprocess")
    }
    queued = (job.created_at - acked).total_seconds()
    delivered_at = max(r.delivered_at for r in rows if r.delivered_at)
    succeeded = job.updated_at
    worker_s = (succeeded - job.created_at).total_seconds()
    deliver_s = (delivered_at - succeeded).total_seconds()
    total = (delivered_at - acked).total_seconds()
    other_worker = worker_s - sum(stage.values())
    overhead = total - args.quiet - stage["forward"]
    print(
        f"\n{len(files)} CT slices sent in {send_s:.2f} s; {len(results)} result objects "
        f"({', '.join(r.kind for r in results)}) delivered to Orthanc"
    )
    found = sum(len(o.result.get("lesions", [])) for o in outcomes)
    print(f"the models found {found} connected component(s); the SR and SEG report <= 20")
    print(f"{'stage':44} {'seconds':>8}")
    print(
        f"{'ack -> job queued (quiet period ' + str(args.quiet) + ' s + check)':44} {queued:8.2f}"
    )
    print(f"{'worker: read + decode series (x models)':44} {stage['read']:8.2f}")
    print(f"{'worker: forward passes':44} {stage['forward']:8.2f}")
    print(f"{'worker: post-processing':44} {stage['postprocess']:8.2f}")
    print(f"{'worker: claim + encode SR/SEG/PM + write + commit':44} {other_worker:8.2f}")
    print(f"{'commit -> last object acknowledged by Orthanc':44} {deliver_s:8.2f}")
    for r in sorted(rows, key=lambda r: r.delivered_at or succeeded):
        if r.delivered_at is not None:
            after = (r.delivered_at - succeeded).total_seconds()
            print(f"{'  ' + r.result.kind + ' acknowledged after the commit':44} {after:8.2f}")
    print(f"{'total (ack -> delivered)':44} {total:8.2f}")
    source_bytes = sum(f.stat().st_size for f in files)
    print(
        f"\nheat_map = {args.heat_map!r}, Orthanc StorageCompression "
        f"{'on' if args.pacs_compression else 'off'}; source series {source_bytes / 1e6:.1f} MB"
    )
    print(
        f"{'object':8} {'written MB':>11} {'deflated MB':>12} {'in Orthanc MB':>14} "
        f"{'of source':>10}"
    )
    for r in results:
        written = Path(r.path).stat().st_size
        stored = kept.get(r.kind)
        shown = (
            f"{stored / 1e6:14.2f} {stored / source_bytes:10.1%}" if stored else f"{'not sent':>14}"
        )
        # What the object is on the link as Deflated Explicit VR Little Endian (as
        # heat_map = "deflated" sends it), measured after the timed part.
        deflated = _deflated_size(Path(r.path))
        print(f"{r.kind:8} {written / 1e6:11.2f} {deflated / 1e6:12.2f} {shown}")
    added = sum(kept.values())
    print(
        f"{'added to the PACS':8} {'':>11} {added / 1e6:14.2f} {added / source_bytes:10.1%}"
        + ("  (target <= 10 %: " + ("met)" if added <= 0.1 * source_bytes else "NOT met)"))
    )
    print(f"\n{'':34} {'ainode':>8} {'target':>8}")
    print(
        f"{'total - quiet period - forward':34} {overhead:8.2f} {TARGET_S:8.2f}  "
        + ("met" if overhead <= TARGET_S else "NOT met")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
