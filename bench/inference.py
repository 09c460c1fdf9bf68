#!/usr/bin/env python3
"""Inference benchmark: per-stage times and peak RSS for one CT job.

A synthetic 200-slice 512x512 CT (bench/make_study.py) goes through
the worker's stages one by one: read (pydicom, decode), volume (sort, rescale,
stack), preprocess (window, resample to the model's spacing), forward (sliding
window), post-process (lesions and measurements), store (outcome JSON in
SQLite). The model is a 3-D U-Net package with fixed seeded weights: its
*output* means nothing, its *cost* is what a real one costs. Runs on CUDA when
present, else the CPU.

Targets (issue #3): everything except the forward pass <= 20 % of the job's
time; peak RSS <= 3x the decoded volume plus the model.

Usage: .venv/bin/python bench/inference.py [--slices 200] [--device auto]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/ itself: bench/queue.py would shadow the stdlib queue

import torch  # noqa: E402
from pydicom import dcmread  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from bench.study import ct_study, rss_mib, temp_folder  # noqa: E402
from core.clock import utc_now  # noqa: E402
from core.config import InferenceConfig  # noqa: E402
from dicomio.records import Outcome  # noqa: E402
from dicomio.volume_in import load_volume  # noqa: E402
from inference.architectures import build  # noqa: E402
from inference.execute import pick_device, segment  # noqa: E402
from inference.package import load_package  # noqa: E402
from inference.postprocess import lesions  # noqa: E402
from inference.worker import outcome_json  # noqa: E402
from storage.db import create_sqlite_engine, make_sessionmaker, migrate  # noqa: E402
from storage.outcomes import record_outcome  # noqa: E402
from tests.packages import make_package  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", type=Path, help="folder made by make_study.py")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=InferenceConfig().batch_size,
        help="patches per forward pass (default: the worker's, [inference] batch_size)",
    )
    ap.add_argument(
        "--package",
        type=Path,
        help="a segmentation package to run instead of the fixed-weight U-Net "
        "(e.g. models/lesion-seg, the shipped one)",
    )
    a = ap.parse_args(argv)
    work = temp_folder("bench-inference-")
    data = a.data or work / "data"
    paths = ct_study(data, a.slices)
    device = pick_device(a.device)
    torch.manual_seed(0)
    params = {"base": 8, "depth": 3}
    # Seeded weights with a strongly negative output bias: the mask stays nearly
    # empty, as on a normal study, so post-processing is not flooded by noise.
    state = build("unet3d", params).state_dict()
    state["head.bias"] = torch.full_like(state["head.bias"], -8.0)
    package = a.package or make_package(
        work / "unet",
        name="bench-unet",
        task="segmentation",
        architecture="unet3d",
        parameters=params,
        state=state,
        input_spec={
            "modality": "CT",
            "window": [-200.0, 300.0],
            "target_spacing": [2.0, 2.0, 2.0],
            "patch": [64, 64, 64],
        },
        labels=[{"name": "lesion", "code": ["52988006", "SCT", "Lesion"], "threshold": 0.5}],
    )
    base_rss = rss_mib()
    t = {}
    t0 = time.perf_counter()
    model = load_package(package, device)
    t["load model (once per worker)"] = time.perf_counter() - t0
    model_mib = sum(p.numel() * p.element_size() for p in model.module.parameters()) / 2**20

    t0 = time.perf_counter()
    datasets = [dcmread(p) for p in paths]
    decoded = [ds.pixel_array for ds in datasets]
    t["read"] = time.perf_counter() - t0
    del datasets, decoded
    t0 = time.perf_counter()
    volume = load_volume(paths)
    t["volume"] = max(0.0, time.perf_counter() - t0 - t["read"])  # load_volume reads again
    volume_mib = volume.array.nbytes / 2**20

    t0 = time.perf_counter()
    spec = model.spec.input
    if spec.target_spacing is not None:  # else each patch is windowed as it is cut (forward)
        low, high = spec.window if spec.window else (-1024.0, 3071.0)
        x = torch.from_numpy(volume.array).clamp(low, high)[None, None]
        size = [
            max(1, round(n * s / t))
            for n, s, t in zip(volume.array.shape, volume.spacing, spec.target_spacing, strict=True)
        ]
        x = F.interpolate(x, size=size, mode="trilinear")
        del x
    t["preprocess"] = time.perf_counter() - t0
    patches: dict[str, int] = {"worker": 0, "anchor": 0}

    def counter(key: str):  # type: ignore[no-untyped-def]
        def hook(_module, args, _output) -> None:  # type: ignore[no-untyped-def]
            patches[key] += len(args[0])

        return hook

    model.module.register_forward_hook(counter("worker"))
    t0 = time.perf_counter()
    prob = segment(model, volume, batch_size=a.batch_size, amp=True)
    t["forward"] = time.perf_counter() - t0 - t["preprocess"]  # segment preprocesses too

    t0 = time.perf_counter()
    found = lesions(prob[0], volume, model.spec.labels[0])
    t["post-process"] = time.perf_counter() - t0

    engine = create_sqlite_engine(work / "bench.sqlite3")
    migrate(engine)
    t0 = time.perf_counter()
    outcome = Outcome(
        model_name="bench-unet",
        model_version="1",
        model_sha256=model.spec.sha256,
        task="segmentation",
        series_instance_uid=volume.series_instance_uid,
        lesions=found,
    )
    with make_sessionmaker(engine).begin() as s:
        from storage.models import Job

        job = Job(
            pipeline="bench",
            level="study",
            study_instance_uid="1",
            queueing_lock="b",
            max_attempts=1,
            scheduled_at=utc_now(),
            created_at=utc_now(),
            updated_at=utc_now(),
        )
        s.add(job)
        s.flush()
        record_outcome(
            s,
            job_id=job.id,
            pipeline="bench",
            study_instance_uid="1",
            series_instance_uid=None,
            model_name="bench-unet",
            model_version="1",
            model_sha256=model.spec.sha256,
            task="segmentation",
            result=outcome_json(outcome),
            now=utc_now(),
        )
    t["store"] = time.perf_counter() - t0

    job_stages = ["read", "volume", "preprocess", "forward", "post-process", "store"]
    total = sum(t[s] for s in job_stages)
    print(
        f"\nOne CT job: {len(paths)} slices {volume.array.shape[1]}x{volume.array.shape[2]}, "
        f"batches of {a.batch_size} patches, "
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print("| stage | seconds | share of the job |")
    print("|---|---|---|")
    for stage in job_stages:
        print(f"| {stage} | {t[stage]:.2f} | {100 * t[stage] / total:.0f} % |")
    print(f"| **job total** | {total:.2f} | |")
    print(
        f"| load model (once per worker, not per job) | {t['load model (once per worker)']:.2f} | |"
    )
    non_forward = 100 * (total - t["forward"]) / total
    peak = rss_mib()
    # The anchor, after the peak is read: the same forward pass with the weights as
    # loaded (contiguous), on a fresh copy of the model.
    plain = load_package(package, device)
    plain.module.register_forward_hook(counter("anchor"))
    t0 = time.perf_counter()
    anchor = segment(
        plain, volume, batch_size=a.batch_size, amp=True, channels_last=False, reuse_uniform=False
    )
    anchor_s = time.perf_counter() - t0 - t["preprocess"]
    diff = float(abs(prob - anchor).max())
    budget = 3 * volume_mib + model_mib
    print(f"\neverything but the forward pass: {non_forward:.0f} % of the job (target <= 20 %)")
    print(
        f"peak RSS {peak:.0f} MiB (process start {base_rss:.0f} MiB, with torch); decoded volume "
        f"{volume_mib:.0f} MiB, model {model_mib:.1f} MiB: budget 3x volume + model = "
        f"{budget:.0f} MiB above the start, used {peak - base_rss:.0f} MiB"
    )
    what = "the fixed-weight U-Net (its output means nothing)" if a.package is None else a.package
    anchor_found = lesions(anchor[0], volume, model.spec.labels[0])
    same = [x.voxel_count for x in found] == [x.voxel_count for x in anchor_found]
    agree = float(((prob >= 0.5) == (anchor >= 0.5)).mean())
    print(
        f"lesions found by {what}: {len(found)} ({len(anchor_found)} by the anchor; "
        f"{'the same' if same else 'DIFFERENT'} voxel counts); thresholded masks agree on "
        f"{100 * agree:.4f} % of the voxels"
    )
    print(
        f"\nforward pass: {t['forward']:.2f} s with 3-D weights channels-last and each uniform "
        f"patch value run once ({patches['worker']} patches through the network; what the "
        f"worker runs), {anchor_s:.2f} s as loaded with every patch ({patches['anchor']}; the "
        f"anchor): {anchor_s / t['forward']:.2f}x "
        f"(target >= 3x: {'met' if anchor_s >= 3 * t['forward'] else 'NOT met'}); "
        f"largest difference in the probability maps {diff:.2e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
