"""The candidate detector at work (``task = "detection"``): a CT volume → its lesions' voxels.

1. The volume is regridded to 1.25 mm cubes (``inference.candidates.regrid``) and its blob
   candidates found (``[input] candidates``: how many bright, dark and solid-organ blobs;
   ``[input] ground_glass``: how many faint lung blobs, ``[input] organ_snr``: how many
   blobs of each sign inside solid organs by contrast to noise; each 0 unless the CNN was
   trained so).
2. Each candidate's patches (``inference.patches``, the views ``[input] patch_channels``
   names) are scored by the package's ``CandidateNet``: as cut, or with ``[input] turns``
   the mean logit over the patch as cut and turned half a turn about each axis (``TURNS``).
3. One detection per place (``[input] suppress_mm``), those at or above the label's
   threshold kept; each is outlined at its lesion's scale
   (``inference.candidates.lesion_outline``) and its voxels carry its score.
4. The map goes back to the volume's own grid (nearest voxel): ``(1, D, H, W)``, the score
   inside each detection and 0 elsewhere, so that lesions, measurements, SEG, SR and heat
   map are made from it exactly as from a segmentation model's probabilities.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from dicomio.records import Volume
from inference.candidates import (
    ISO_MM,
    find_candidates,
    lesion_outline,
    regrid,
    suppress,
)
from inference.execute import segment
from inference.package import LoadedModel
from inference.patches import patches

__all__ = ["TURNS", "Detected", "Detection", "detect", "score", "voxel_probabilities"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Detection:
    centre_kji: tuple[int, int, int]  # on the volume's own grid
    score: float
    diameter_mm: float  # of the blob scale that found it
    bright: bool


@dataclass(frozen=True, slots=True)
class Detected:
    probability: npt.NDArray[np.float32]  # (1, D, H, W) on the volume's grid
    detections: tuple[Detection, ...]  # strongest first
    candidates: int


#: The patch turned half a turn about each axis (the axes it flips, of ``(n, c, z, y, x)``),
#: the unturned first: the turns ``score`` averages over (the CNN is trained with every flip).
TURNS: tuple[tuple[int, ...], ...] = ((), (3, 4), (2, 4), (2, 3))


@torch.inference_mode()
def score(
    module: nn.Module,
    x: npt.NDArray[np.float16],
    *,
    device: torch.device | None = None,
    batch: int = 256,
    turns: int = 1,
) -> npt.NDArray[np.float32]:
    """Lesion probability of each candidate's patches ``(n, channels, 24, 24, 24)``; with
    ``turns`` > 1, of the mean logit over the first ``turns`` of :data:`TURNS` (``turns=1``:
    the patch as cut, exactly as before)."""
    if not 1 <= turns <= len(TURNS):
        raise ValueError(f"turns: 1 to {len(TURNS)}, not {turns}")
    out = []
    for k in range(0, len(x), batch):
        chunk = torch.from_numpy(x[k : k + batch]).float()
        if device is not None:
            chunk = chunk.to(device)
        logit = module(chunk.contiguous(memory_format=torch.channels_last_3d)).float()
        for dims in TURNS[1:turns]:
            turned = chunk.flip(dims).contiguous(memory_format=torch.channels_last_3d)
            logit = logit + module(turned).float()
        out.append(torch.sigmoid(logit / turns).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def _back(iso: npt.NDArray[np.float32], shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """``iso`` (made by ``regrid``, which maps the first and last voxel centres onto each
    other) on the grid of ``shape``, nearest voxel."""
    index = [
        np.clip(np.rint(np.arange(n) * (m - 1) / max(n - 1, 1)), 0, m - 1).astype(np.intp)
        for n, m in zip(shape, iso.shape, strict=True)
    ]
    return np.ascontiguousarray(iso[np.ix_(*index)])


def _source_voxel(
    point: npt.NDArray[np.int64], iso_shape: tuple[int, ...], shape: tuple[int, ...]
) -> tuple[int, int, int]:
    """The voxel of the grid of ``shape`` nearest to ``point`` of the ``regrid`` grid."""
    k, j, i = (
        round(float(p) * (n - 1) / (m - 1)) if m > 1 else 0
        for p, n, m in zip(point, shape, iso_shape, strict=True)
    )
    return k, j, i


def detect(model: LoadedModel, volume: Volume, *, batch: int = 256) -> Detected:
    """The detections of ``model`` (a ``task = "detection"`` package) in ``volume``."""
    spec = model.spec
    bright_keep, dark_keep, organ_keep = spec.input.candidates
    hu = regrid(volume.array, volume.spacing)
    found = find_candidates(
        hu,
        bright_keep=bright_keep,
        dark_keep=dark_keep,
        organ_keep=organ_keep,
        ground_glass_keep=spec.input.ground_glass,
        organ_snr_keep=spec.input.organ_snr,
    )
    x = patches(hu, found.points, spec.input.patch_channels)
    scores = score(model.module, x, device=model.device, batch=batch, turns=spec.input.turns)
    kept = suppress(found.points, scores, radius=spec.input.suppress_mm / ISO_MM)
    (label,) = spec.labels  # a detection package has one (inference.spec)
    kept = kept[scores[kept] >= label.threshold]
    iso = np.zeros(hu.shape, np.float32)
    for i in kept[::-1]:  # the strongest last: where outlines meet, it keeps its score
        where, mask = lesion_outline(hu, found, int(i))
        iso[where][mask] = scores[i]
    probability = _back(iso, volume.array.shape)[None]
    detections = tuple(
        Detection(
            centre_kji=_source_voxel(found.points[i], hu.shape, volume.array.shape),
            score=float(scores[i]),
            diameter_mm=float(found.diameter_mm[i]),
            bright=bool(found.bright[i]),
        )
        for i in kept
    )
    logger.info(
        "%s: %d candidates, %d detections in series %s",
        spec.name,
        len(found),
        len(detections),
        volume.series_instance_uid,
    )
    return Detected(probability=probability, detections=detections, candidates=len(found))


def voxel_probabilities(
    model: LoadedModel, volume: Volume, *, batch_size: int, amp: bool
) -> npt.NDArray[np.float32]:
    """``(labels, D, H, W)`` on the volume's grid: a segmentation model's probabilities, or
    a detection model's score inside each detection's outline (0 elsewhere). What the
    worker's pipeline and ``ainode train evaluate`` both turn into lesions."""
    if model.spec.task == "detection":
        # a batch of the detector is 64 small patches per segmentation patch
        return detect(model, volume, batch=64 * batch_size).probability
    return segment(model, volume, batch_size=batch_size, amp=amp)
