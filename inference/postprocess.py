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
    _labelled, _crop, _count, found = _components(probability, volume, label, min_voxels)
    return tuple(lesion for _index, lesion in found)


def label_lesions(
    probability: npt.NDArray[np.float32], volume: Volume, label: LabelSpec, min_voxels: int = 1
) -> tuple[tuple[Lesion, ...], npt.NDArray[np.uint16]]:
    """:func:`lesions` and a label map on the same grid: voxel value n = the n-th lesion
    (dropped components are not in the map)."""
    labelled, crop, count, found = _components(probability, volume, label, min_voxels)
    relabel = np.zeros(count + 1, dtype=np.uint16)
    for n, (index, _lesion) in enumerate(found, start=1):
        relabel[index] = n
    label_map = np.zeros(probability.shape, dtype=np.uint16)
    label_map[crop] = relabel[labelled]
    return tuple(lesion for _index, lesion in found), label_map


def _mask_box(mask: npt.NDArray[np.bool_]) -> tuple[slice, ...]:
    """The smallest box holding every true voxel (empty slices when there is none)."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if len(hits) else slice(0, 0))
    return tuple(box)


def _label(mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.integer], int]:
    """26-connected components; 16-bit labels when they fit (half the memory of 32)."""
    structure = np.ones((3, 3, 3), dtype=bool)
    try:
        labelled, count = ndimage.label(mask, structure=structure, output=np.uint16)
    except RuntimeError:  # more than 65,535 components: scipy's "insufficient bit-depth"
        labelled, count = ndimage.label(mask, structure=structure)
    return labelled, int(count)


def _components(
    probability: npt.NDArray[np.float32], volume: Volume, label: LabelSpec, min_voxels: int
) -> tuple[npt.NDArray[np.integer], tuple[slice, ...], int, list[tuple[int, Lesion]]]:
    """The labelled components within the box ``crop`` that holds them all, their number,
    and (component index, lesion), largest first.

    Labelling only the box around the thresholded voxels (small on most studies)
    keeps post-processing's memory near that of the probability map itself.
    """
    floor = int(np.ceil(label.min_volume_mm3 / volume.voxel_volume_mm3 - 1e-9))
    min_voxels = max(min_voxels, floor, 1)
    mask = probability >= label.threshold
    crop = _mask_box(mask)
    labelled, count = _label(mask[crop])
    del mask
    origin = np.array([s.start for s in crop])
    found: list[tuple[int, Lesion]] = []
    boxes = ndimage.find_objects(labelled) if count else []  # (an empty array has no max)
    for index, local in enumerate(boxes, start=1):
        if local is None:
            continue
        component = labelled[local] == index
        voxels = int(component.sum())
        if voxels < min_voxels:
            continue
        offset = np.array([s.start for s in local]) + origin
        box = tuple(
            slice(int(o), int(o) + s.stop - s.start) for o, s in zip(offset, local, strict=True)
        )
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
    return labelled, crop, count, found


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
