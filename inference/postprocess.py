"""Model output -> typed results: lesions with measurements, findings with thresholds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial.distance import pdist

from dicomio.records import Finding, Lesion, Volume
from inference.spec import LabelSpec

__all__ = ["findings", "label_lesions", "lesions"]

_MAX_SURFACE_POINTS = 2000


def _longest_diameter_mm(
    component: npt.NDArray[np.bool_], offset: np.ndarray, volume: Volume
) -> float:
    surface = component & ~ndimage.binary_erosion(component)
    points = np.argwhere(surface) + offset
    if len(points) < 2:
        return float(max(volume.spacing[1:]))
    if len(points) > _MAX_SURFACE_POINTS:  # deterministic thinning keeps the extremes likely
        points = points[np.linspace(0, len(points) - 1, _MAX_SURFACE_POINTS).astype(int)]
    return float(pdist(volume.to_patient(points)).max())


def lesions(
    probability: npt.NDArray[np.float32], volume: Volume, label: LabelSpec, min_voxels: int = 1
) -> tuple[Lesion, ...]:
    """Connected components (26-connected) of ``probability >= threshold``, largest first.

    Components smaller than the label's ``min_volume_mm3`` (or ``min_voxels``)
    are dropped.
    """
    _labelled, _count, found = _components(probability, volume, label, min_voxels)
    return tuple(lesion for _index, lesion in found)


def label_lesions(
    probability: npt.NDArray[np.float32], volume: Volume, label: LabelSpec, min_voxels: int = 1
) -> tuple[tuple[Lesion, ...], npt.NDArray[np.uint16]]:
    """:func:`lesions` and a label map on the same grid: voxel value n = the n-th lesion
    (dropped components are not in the map)."""
    labelled, count, found = _components(probability, volume, label, min_voxels)
    relabel = np.zeros(count + 1, dtype=np.uint16)
    for n, (index, _lesion) in enumerate(found, start=1):
        relabel[index] = n
    return tuple(lesion for _index, lesion in found), relabel[labelled]


def _components(
    probability: npt.NDArray[np.float32], volume: Volume, label: LabelSpec, min_voxels: int
) -> tuple[npt.NDArray[np.int32], int, list[tuple[int, Lesion]]]:
    """The labelled components, their number, and (component index, lesion), largest first."""
    floor = int(np.ceil(label.min_volume_mm3 / volume.voxel_volume_mm3 - 1e-9))
    min_voxels = max(min_voxels, floor, 1)
    mask = probability >= label.threshold
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    found: list[tuple[int, Lesion]] = []
    for index, box in enumerate(ndimage.find_objects(labelled), start=1):
        if box is None:
            continue
        component = labelled[box] == index
        voxels = int(component.sum())
        if voxels < min_voxels:
            continue
        offset = np.array([s.start for s in box])
        centre = np.argwhere(component).mean(axis=0) + offset
        found.append(
            (
                index,
                Lesion(
                    label=label.name,
                    code=label.code,
                    voxel_count=voxels,
                    volume_mm3=voxels * volume.voxel_volume_mm3,
                    centroid_mm=tuple(float(v) for v in volume.to_patient(centre)),  # type: ignore[arg-type]
                    longest_diameter_mm=_longest_diameter_mm(component, offset, volume),
                    bbox_kji=(
                        (box[0].start, box[1].start, box[2].start),
                        (box[0].stop - 1, box[1].stop - 1, box[2].stop - 1),
                    ),
                    mean_probability=float(probability[box][component].mean()),
                ),
            )
        )
    found.sort(key=lambda item: -item[1].voxel_count)
    return labelled, int(count), found


def findings(probabilities: Sequence[float], labels: Sequence[LabelSpec]) -> tuple[Finding, ...]:
    """One finding per label: probability, its threshold, and whether it is met."""
    if len(probabilities) != len(labels):
        raise ValueError(f"model gave {len(probabilities)} probabilities for {len(labels)} labels")
    return tuple(
        Finding(
            label=label.name,
            code=label.code,
            probability=float(p),
            threshold=label.threshold,
            positive=bool(p >= label.threshold),
        )
        for p, label in zip(probabilities, labels, strict=True)
    )
