"""A model package is run once on a dummy input when it is loaded, before it takes a job.

What a trial run finds — an architecture whose layers do not fit the input
size, outputs that do not match ``[[output.labels]]`` — would otherwise
surface only when the first study fails. The dummy input goes through the
same execution functions that jobs use (:mod:`inference.execute`), on the
package's own grid.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from dicomio.records import Volume, Waveform, axial_volume
from inference.detect import detect, score
from inference.errors import ModelPackageError
from inference.execute import classify, predict_change, predict_sequence, segment
from inference.package import LoadedModel, check_outputs, load_package
from inference.patches import PATCH

__all__ = ["check_package", "load_and_try", "trial_run"]

_DEFAULT_GRID = (16, 32, 32)
_DEFAULT_LEADS = 12
_DEFAULT_SAMPLES = 1000


def _volume(model: LoadedModel) -> Volume:
    spec = model.spec.input
    grid = spec.patch or spec.size or _DEFAULT_GRID
    spacing = spec.target_spacing or (1.0, 1.0, 1.0)
    low, high = spec.window or (0.0, 1.0)
    return axial_volume(np.full(grid, (low + high) / 2, dtype=np.float32), spacing, "2.25")


def _waveform(model: LoadedModel) -> Waveform:
    spec = model.spec.input
    leads = spec.leads or tuple(f"lead {i + 1}" for i in range(_DEFAULT_LEADS))
    return Waveform(
        data=np.zeros((len(leads), spec.samples or _DEFAULT_SAMPLES), dtype=np.float32),
        sampling_hz=spec.sampling_hz or 500.0,
        lead_names=tuple(leads),
        units="mV",
        study_instance_uid="2.25.0",
        series_instance_uid="2.25.1",
        sop_instance_uid="2.25.3",
    )


def trial_run(model: LoadedModel) -> float:
    """Run the model once on a dummy input of its own kind; return the seconds it took.

    Raises
    ------
    ModelPackageError
        The run failed, or its outputs do not match the package's labels.
    """
    task = model.spec.task
    start = time.perf_counter()
    try:
        if task == "segmentation":
            channels = segment(model, _volume(model), batch_size=1, amp=False).shape[0]
        elif task == "detection":
            detect(model, _volume(model))  # the whole path (a featureless volume: no blob)
            views = len(model.spec.input.patch_channels)
            one = score(model.module, np.zeros((1, views, PATCH, PATCH, PATCH), np.float16))
            if one.shape != (1,):
                raise ValueError(f"one score per candidate expected, got shape {one.shape[1:]}")
            channels = 1
        elif task == "classification":
            channels = classify(model, _volume(model), amp=False)[0].shape[0]
        elif task == "sequence":
            channels = predict_sequence(model, _waveform(model), amp=False).shape[0]
        else:
            volume = _volume(model)
            channels = predict_change(model, [volume, volume], [30, 0], amp=False).shape[0]
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ModelPackageError(
            f"{model.spec.folder / 'model.toml'}: trial run on a dummy input failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    check_outputs(model, int(channels))
    return time.perf_counter() - start


def load_and_try(folder: Path, device: torch.device) -> LoadedModel:
    """Verify, load and trial-run a package: what the worker and check-config do."""
    model = load_package(folder, device)
    trial_run(model)
    return model


def check_package(folder: Path) -> tuple[LoadedModel, float]:
    """What ``ainode check-config`` does per package: load on the CPU, try; the trial's seconds."""
    model = load_package(folder, torch.device("cpu"))
    return model, trial_run(model)
