"""Preprocessing shared by inference and training, so the two can never drift.

Images: clip to the package's window and scale to [0, 1]; resample to its
target spacing; for whole-volume models, fit the package's grid size (resize,
or, with a target spacing, crop or pad around the centre so that a millimetre
stays a millimetre: what comparing a study with its priors needs).
Waveforms: pick the package's leads in order, resample to its rate, crop or
pad to its length.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.nn import functional as F

from dicomio.errors import MissingData, UnsupportedInput
from dicomio.leads import name_key
from dicomio.records import Volume, Waveform
from inference.spec import InputSpec

__all__ = [
    "days_between",
    "prepare_history",
    "prepare_volume",
    "prepare_waveform",
    "resampled_shape",
    "resampled_size",
    "window",
]


def window(array: npt.NDArray[np.float32], bounds: tuple[float, float] | None) -> Tensor:
    """(1, 1, D, H, W) float32, clipped and scaled to [0, 1] when a window is given."""
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if bounds is not None:
        low, high = bounds
        x = x.clamp(low, high)  # one copy; the volume itself is never modified
        x.sub_(low).div_(high - low)
    return x[None, None]  # (1, 1, D, H, W)


def resampled_shape(volume: Volume, target: tuple[float, float, float]) -> tuple[int, ...]:
    return resampled_size(volume.array.shape, volume.spacing, target)


def resampled_size(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, ...]:
    """The grid of ``shape`` voxels of ``spacing`` mm resampled to ``target`` mm."""
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))


def _centre_fit(x: Tensor, size: tuple[int, int, int]) -> Tensor:
    """Crop or zero-pad the last three axes around their centre to ``size``."""
    for axis, want in zip((2, 3, 4), size, strict=True):
        have = x.shape[axis]
        if have > want:
            start = (have - want) // 2
            x = x.narrow(axis, start, want)
        elif have < want:
            before = (want - have) // 2
            pad = [0, 0] * (4 - axis) + [before, want - have - before]
            x = F.pad(x, pad)
    return x


def prepare_volume(volume: Volume, spec: InputSpec) -> Tensor:
    """(1, 1, *size) for a whole-volume model (classification, progression).

    Without a target spacing the volume is resized to ``size``; with one it is
    resampled to that spacing and cropped or padded to ``size`` around its centre.
    """
    x = window(volume.array, spec.window)
    if spec.target_spacing is not None:
        x = F.interpolate(x, size=resampled_shape(volume, spec.target_spacing), mode="trilinear")
        return _centre_fit(x, spec.size) if spec.size is not None else x
    if spec.size is not None:
        x = F.interpolate(x, size=spec.size, mode="trilinear")
    return x


def days_between(earlier: str, later: str) -> int:
    """Days from one DICOM date (YYYYMMDD) to another; a malformed date is a named error."""
    try:
        start = datetime.strptime(earlier, "%Y%m%d").date()
        end = datetime.strptime(later, "%Y%m%d").date()
    except ValueError:
        raise UnsupportedInput(f"study date {earlier!r} or {later!r} is not YYYYMMDD") from None
    return (end - start).days


def prepare_history(
    studies: Sequence[Volume | Tensor], days_before: Sequence[int], spec: InputSpec
) -> tuple[Tensor, Tensor]:
    """A study and its priors for a progression model, oldest first, current last.

    Each study is a volume, or one already made by :func:`prepare_volume` (the
    worker prepares each prior as soon as it is read, so that its full-size
    volume is freed at once). Returns ``x`` (1, T, 1, *size) and ``years``
    (1, T): each study's time before the current one in years (0 for the
    current study).
    """
    if len(studies) != len(days_before) or len(studies) < 2:
        raise ValueError("a history needs the current study and at least one prior")
    x = torch.stack(
        [(prepare_volume(v, spec) if isinstance(v, Volume) else v)[0] for v in studies]
    )[None]
    years = torch.tensor([[d / 365.25 for d in days_before]], dtype=torch.float32)
    return x, years


def prepare_waveform(waveform: Waveform, spec: InputSpec) -> Tensor:
    """(1, leads, samples) in the model's lead order, rate and length."""
    data = waveform.data
    if spec.leads:  # matched by what each lead is, not by its spelling (dicomio.leads)
        index = {key: i for i, key in enumerate(waveform.keys)}
        wanted = [name_key(lead) for lead in spec.leads]
        missing = [lead for lead, key in zip(spec.leads, wanted, strict=True) if key not in index]
        if missing:
            raise MissingData(
                f"waveform lacks the lead(s) the model needs: {', '.join(missing)} "
                f"(it has {', '.join(waveform.lead_names)})"
            )
        data = data[[index[key] for key in wanted]]
    x = torch.from_numpy(np.ascontiguousarray(data))[None]  # (1, leads, samples)
    if spec.sampling_hz and abs(spec.sampling_hz - waveform.sampling_hz) > 1e-6:
        n = round(x.shape[-1] * spec.sampling_hz / waveform.sampling_hz)
        x = F.interpolate(x, size=n, mode="linear")
    if spec.samples:
        x = x[..., : spec.samples]
        x = F.pad(x, [0, spec.samples - x.shape[-1]])
    return x
