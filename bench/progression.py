#!/usr/bin/env python3
"""Progression benchmark: what comparing a CT with two priors costs the worker.

A synthetic 200-slice 512x512 CT (bench/make_study.py) is the current
study and, read again from the same files, each of its two priors (the cost
does not depend on what the pixels show). The shipped ``lesion-change`` package
runs through ``run_pipeline`` as the worker calls it: read the current volume
and the priors, resample each to the package's grid, run the model. Printed:
the stage times, the peak RSS above the process start, and the same figures
for the classification model on the same study as the anchor (what a job
already costs without priors).

Usage: .venv/bin/python bench/progression.py [--slices 200] [--device auto]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/ itself: bench/queue.py would shadow the stdlib queue

from bench.study import ct_study, rss_mib, temp_folder  # noqa: E402
from core.config import SeriesRule  # noqa: E402
from dicomio.volume_in import scan_studies  # noqa: E402
from inference.execute import pick_device  # noqa: E402
from inference.package import load_package  # noqa: E402
from inference.pipeline import run_pipeline  # noqa: E402
from storage.lookup import PatientHistory, PriorStudy  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", type=Path, help="folder made by make_study.py")
    ap.add_argument("--model", choices=["lesion-class", "lesion-change"], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    data = a.data or temp_folder("bench-progression-") / "data"
    ct_study(data, a.slices)  # made once, before the per-model processes read it
    if a.model is None:  # each model in its own process: peak RSS is per process
        print(f"One CT study, {a.slices} slices 512x512, device {pick_device(a.device)}")
        print()
        print(
            "| model | read s | forward s (incl. resampling) | job s | peak RSS above start MiB |"
        )
        print("|---|---|---|---|---|")
        for model in ("lesion-class", "lesion-change"):
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--data",
                    str(data),
                    "--device",
                    a.device,
                    "--model",
                    model,
                ],
                check=True,
            )
        return 0
    device = pick_device(a.device)
    ((_study, series),) = scan_studies([data / "ct"]).studies.items()
    history = None
    if a.model == "lesion-change":
        history = PatientHistory(
            study_date="20260101",
            priors=tuple(
                PriorStudy(study_instance_uid=f"2.25.{n}", study_date=date, series=tuple(series))
                for n, date in ((1, "20250601"), (2, "20250101"))
            ),
        )
    start = rss_mib()
    model = load_package(ROOT / "models" / a.model, device)
    t0 = time.perf_counter()
    # The benchmark's phantom lies outside the model's validated input (air, lungs):
    # this measures speed and memory, so the domain check is off.
    run = run_pipeline(
        series,
        SeriesRule(modalities=("CT",)),
        [model],
        batch_size=1,
        amp=True,
        history=history,
        check_domain=False,
    )
    total = time.perf_counter() - t0
    (outcome,) = run.outcomes
    assert not outcome.not_run and not outcome.declined, outcome.not_run or outcome.declined
    t = outcome.timings_s
    name = "lesion-change (current + 2 priors)" if history else "lesion-class (anchor: no priors)"
    print(
        f"| {name} | {t.get('read', 0):.2f} | {t.get('forward', 0):.2f} | {total:.2f} "
        f"| {rss_mib() - start:.0f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
