"""Preprocessing shared by inference and training, so the two can never drift.

Images: clip to the package's window and scale to [0, 1]; resample to its
target spacing. Waveforms: pick the package's leads in order, resample to its
rate, crop or pad to its length.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.nn import functional as F

from inference.records import Volume, Waveform
from inference.spec import InputSpec

__all__ = ["prepare_waveform", "resampled_shape", "window"]


def window(array: npt.NDArray[np.float32], bounds: tuple[float, float] | None) -> Tensor:
    """(1, 1, D, H, W) float32, clipped and scaled to [0, 1] when a window is given."""
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if bounds is not None:
        low, high = bounds
        x = x.clamp(low, high)  # one copy; the volume itself is never modified
        x.sub_(low).div_(high - low)
    return x[None, None]  # (1, 1, D, H, W)


def resampled_shape(volume: Volume, target: tuple[float, float, float]) -> tuple[int, ...]:
    return tuple(
        max(1, round(n * s / t))
        for n, s, t in zip(volume.array.shape, volume.spacing, target, strict=True)
    )


def prepare_waveform(waveform: Waveform, spec: InputSpec) -> Tensor:
    """(1, leads, samples) in the model's lead order, rate and length."""
    data = waveform.data
    if spec.leads:
        index = {name: i for i, name in enumerate(waveform.lead_names)}
        missing = [lead for lead in spec.leads if lead not in index]
        if missing:
            raise ValueError(f"waveform lacks the lead(s) the model needs: {', '.join(missing)}")
        data = data[[index[lead] for lead in spec.leads]]
    x = torch.from_numpy(np.ascontiguousarray(data))[None]  # (1, leads, samples)
    if spec.sampling_hz and abs(spec.sampling_hz - waveform.sampling_hz) > 1e-6:
        n = round(x.shape[-1] * spec.sampling_hz / waveform.sampling_hz)
        x = F.interpolate(x, size=n, mode="linear")
    if spec.samples:
        x = x[..., : spec.samples]
        x = F.pad(x, [0, spec.samples - x.shape[-1]])
    return x
