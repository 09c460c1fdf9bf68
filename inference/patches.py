"""What the candidate CNN sees: a few windowed views of the scan around each candidate.

Each channel is a named view (``CHANNELS``) of the volume on the candidates' grid
(``inference.candidates.ISO_MM``), cut as a ``PATCH``³ cube centred on the candidate, air
outside the scan:

- ``lung``: -1000..400 HU, 30 mm across;
- ``soft_tissue``: -160..240 HU, 30 mm across;
- ``lung_coarse``: the lung window at twice the voxel size, 60 mm across (the context);
- ``organ_smooth``: the scan smoothed by a Gaussian of 1.5 voxels (1.9 mm) in a
  -40..160 HU window, 30 mm across. A hypodense liver lesion 20 HU off its liver under
  20 HU of noise is 5 % of the soft-tissue window and as faint as the noise; smoothed and
  windowed so, it stands out of it (docs/lesion-seg-anatomy.md, runs 4 and 5).

``DEFAULT_CHANNELS`` are what every package without ``[input] patch_channels`` was trained
with. Numpy and scipy only: training and the worker cut the same patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = ["CHANNELS", "DEFAULT_CHANNELS", "PATCH", "patches", "windowed"]

#: Patch edge in voxels (every view).
PATCH = 24
#: Windows (HU): lung, soft tissue, and solid organs seen through the smoothing.
LUNG, SOFT, ORGAN_SMOOTH = (-1000.0, 400.0), (-160.0, 240.0), (-40.0, 160.0)


@dataclass(frozen=True, slots=True)
class View:
    said: str  # what a model card calls it
    window: tuple[float, float]  # HU, scaled to [0, 1] and clipped
    coarse: bool = False  # at twice the candidates' voxel size
    smooth_voxels: float = 0.0  # Gaussian sigma before windowing (0: none)


CHANNELS: dict[str, View] = {
    "lung": View("lung window", LUNG),
    "soft_tissue": View("soft-tissue window", SOFT),
    "lung_coarse": View("lung window at twice the voxel size", LUNG, coarse=True),
    "organ_smooth": View("smoothed organ window", ORGAN_SMOOTH, smooth_voxels=1.5),
}
DEFAULT_CHANNELS = ("lung", "soft_tissue", "lung_coarse")


def windowed(hu: npt.NDArray[np.floating], window: tuple[float, float]) -> npt.NDArray[np.float32]:
    low, high = window
    scaled = (np.asarray(hu, np.float32) - np.float32(low)) / np.float32(high - low)
    return np.asarray(np.clip(scaled, 0.0, 1.0), np.float32)


def _cut(
    volume: npt.NDArray[np.float32], centre: npt.NDArray[np.int64], size: int, fill: float
) -> npt.NDArray[np.float32]:
    """A ``size``³ cube of ``volume`` centred on ``centre`` (its voxel ``size // 2``), ``fill``
    outside the volume."""
    out = np.full((size, size, size), fill, np.float32)
    start = centre - size // 2
    src = tuple(
        slice(max(0, int(a)), min(n, int(a) + size))
        for a, n in zip(start, volume.shape, strict=True)
    )
    dst = tuple(slice(s.start - int(a), s.stop - int(a)) for s, a in zip(src, start, strict=True))
    if all(s.stop > s.start for s in src):
        out[dst] = volume[src]
    return out


def patches(
    hu: npt.NDArray[np.float32],
    points: npt.NDArray[np.int64],
    channels: Sequence[str] = DEFAULT_CHANNELS,
) -> npt.NDArray[np.float16]:
    """(n, len(channels), PATCH, PATCH, PATCH): each point's views, in ``channels``' order
    (names of ``CHANNELS``)."""
    views = [CHANNELS[name] for name in channels]  # KeyError: inference.spec checks names
    keys = [(v.coarse, v.smooth_voxels) for v in views]  # views that differ in window only
    source = {k: _source(hu, *k) for k in dict.fromkeys(keys)} if len(points) else {}
    out = np.empty((len(points), len(views), PATCH, PATCH, PATCH), np.float16)
    for i, p in enumerate(points):
        cut = {k: _cut(source[k], p // 2 if k[0] else p, PATCH, -1000.0) for k in source}
        for c, (view, key) in enumerate(zip(views, keys, strict=True)):
            out[i, c] = windowed(cut[key], view.window)
    return out


def _source(hu: npt.NDArray[np.float32], coarse: bool, sigma: float) -> npt.NDArray[np.float32]:
    """The volume a view is cut from: at twice the voxel size if ``coarse``, smoothed by a
    Gaussian of ``sigma`` voxels if any."""
    base = ndimage.zoom(hu, 0.5, order=1) if coarse else hu
    return ndimage.gaussian_filter(base.astype(np.float32), sigma) if sigma else base
