"""Series -> volume and waveform -> sequence, read with pydicom (decoding happens here).

Slices are ordered by their position along the slice normal, never by
Instance Number; rescale slope/intercept are applied; geometry is kept in DICOM
patient coordinates (LPS). A series that cannot make one consistent volume
raises :class:`~inference.errors.InconsistentSeries` with the reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomio.errors import InconsistentSeries, MissingData, UnsupportedInput
from dicomio.leads import lead_key
from dicomio.records import Volume, Waveform
from storage.lookup import SeriesInfo

__all__ = [
    "SeriesScan",
    "StudyScan",
    "Unreadable",
    "is_axial",
    "load_volume",
    "load_waveform",
    "patient_and_date",
    "scan_studies",
    "series_files",
    "series_orientation",
]

_ORIENTATION_TOLERANCE = 1e-3
_GAP_TOLERANCE = 0.1  # relative deviation of one step from the median step


def _read(path: Path, **kwargs: Any) -> Dataset:
    """A file of a series, whole or header only; one pydicom cannot parse is an input error.

    An OSError (the file is gone, the disk failed) stays what it is: retrying may help.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dcmread(path, **kwargs)
    except OSError:
        raise
    except Exception as exc:  # pydicom raises many types on a file it cannot parse
        raise UnsupportedInput(
            f"{path.name}: cannot be read as DICOM ({type(exc).__name__}: {exc})"
        ) from None


_NAMES = {
    "Rows": "(0028,0010) Rows",
    "Columns": "(0028,0011) Columns",
    "SOPInstanceUID": "(0008,0018) SOP Instance UID",
    "PixelSpacing": "(0028,0030) Pixel Spacing",
    "ImageOrientationPatient": "(0020,0037) Image Orientation (Patient)",
    "ImagePositionPatient": "(0020,0032) Image Position (Patient)",
    "SamplingFrequency": "(003A,001A) Sampling Frequency",
    "ChannelDefinitionSequence": "(003A,0200) Channel Definition Sequence",
}


def _required(ds: Dataset, keyword: str, path: Path) -> Any:
    """An attribute the loader cannot do without; its absence is a permanent input error."""
    value = ds.get(keyword)
    if value is None or value == "":
        raise MissingData(f"{path.name}: no {_NAMES.get(keyword, keyword)}")
    return value


def _number(ds: Dataset, keyword: str, default: float, what: str, path: Path) -> float:
    try:
        raw = ds.get(keyword)  # pydicom converts (and may refuse) the value here
        return default if raw is None or raw == "" else float(raw)
    except (TypeError, ValueError):
        elem = ds.get_item(keyword)
        shown = elem.value if elem is not None else None
        if isinstance(shown, bytes):
            shown = shown.decode("ascii", "replace").strip()
        raise InconsistentSeries(f"{path.name}: {what} {str(shown)!r} is not a number") from None


def _floats(value: Any, n: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise InconsistentSeries(f"{what} is not numeric") from None
    if arr.shape != (n,):
        raise InconsistentSeries(f"{what} must have {n} values")
    return arr


@dataclass(frozen=True, slots=True, kw_only=True)
class Unreadable:
    """A file that looks like DICOM (or could not even be opened) but cannot be read."""

    path: Path
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesScan:
    """A folder's DICOM files by Series Instance UID, and the files that could not be read."""

    series: dict[str, list[Path]]
    unreadable: tuple[Unreadable, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyScan:
    """Studies -> series found among files and folders, and the files that could not be read."""

    studies: dict[str, list[SeriesInfo]]
    unreadable: tuple[Unreadable, ...] = ()


def _headers(
    files: Sequence[Path], tags: list[str] | None = None
) -> tuple[list[tuple[Path, Dataset]], list[Unreadable]]:
    """Read each file's header; a file that is not DICOM at all is skipped without a word.

    Only "not DICOM" (no Part 10 preamble, nothing that parses as a dataset)
    is silent: a file that cannot be opened, or a DICOM file whose header is
    corrupt or lacks the Study/Series Instance UID, is reported with why.
    """
    found: list[tuple[Path, Dataset]] = []
    unreadable: list[Unreadable] = []
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(path, stop_before_pixels=True, specific_tags=tags)
                study = str(ds.get("StudyInstanceUID", "") or "")
                series = str(ds.get("SeriesInstanceUID", "") or "")
        except InvalidDicomError:
            continue  # not DICOM: ignored
        except OSError as exc:
            unreadable.append(Unreadable(path=path, reason=f"cannot read: {exc.strerror}"))
            continue
        except Exception as exc:  # pydicom raises many types on a corrupt header
            reason = f"corrupt DICOM header ({type(exc).__name__}: {exc})"
            unreadable.append(Unreadable(path=path, reason=reason))
            continue
        wanted = (("Study", study, tags is None), ("Series", series, True))
        missing = [f"{name} Instance UID" for name, value, needed in wanted if needed and not value]
        if missing:
            reason = f"DICOM without {' and '.join(missing)} (an incomplete or truncated header?)"
            unreadable.append(Unreadable(path=path, reason=reason))
        else:
            found.append((path, ds))
    return found, unreadable


def series_files(folder: Path) -> SeriesScan:
    """Every DICOM file below ``folder``, grouped by Series Instance UID (headers only)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    headers, unreadable = _headers(files, ["SeriesInstanceUID"])
    groups: dict[str, list[Path]] = {}
    for path, ds in headers:
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    return SeriesScan(series=groups, unreadable=tuple(unreadable))


def scan_studies(paths: Sequence[Path]) -> StudyScan:
    """DICOM files and folders -> studies -> series (headers only; see :func:`_headers`)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    headers, unreadable = _headers(files)
    series: dict[tuple[str, str], tuple[Dataset, list[Path], set[str]]] = {}
    for path, ds in headers:
        key = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        entry = series.setdefault(key, (ds, [], set()))
        entry[1].append(path)
        entry[2].add(str(ds.get("SOPClassUID", "")))
    studies: dict[str, list[SeriesInfo]] = {}
    for (study, uid), (first, found, classes) in series.items():
        studies.setdefault(study, []).append(
            SeriesInfo(
                series_instance_uid=uid,
                modality=str(first.get("Modality", "")),
                body_part_examined=str(first.get("BodyPartExamined", "")),
                series_description=str(first.get("SeriesDescription", "")),
                sop_class_uids=tuple(sorted(classes)),
                paths=tuple(found),
            )
        )
    return StudyScan(studies=studies, unreadable=tuple(unreadable))


def series_orientation(
    path: Path,
) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    """Row and column directions of an image file, from its header alone."""
    ds = _header(path)
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            seq = ds.get(group)
            if seq and seq[0].get("PlaneOrientationSequence"):
                iop = seq[0].PlaneOrientationSequence[0].ImageOrientationPatient
                break
    if iop is None or len(iop) != 6:
        return None
    v = [float(x) for x in iop]
    return (v[0], v[1], v[2]), (v[3], v[4], v[5])


def is_axial(row_direction: Sequence[float], column_direction: Sequence[float]) -> bool:
    """True when the slice normal is within ~10 degrees of the patient's z axis."""
    normal = np.cross(np.asarray(row_direction), np.asarray(column_direction))
    return bool(abs(normal[2]) > 0.985)


def _rescaled(ds: Dataset, pixels: np.ndarray, path: Path) -> np.ndarray:
    slope = _number(ds, "RescaleSlope", 1.0, "Rescale Slope", path) or 1.0
    intercept = _number(ds, "RescaleIntercept", 0.0, "Rescale Intercept", path)
    return (pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(
        np.float32
    )


def _pixels(ds: Dataset, path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(ds.pixel_array)
    except Exception as exc:
        ts = ds.file_meta.get("TransferSyntaxUID", "?")
        raise UnsupportedInput(f"{path.name}: cannot decode pixel data ({ts}): {exc}") from None


def _enhanced(ds: Dataset, path: Path) -> Volume:
    """Enhanced multi-frame: geometry per frame from the functional groups."""
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if not frames:
        raise InconsistentSeries(f"{path.name}: multi-frame without per-frame functional groups")

    def group(frame: Dataset, keyword: str) -> Dataset:
        seq = frame.get(keyword) or shared.get(keyword)
        if not seq:
            raise InconsistentSeries(f"{path.name}: no {keyword} for a frame")
        item: Dataset = seq[0]
        return item

    positions = [
        _floats(group(f, "PlanePositionSequence").ImagePositionPatient, 3, "position")
        for f in frames
    ]
    orientation = _floats(
        group(frames[0], "PlaneOrientationSequence").ImageOrientationPatient, 6, "orientation"
    )
    spacing = _floats(group(frames[0], "PixelMeasuresSequence").PixelSpacing, 2, "PixelSpacing")
    pixels = _pixels(ds, path)
    if pixels.ndim != 3:
        raise UnsupportedInput(f"{path.name}: colour multi-frame images are not volumes")

    def scaler(frame: Dataset) -> Dataset:
        """Each frame's own rescale (per-frame group), else the shared one, else the top level."""
        measures = frame.get("PixelValueTransformationSequence") or shared.get(
            "PixelValueTransformationSequence"
        )
        found: Dataset = measures[0] if measures else ds
        return found

    slices = [_rescaled(scaler(frames[i]), pixels[i], path) for i in range(pixels.shape[0])]
    uids = [str(_required(ds, "SOPInstanceUID", path))] * len(slices)
    frames_of = list(range(1, len(slices) + 1))
    return _assemble(ds, slices, positions, orientation, spacing, uids, frames_of)


def _order(
    positions: list[np.ndarray], orientation: np.ndarray, pixel_spacing: np.ndarray, uids: list[str]
) -> tuple[np.ndarray, float, np.ndarray]:
    """Sort by position along the normal; refuse duplicates, gaps and shear.

    Returns the order, the slice step (mm) and the normal.
    """
    if len(positions) < 2:
        raise InconsistentSeries("single slice: a volume needs at least 2")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if abs(np.linalg.norm(normal) - 1) > 1e-2:
        raise InconsistentSeries("Image Orientation (Patient) is not two orthogonal unit vectors")
    offsets = np.array([float(p @ normal) for p in positions])
    order = np.argsort(offsets, kind="stable")
    offsets = offsets[order]
    steps = np.diff(offsets)
    if np.any(steps < 1e-3):
        k = int(np.argmin(steps))
        raise InconsistentSeries(
            f"duplicate slice position at {offsets[k]:.3f} mm along the normal "
            f"({uids[order[k]]} and {uids[order[k + 1]]})"
        )
    step = float(np.median(steps))
    if np.any(np.abs(steps - step) > _GAP_TOLERANCE * step):
        k = int(np.argmax(np.abs(steps - step)))
        raise InconsistentSeries(
            f"gap or uneven spacing: {steps[k]:.3f} mm between slices at "
            f"{offsets[k]:.3f} and {offsets[k + 1]:.3f} mm (usual step {step:.3f} mm)"
        )
    # In-plane, a slice position may drift only along the normal.
    first_pos = positions[order[0]]
    for idx in order[1:]:
        d = positions[idx] - first_pos
        if np.linalg.norm(d - (d @ normal) * normal) > 0.01 * max(1.0, float(pixel_spacing[0])):
            raise InconsistentSeries("slices are not stacked along their normal (sheared series)")
    return order, step, normal


def _volume(
    first: Dataset,
    array: np.ndarray,
    first_position: np.ndarray,
    orientation: np.ndarray,
    normal: np.ndarray,
    spacing: tuple[float, float, float],
    uids: list[str],
    frame_numbers: list[int] | None = None,
    headers: tuple[Dataset, ...] = (),
) -> Volume:
    return Volume(
        array=array,
        spacing=spacing,
        origin=tuple(float(v) for v in first_position),  # type: ignore[arg-type]
        row_direction=tuple(float(v) for v in orientation[:3]),  # type: ignore[arg-type]
        column_direction=tuple(float(v) for v in orientation[3:]),  # type: ignore[arg-type]
        normal=tuple(float(v) for v in normal),  # type: ignore[arg-type]
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        sop_instance_uids=tuple(uids),
        modality=str(first.get("Modality", "")),
        frame_numbers=tuple(frame_numbers or ()),
        headers=headers,
    )


def _assemble(
    first: Dataset,
    slices: list[np.ndarray],
    positions: list[np.ndarray],
    orientation: np.ndarray,
    pixel_spacing: np.ndarray,
    uids: list[str],
    frame_numbers: list[int] | None = None,
) -> Volume:
    order, step, normal = _order(positions, orientation, pixel_spacing, uids)
    array = np.stack([slices[i] for i in order]).astype(np.float32, copy=False)
    return _volume(
        first,
        array,
        positions[order[0]],
        orientation,
        normal,
        (step, float(pixel_spacing[0]), float(pixel_spacing[1])),
        [uids[i] for i in order],
        [frame_numbers[i] for i in order] if frame_numbers else None,
    )


def patient_and_date(path: Path) -> tuple[str, str]:
    """A file's Patient ID and Study Date (YYYYMMDD); "" for what it lacks."""
    ds = _read(path, stop_before_pixels=True, specific_tags=["PatientID", "StudyDate"])
    return str(ds.get("PatientID", "") or ""), str(ds.get("StudyDate", "") or "")


def _header(path: Path) -> Dataset:
    return _read(path, stop_before_pixels=True)


def load_volume(paths: Sequence[Path]) -> Volume:
    """Build one volume from the files of a series (single-frame or enhanced multi-frame).

    Geometry is checked from the headers first; then each file is decoded
    straight into its slot of the output array, so memory peaks near one
    volume plus one slice rather than several copies.
    """
    if not paths:
        raise InconsistentSeries("empty series")
    headers = [_header(p) for p in paths]
    if len(headers) == 1 and int(headers[0].get("NumberOfFrames", 1) or 1) > 1:
        return _enhanced(_read(paths[0]), paths[0])
    first, first_path = headers[0], paths[0]
    orientation = _floats(
        _required(first, "ImageOrientationPatient", first_path), 6, "Image Orientation (Patient)"
    )
    spacing = _floats(_required(first, "PixelSpacing", first_path), 2, "Pixel Spacing")
    shape = (
        int(_required(first, "Rows", first_path)),
        int(_required(first, "Columns", first_path)),
    )
    positions, uids = [], []
    for path, ds in zip(paths, headers, strict=True):
        size = (int(_required(ds, "Rows", path)), int(_required(ds, "Columns", path)))
        if size != shape:
            raise InconsistentSeries(
                f"mixed image sizes: {shape[0]}x{shape[1]} and {size[0]}x{size[1]} ({path.name})"
            )
        here = _floats(_required(ds, "ImageOrientationPatient", path), 6, "orientation")
        if np.abs(here - orientation).max() > _ORIENTATION_TOLERANCE:
            raise InconsistentSeries(f"mixed orientations in the series ({path.name})")
        if (
            np.abs(_floats(_required(ds, "PixelSpacing", path), 2, "Pixel Spacing") - spacing).max()
            > 1e-4
        ):
            raise InconsistentSeries(f"mixed pixel spacing in the series ({path.name})")
        position = _required(ds, "ImagePositionPatient", path)
        positions.append(_floats(position, 3, "Image Position (Patient)"))
        uids.append(str(_required(ds, "SOPInstanceUID", path)))
    order, step, normal = _order(positions, orientation, spacing, uids)
    array = np.empty((len(paths), *shape), dtype=np.float32)
    for slot, index in enumerate(order):
        ds = _read(paths[index])
        pixels = _pixels(ds, paths[index])
        if pixels.shape != shape:
            raise UnsupportedInput(f"{paths[index].name}: not a single-frame greyscale image")
        array[slot] = _rescaled(ds, pixels, paths[index])
    return _volume(
        first,
        array,
        positions[order[0]],
        orientation,
        normal,
        (step, float(spacing[0]), float(spacing[1])),
        [uids[i] for i in order],
        headers=tuple(headers),
    )


_UNIT_SCALE_TO_MV = {"uV": 1e-3, "mV": 1.0, "V": 1e3}


def load_waveform(path: Path, group: int = 0) -> Waveform:
    """An ECG multiplex group as (leads, samples) float32 in millivolts.

    pydicom applies Channel Sensitivity, its Correction Factor and the Channel
    Baseline; this converts the result to mV from the units each channel names.
    """
    ds = _read(path)
    if "WaveformSequence" not in ds or len(ds.WaveformSequence) <= group:
        raise UnsupportedInput(f"{path.name}: no waveform multiplex group {group}")
    mux = ds.WaveformSequence[group]
    channels = _required(mux, "ChannelDefinitionSequence", path)
    sampling_hz = _number(mux, "SamplingFrequency", 0.0, "Sampling Frequency", path)
    if sampling_hz <= 0:
        raise MissingData(f"{path.name}: no usable (003A,001A) Sampling Frequency")
    try:
        data = np.asarray(ds.waveform_array(group), dtype=np.float64).T  # (leads, samples)
    except (AttributeError, KeyError, ValueError) as exc:
        raise UnsupportedInput(f"{path.name}: cannot decode the waveform: {exc}") from None
    names, keys, scales = [], [], []
    for i, channel in enumerate(channels):
        source = channel.get("ChannelSourceSequence")
        item = source[0] if source else None
        name = str(item.get("CodeMeaning", "")) if item is not None else ""
        names.append(name or f"channel {i + 1}")
        keys.append(
            lead_key(
                str(item.get("CodeValue", "")), str(item.get("CodingSchemeDesignator", "")), name
            )
            if item is not None
            else names[-1]
        )
        units_seq = channel.get("ChannelSensitivityUnitsSequence")
        unit = str(units_seq[0].CodeValue) if units_seq else "mV"
        if unit not in _UNIT_SCALE_TO_MV:
            raise UnsupportedInput(f"{path.name}: channel {names[-1]!r} in unknown unit {unit!r}")
        scales.append(_UNIT_SCALE_TO_MV[unit])
    data = data * np.asarray(scales)[:, None]
    return Waveform(
        data=data.astype(np.float32),
        sampling_hz=sampling_hz,
        lead_names=tuple(names),
        lead_keys=tuple(keys),
        units="mV",
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
    )
