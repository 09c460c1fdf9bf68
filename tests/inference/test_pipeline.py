"""Pipeline stages without the network: series selection, skip records, OOM fallback."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.config import SeriesRule
from core.retry import RetryPolicy
from inference.errors import OutputMismatch
from inference.execute import segment, with_oom_fallback
from inference.matching import select_series
from inference.package import LoadedModel, load_package
from inference.pipeline import run_pipeline
from inference.spec import LabelSpec
from storage.lookup import SeriesInfo
from tests.dicomgen import ct_series_info, write_lesion_ct
from tests.inference.test_models import _volume
from tests.packages import threshold_segmenter


def _info(uid: str, modality: str, desc: str = "", n: int = 3, body: str = "CHEST") -> SeriesInfo:
    return SeriesInfo(
        series_instance_uid=uid,
        modality=modality,
        body_part_examined=body,
        series_description=desc,
        sop_class_uids=("1.2.840.10008.5.1.4.1.1.2",),
        paths=tuple(Path(f"/x/{uid}.{i}") for i in range(n)),
    )


def test_series_rules() -> None:
    series = [
        _info("1", "CT", "Axial 1.25mm"),
        _info("2", "CT", "Scout", n=1),
        _info("3", "MR", "Axial T1"),
        _info("4", "CT", "Axial", body="HEAD"),
    ]
    rule = SeriesRule(
        modalities=("CT",),
        body_parts=("CHEST",),
        series_description=re.compile("axial", re.I),
        min_instances=2,
    )
    assert [s.series_instance_uid for s in select_series(series, rule)] == ["1"]
    assert len(select_series(series, SeriesRule())) == 4


def test_study_matching_no_series_is_recorded_as_skipped(tmp_path: Path) -> None:
    model = load_package(threshold_segmenter(tmp_path / "pkg"), torch.device("cpu"))
    run = run_pipeline(
        [_info("1", "MR")], SeriesRule(modalities=("CT",)), [model], batch_size=2, amp=False
    )
    assert run.outcomes == () and run.skipped_reason == "no series matches the pipeline's rules"


def test_pipeline_runs_the_model_on_the_matching_series(tmp_path: Path) -> None:
    model = load_package(threshold_segmenter(tmp_path / "pkg"), torch.device("cpu"))
    files, truth = write_lesion_ct(tmp_path / "ct")
    info = ct_series_info("9", files)
    run = run_pipeline([info], SeriesRule(modalities=("CT",)), [model], batch_size=2, amp=False)
    (outcome,) = run.outcomes
    measured = sorted(lesion.volume_mm3 for lesion in outcome.lesions)
    assert len(measured) == len(truth)
    for got, true in zip(measured, sorted(truth), strict=True):
        assert got == pytest.approx(true, rel=0.10)


class _OomTwice(nn.Module):
    """Raises CUDA out-of-memory on its first two calls, then works: a fake device."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.conv = nn.Conv3d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls <= 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.conv(x)


def test_out_of_memory_falls_back_to_batch_one_then_cpu(tmp_path: Path) -> None:
    base = load_package(threshold_segmenter(tmp_path / "pkg"), torch.device("cpu"))
    fake = LoadedModel(spec=base.spec, module=_OomTwice(), device=torch.device("cpu"))
    batches: list[int] = []

    def run(model: LoadedModel, batch: int) -> np.ndarray:
        batches.append(batch)
        return segment(model, _volume(np.zeros((8, 16, 16))), batch_size=batch, amp=False)

    prob = with_oom_fallback(run, fake, 8)
    assert batches == [8, 1, 1]  # full batch, batch of one, then the CPU
    assert prob.shape == (1, 8, 16, 16)


def test_progression_passes_over_priors_it_cannot_use(tmp_path: Path) -> None:
    """A malformed prior date or an unreadable prior series skips that prior, not the job."""
    from dataclasses import replace

    from dicomio.volume_in import scan_studies
    from storage.lookup import PatientHistory, PriorStudy
    from training.synthetic import generate_longitudinal

    labels = generate_longitudinal(tmp_path, 1, seed=7403)
    order = [line.split(",")[1] for line in labels.read_text().splitlines()[1:]]
    studies = scan_studies([tmp_path / "studies"]).studies
    current, newest, older = order[2], order[1], order[0]
    model = load_package(
        Path(__file__).parents[2] / "models" / "lesion-change", torch.device("cpu")
    )
    rule = SeriesRule(modalities=("CT",))

    def prior(uid: str, date: str) -> PriorStudy:
        return PriorStudy(study_instance_uid=uid, study_date=date, series=tuple(studies[uid]))

    def compared(*priors: PriorStudy) -> list[str]:
        history = PatientHistory(study_date="20250101", priors=priors)
        run = run_pipeline(
            studies[current], rule, [model], batch_size=1, amp=False, history=history
        )
        (outcome,) = run.outcomes
        return [p["study_instance_uid"] for p in outcome.extra.get("priors", [])] or [
            outcome.not_run
        ]

    good_new, good_old = prior(newest, "20241001"), prior(older, "20240501")
    assert compared(good_new, good_old) == [older, newest]  # oldest first
    assert compared(replace(good_new, study_date="2024-10"), good_old) == [older]
    one_slice = replace(
        good_new, series=(replace(studies[newest][0], paths=studies[newest][0].paths[:1]),)
    )
    assert compared(one_slice, good_old) == [older]  # a single slice is no volume
    assert compared(replace(good_old, study_date="x")) == [
        "no prior study of this patient has a usable series the model takes"
    ]


class _RecordsMoves(nn.Module):
    """A module that notes every device move made on it (``.to``/``.cpu``/``.cuda``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 1)
        self.moves = 0

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self.moves += 1
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_cpu_fallback_leaves_the_cached_model_where_it_was(tmp_path: Path) -> None:
    """After a CUDA OOM the CPU attempt runs on a copy: the worker's model keeps its device."""
    base = load_package(threshold_segmenter(tmp_path / "pkg"), torch.device("cpu"))
    cached = LoadedModel(spec=base.spec, module=_RecordsMoves(), device=torch.device("cuda"))
    used: list[LoadedModel] = []

    def run(model: LoadedModel, batch: int) -> str:
        used.append(model)
        if model.device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return "ran on the CPU"

    assert with_oom_fallback(run, cached, 8) == "ran on the CPU"
    assert [m.device.type for m in used] == ["cuda", "cuda", "cpu"]
    assert used[2].module is not cached.module
    assert cached.module.moves == 0 and cached.device.type == "cuda"


@pytest.mark.gpu
def test_after_a_real_oom_the_next_job_runs_on_the_gpu_again(tmp_path: Path) -> None:
    gpu = torch.device("cuda")
    model = load_package(threshold_segmenter(tmp_path / "pkg"), gpu)
    volume = _volume(np.zeros((8, 16, 16)))
    calls = {"n": 0}

    def run(m: LoadedModel, batch: int) -> np.ndarray:
        calls["n"] += 1
        if m.device.type == "cuda" and calls["n"] <= 2:  # a real allocation that cannot fit
            free, _total = torch.cuda.mem_get_info()
            torch.empty(int(free) * 2, dtype=torch.uint8, device=m.device)
        return segment(m, volume, batch_size=batch, amp=False)

    assert with_oom_fallback(run, model, 8).shape == (1, 8, 16, 16)
    assert all(p.device.type == "cuda" for p in model.module.parameters())
    assert segment(model, volume, batch_size=8, amp=False).shape == (1, 8, 16, 16)


def test_labels_not_matching_the_outputs_at_run_time_is_permanent(tmp_path: Path) -> None:
    """The trial run catches this at load; a job still refuses it as permanent, never retried."""
    base = load_package(threshold_segmenter(tmp_path / "pkg"), torch.device("cpu"))
    two = LabelSpec(name="other", code=("1", "SCT", "Other"))
    spec = dataclasses.replace(base.spec, labels=(*base.spec.labels, two))
    model = LoadedModel(spec=spec, module=base.module, device=base.device)
    files, _ = write_lesion_ct(tmp_path / "ct", shape=(8, 32, 32))
    series = ct_series_info("1.2.3", files, body="")
    with pytest.raises(OutputMismatch, match=r"gives 1 output channel\(s\); .* names 2") as info:
        run_pipeline([series], SeriesRule(), [model], batch_size=2, amp=False)
    assert not RetryPolicy().retryable(info.value)
