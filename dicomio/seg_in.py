"""DICOM Segmentation objects as ground truth: SEG -> a boolean mask on a loaded volume.

A hospital's ground truth usually comes as DICOM SEG (from a viewer or an
annotation tool), not as arrays. Each SEG frame names the source image it was
drawn on (Derivation Image Sequence); the frame is placed on the slice of the
volume that has that SOP Instance UID (and frame number, for an enhanced
multi-frame source), so the mask is on the same grid, in the same slice order,
as the node's loader builds the volume. BINARY and FRACTIONAL (threshold half
the maximum) are read; anything that cannot be placed is a named error.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomio.errors import InconsistentSeries, UnsupportedInput
from dicomio.records import Volume

__all__ = ["find_segmentations", "load_seg_mask"]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _header(path: Path) -> Dataset | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dcmread(path, stop_before_pixels=True)
    except Exception:
        return None  # not DICOM


def find_segmentations(folder: Path) -> dict[str, Path]:
    """Every SEG below ``folder`` by the Series Instance UID it references (headers only)."""
    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = _header(path)
        if ds is None or str(ds.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
            continue
        for ref in ds.get("ReferencedSeriesSequence", []):
            found.setdefault(str(ref.SeriesInstanceUID), path)
    return found


def _frames(ds: Dataset, path: Path) -> npt.NDArray[np.bool_]:
    kind = str(ds.get("SegmentationType", ""))
    if kind not in ("BINARY", "FRACTIONAL"):
        raise UnsupportedInput(f"{path.name}: Segmentation Type {kind!r} is not BINARY/FRACTIONAL")
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise UnsupportedInput(f"{path.name}: cannot decode the segmentation: {exc}") from None
    if pixels.ndim == 2:
        pixels = pixels[None]
    if kind == "FRACTIONAL":
        return pixels >= 0.5 * float(ds.get("MaximumFractionalValue", 255))
    return pixels > 0


def load_seg_mask(
    path: Path, volume: Volume, segments: set[int] | None = None
) -> npt.NDArray[np.bool_]:
    """The union of a SEG's segments (or of ``segments``) as a mask on ``volume``'s grid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path)
    if str(ds.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise UnsupportedInput(f"{path.name}: not a Segmentation object")
    shape = volume.array.shape
    if (int(ds.Rows), int(ds.Columns)) != shape[1:]:
        raise InconsistentSeries(
            f"{path.name}: SEG frames are {ds.Rows}x{ds.Columns}, the series {shape[1]}x{shape[2]}"
        )
    frames = _frames(ds, path)
    items = ds.get("PerFrameFunctionalGroupsSequence", [])
    if len(items) != frames.shape[0]:
        raise InconsistentSeries(f"{path.name}: {frames.shape[0]} frames but {len(items)} groups")
    if volume.frame_numbers:
        slots = {
            (uid, n): k
            for k, (uid, n) in enumerate(
                zip(volume.sop_instance_uids, volume.frame_numbers, strict=True)
            )
        }
    else:
        slots = {(uid, 0): k for k, uid in enumerate(volume.sop_instance_uids)}
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    mask = np.zeros(shape, dtype=bool)
    for f, item in enumerate(items):
        # One segment: its identification may sit in the shared functional groups.
        ident = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        if not ident:
            raise InconsistentSeries(f"{path.name}: frame {f + 1} names no segment")
        number = int(ident[0].ReferencedSegmentNumber)
        if segments is not None and number not in segments:
            continue
        try:
            source = item.DerivationImageSequence[0].SourceImageSequence[0]
        except (AttributeError, IndexError):
            raise InconsistentSeries(
                f"{path.name}: frame {f + 1} names no source image (Derivation Image Sequence)"
            ) from None
        uid = str(source.ReferencedSOPInstanceUID)
        frame = int(source.get("ReferencedFrameNumber", 0) or 0) if volume.frame_numbers else 0
        if (uid, frame) not in slots:
            raise InconsistentSeries(
                f"{path.name}: frame {f + 1} was drawn on {uid}, which is not in the series"
            )
        mask[slots[(uid, frame)]] |= frames[f]
    return mask
