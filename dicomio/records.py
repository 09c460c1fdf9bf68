"""Frozen records passed between the inference stages (numpy only, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicomio.leads import name_key

__all__ = ["Finding", "Lesion", "Outcome", "SeriesResult", "Volume", "Waveform", "axial_volume"]

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True, kw_only=True)
class Volume:
    """A 3-D image on a regular grid in DICOM patient coordinates (LPS, mm).

    ``array`` is indexed ``[k, j, i]`` (slice, row, column). Voxel ``(k, j, i)``
    sits at ``origin + i*sx*row_direction + j*sy*column_direction + k*sz*normal``
    where ``spacing = (sz, sy, sx)``; ``row_direction`` and ``column_direction``
    are the two halves of Image Orientation (Patient).
    """

    array: FloatArray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    normal: tuple[float, float, float]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]
    modality: str = ""
    # Enhanced multi-frame: the 1-based frame of each slice (empty: one file a slice).
    frame_numbers: tuple[int, ...] = ()
    # The source files' headers (no pixel data) as read to build the volume, for the
    # result encoders (no second read); empty where the builder kept none.
    headers: tuple[Dataset, ...] = field(default=(), repr=False, compare=False)

    def affine(self) -> npt.NDArray[np.float64]:
        """4x4 matrix from (k, j, i, 1) voxel indices to (x, y, z, 1) LPS mm."""
        sz, sy, sx = self.spacing
        m = np.eye(4)
        m[:3, 0] = np.asarray(self.normal) * sz
        m[:3, 1] = np.asarray(self.column_direction) * sy
        m[:3, 2] = np.asarray(self.row_direction) * sx
        m[:3, 3] = self.origin
        return m

    def to_patient(self, kji: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """LPS coordinates (mm) of voxel indices given as (..., 3) in (k, j, i) order."""
        points = np.asarray(kji, dtype=np.float64)
        return points @ self.affine()[:3, :3].T + self.affine()[:3, 3]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))


def axial_volume(
    array: npt.ArrayLike, spacing: tuple[float, float, float], uid: str, *, modality: str = ""
) -> Volume:
    """A volume that no file gave: axial, its first voxel at the origin, UIDs made under
    ``uid`` (study .1, series .2, frame of reference .3, slice k .4.k). For dummy inputs and
    generated scans."""
    values = np.asarray(array, np.float32)
    return Volume(
        array=values,
        spacing=spacing,
        origin=(0.0, 0.0, 0.0),
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        normal=(0.0, 0.0, 1.0),
        study_instance_uid=f"{uid}.1",
        series_instance_uid=f"{uid}.2",
        frame_of_reference_uid=f"{uid}.3",
        sop_instance_uids=tuple(f"{uid}.4.{k}" for k in range(values.shape[0])),
        modality=modality,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Waveform:
    """An ECG (or other waveform) as (leads, samples) in physical units."""

    data: FloatArray
    sampling_hz: float
    lead_names: tuple[str, ...]  # as the device names them (shown in messages)
    units: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    # What each lead is ("I", "aVR", "V1" ...: dicomio.leads), by code where it has one.
    lead_keys: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """The leads by what they are; from their names when no codes were read."""
        return self.lead_keys or tuple(name_key(n) for n in self.lead_names)


@dataclass(frozen=True, slots=True, kw_only=True)
class Lesion:
    """One connected component of a segmentation, measured in patient space."""

    label: str
    code: tuple[str, str, str]  # the model label's code: what the lesion is
    voxel_count: int
    volume_mm3: float
    centroid_mm: tuple[float, float, float]
    longest_diameter_mm: float
    bbox_kji: tuple[tuple[int, int, int], tuple[int, int, int]]
    mean_probability: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """A study-level finding: one label's probability against its threshold."""

    label: str
    code: tuple[str, str, str]
    probability: float
    threshold: float
    positive: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What one model concluded about one series, stored before any DICOM is written."""

    model_name: str
    model_version: str
    model_sha256: str
    task: str
    series_instance_uid: str
    findings: tuple[Finding, ...] = ()
    lesions: tuple[Lesion, ...] = ()
    timings_s: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # Why the model did not run on the series (a progression model without priors).
    not_run: str = ""
    # Why the series lies outside the input the model was validated on
    # ("outside the validated input of MODEL (reason)"): no findings are reported.
    declined: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesResult:
    """An outcome with the maps it was measured on, on the source series' grid.

    ``lesion_labels[k, j, i] == n`` marks voxels of ``outcome.lesions[n - 1]``;
    ``attention`` is the classifier's map scaled to 0..1. Both are kept in memory
    only, for the result encoders; the stored outcome is ``outcome``.
    ``comparison_paths`` are the files of the prior studies a progression model
    compared with (the report lists them as other evidence).
    """

    outcome: Outcome
    source_paths: tuple[Path, ...]
    sop_instance_uids: tuple[str, ...] = ()
    frame_numbers: tuple[int, ...] = ()
    lesion_labels: npt.NDArray[np.uint16] | None = None
    attention: FloatArray | None = None
    comparison_paths: tuple[Path, ...] = ()
    # The source headers when already in memory (``Volume.headers``); else read again.
    source_headers: tuple[Dataset, ...] = field(default=(), repr=False, compare=False)
