"""The source series of a result, as header-only datasets in the result's grid order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from dicomio.errors import InconsistentSeries

__all__ = ["SourceSeries", "copy_study_context", "read_sources"]

# Study/patient attributes copied onto every result (dcentvfy compares them).
_STUDY_CONTEXT = (
    "StudyDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
)


@dataclass(frozen=True, slots=True)
class SourceSeries:
    """The source images of a result grid: slice ``k`` is ``slices[k]`` (frame ``frames[k]``).

    One file per slice: ``frames`` is empty. An enhanced multi-frame image: every
    slice is the same dataset and ``frames`` holds each slice's 1-based frame.
    """

    slices: tuple[Dataset, ...]
    frames: tuple[int, ...] = ()

    @property
    def first(self) -> Dataset:
        return self.slices[0]

    @property
    def instances(self) -> list[Dataset]:
        """The distinct source instances, in slice order (highdicom's ``source_images``)."""
        return [self.first] if self.frames else list(self.slices)

    def in_frame_order(self, array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """A (slices, rows, cols) array in the order of the source frames."""
        return array[np.argsort(self.frames)] if self.frames else array

    def region_source(self, k: int) -> hd.sr.SourceImageForRegion:
        if self.frames:
            return hd.sr.SourceImageForRegion.from_source_image(
                self.first, referenced_frame_numbers=[self.frames[k]]
            )
        return hd.sr.SourceImageForRegion.from_source_image(self.slices[k])

    def key_images(self, ks: Sequence[int]) -> list[Dataset]:
        return [self.first] if self.frames else [self.slices[k] for k in sorted(set(ks))]

    def library_images(self, ks: Sequence[int]) -> list[Dataset]:
        """Images for the SR's Image Library. highdicom describes an image by its
        top-level geometry, which an enhanced image keeps in its functional groups:
        a copy gets frame 1's spacing, orientation and position (the library entry
        describes the instance; the SR's regions name their frames)."""
        if not self.frames:
            return self.key_images(ks)
        copy = Dataset(self.first)
        for sequence, keyword in (
            ("PixelMeasuresSequence", "PixelSpacing"),
            ("PixelMeasuresSequence", "SliceThickness"),
            ("PlaneOrientationSequence", "ImageOrientationPatient"),
            ("PlanePositionSequence", "ImagePositionPatient"),
        ):
            item = _frame_group(self.first, sequence)
            if item is not None and keyword in item and keyword not in copy:
                setattr(copy, keyword, item[keyword].value)
        return [copy]

    def pixel_spacing_mm(self) -> float:
        """The smaller in-plane spacing (enhanced images keep it in the functional groups)."""
        spacing = self.first.get("PixelSpacing")
        if spacing is None:
            measures = _frame_group(self.first, "PixelMeasuresSequence")
            if measures is None or "PixelSpacing" not in measures:
                raise InconsistentSeries("the source has no pixel spacing")
            spacing = measures.PixelSpacing
        return min(float(v) for v in spacing)


def _frame_group(ds: Dataset, sequence: str) -> Dataset | None:
    """Frame 1's item of a functional group, per-frame or shared (where it is)."""
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        items = ds.get(groups)
        if items and items[0].get(sequence):
            item: Dataset = items[0].get(sequence)[0]
            return item
    return None


def read_headers(paths: Sequence[Path]) -> list[Dataset]:
    """The headers (no pixel data) of stored instances."""
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]


def read_sources(
    paths: Sequence[Path],
    sop_instance_uids: Sequence[str],
    frames: Sequence[int] = (),
    headers: Sequence[Dataset] = (),
) -> SourceSeries:
    """Headers (no pixel data) of ``paths``, ordered like ``sop_instance_uids``.

    The order is the order of the result's arrays (slices sorted along the
    normal), which highdicom follows frame by frame. ``headers``: those of
    ``paths`` already in memory (read when the volume was built); else they are
    read here.
    """
    headers = list(headers) or read_headers(paths)
    if not sop_instance_uids:  # no grid (a series a model declined): instance order
        return SourceSeries(tuple(sorted(headers, key=lambda d: int(d.get("InstanceNumber") or 0))))
    by_uid = {str(ds.SOPInstanceUID): ds for ds in headers}
    missing = [uid for uid in sop_instance_uids if uid not in by_uid]
    if missing:
        raise InconsistentSeries(f"source instance {missing[0]} is gone from the store")
    return SourceSeries(tuple(by_uid[uid] for uid in sop_instance_uids), tuple(frames))


def copy_study_context(result: Dataset, source: Dataset) -> None:
    """Copy study-level attributes highdicom leaves out, and Body Part/Laterality for images."""
    for keyword in _STUDY_CONTEXT:
        if keyword in source and keyword not in result:
            setattr(result, keyword, source[keyword].value)
    if result.Modality in ("SEG", "OT") or "FloatPixelData" in result:
        for keyword in ("BodyPartExamined", "Laterality"):
            if keyword in source and keyword not in result:
                setattr(result, keyword, source[keyword].value)
        is_map = result.Modality != "SEG"  # the SEG IOD forbids it in this case
        if is_map and "BodyPartExamined" not in result and "Laterality" not in result:
            # General Series: Laterality is required (type 2C) unless the body part is
            # known to be unpaired; with no body part, present and empty (unknown).
            result.Laterality = ""
