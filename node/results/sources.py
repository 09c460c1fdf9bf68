"""The source series of a result, as header-only datasets in the result's grid order."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from inference.errors import InconsistentSeries

__all__ = ["copy_study_context", "read_sources"]

# Study/patient attributes copied onto every result (dcentvfy compares them).
_STUDY_CONTEXT = (
    "StudyDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
)


def read_sources(paths: Sequence[Path], sop_instance_uids: Sequence[str]) -> list[Dataset]:
    """Headers (no pixel data) of ``paths``, ordered like ``sop_instance_uids``.

    The order is the order of the result's arrays (slices sorted along the
    normal), which highdicom follows frame by frame.
    """
    by_uid: dict[str, Dataset] = {}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_uid[str(ds.SOPInstanceUID)] = ds
    missing = [uid for uid in sop_instance_uids if uid not in by_uid]
    if missing:
        raise InconsistentSeries(f"source instance {missing[0]} is gone from the store")
    return [by_uid[uid] for uid in sop_instance_uids]


def copy_study_context(result: Dataset, source: Dataset) -> None:
    """Copy study-level attributes highdicom leaves out, and Body Part/Laterality for images."""
    for keyword in _STUDY_CONTEXT:
        if keyword in source and keyword not in result:
            setattr(result, keyword, source[keyword].value)
    if result.Modality in ("SEG", "OT") or "FloatPixelData" in result:
        for keyword in ("BodyPartExamined", "Laterality"):
            if keyword in source and keyword not in result:
                setattr(result, keyword, source[keyword].value)
