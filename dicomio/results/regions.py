"""Where a result is drawn: a circle on one slice, in pixel coordinates (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = ["Region", "hotspot_region", "lesion_regions", "whole_slice_region"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Region:
    """A circle on slice ``k`` (index into the sorted series), centre (x=column, y=row).

    Coordinates follow DICOM 2-D SCOORD: the top-left pixel's centre is (0.5, 0.5).
    """

    k: int
    x: float
    y: float
    radius: float


def lesion_regions(labels: npt.NDArray[np.uint16], count: int) -> list[Region]:
    """Lesions 1..count, each on its key slice (largest cross-section) as its
    equal-area circle, each looked at within its bounding box."""
    boxes = ndimage.find_objects(labels, max_label=count)
    regions = []
    for n, box in enumerate(boxes, start=1):
        if box is None:
            raise ValueError(f"lesion {n} is not in the label map")
        mask = labels[box] == n
        areas = mask.sum(axis=(1, 2))
        k = int(areas.argmax())
        rows, cols = np.nonzero(mask[k])
        radius = max(float(np.sqrt(areas[k] / np.pi)), 1.0)
        regions.append(
            Region(
                k=k + box[0].start,
                x=float(cols.mean()) + box[2].start + 0.5,
                y=float(rows.mean()) + box[1].start + 0.5,
                radius=radius,
            )
        )
    return regions


def hotspot_region(
    attention: npt.NDArray[np.float32], pixel_spacing_mm: float, radius_mm: float = 10.0
) -> Region:
    """The attention map's peak: the explanation of a study-level finding."""
    k, j, i = np.unravel_index(int(attention.argmax()), attention.shape)
    radius = max(radius_mm / pixel_spacing_mm, 2.0)
    return Region(k=int(k), x=float(i) + 0.5, y=float(j) + 0.5, radius=radius)


def whole_slice_region(shape: tuple[int, int, int]) -> Region:
    """No localisation: the middle slice as a whole (a model without attention)."""
    slices, rows, cols = shape
    return Region(k=slices // 2, x=cols / 2, y=rows / 2, radius=min(rows, cols) / 2 - 0.5)
