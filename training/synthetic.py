"""Seeded synthetic data, written as real DICOM so training reads it as the node does.

CT (``generate_ct``): soft-tissue volumes with 0-3 lesions each. Lesion size,
contrast, shape and texture vary; noise, voxel spacing and a small tilt of the
slices vary too. Each study's label follows the lesions:

- ``normal``: no lesion;
- ``benign``: only round, smooth, homogeneous lesions;
- ``malignant``: at least one lobulated lesion with heterogeneous texture.

Ground truth: ``masks/<series uid>.npy`` (bool, on the series' own grid, in the
order the node's loader sorts slices) and ``labels.csv``.

ECG (``generate_ecg``): 10 s, 12-lead, 500 Hz 12-lead ECG Waveform Storage with
``normal`` sinus rhythm, ``af`` (irregular RR, no P waves, fibrillatory
baseline) or ``st_elevation`` (regular, ST segment raised in II, III, aVF,
V2-V4), plus noise and baseline wander.

``shift=True`` makes a harder test set: more noise, lower contrast, other
spacing, another seed range. The same seed always gives the same files.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from dicomio.leads import MDC

__all__ = [
    "CHANGE_LABELS",
    "CT_LABELS",
    "ECG_LABELS",
    "LEADS",
    "SHIFTED",
    "SITE_B",
    "TRAINING",
    "CtAcquisition",
    "follow_up_classes",
    "generate_ct",
    "generate_ct_site_b",
    "generate_ecg",
    "generate_longitudinal",
    "make_uid",
    "write_case",
    "write_ct",
    "write_labels",
]

CT_LABELS = ("normal", "benign", "malignant")
CHANGE_LABELS = ("decrease", "stable", "increase")
ECG_LABELS = ("normal", "af", "st_elevation")
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
TWELVE_LEAD_ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters (PS3.5 6.2)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def write_labels(out: Path, rows: list[dict[str, str]]) -> Path:
    """``out/labels.csv`` in the format ``training.data`` reads."""
    path = out / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["patient_id", "study_uid", "series_uid", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_uid(*parts: object) -> str:
    """A deterministic 2.25 UID from a hash of ``parts``."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _common(
    ds: Dataset, *, patient: str, study: str, series: str, modality: str, date: str = "20260101"
) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = f"Synthetic^{patient}"
    ds.PatientID = patient
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study
    ds.StudyDate = date
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = 1
    ds.Manufacturer = "ainode synthetic"


@dataclass(frozen=True, slots=True)
class _Lesion:
    centre: npt.NDArray[np.float64]  # mm, (z, y, x) from the first voxel
    radius: float
    malignant: bool


@dataclass(frozen=True, slots=True)
class CtAcquisition:
    """The ranges a CT set's scans are drawn from (mm, HU)."""

    slice_mm: tuple[float, float]
    pixel_mm: tuple[float, float]
    noise_hu: tuple[float, float]
    contrast_hu: tuple[float, float]  # lesion over background
    background_hu: float = 40.0


#: Training data; the shifted held-out sets; a second hospital (portal-venous
#: phase: enhanced parenchyma with hypodense lesions, thicker slices, finer
#: pixels) that the shipped models never saw: the fine-tuning walkthrough's data.
TRAINING = CtAcquisition(
    slice_mm=(1.8, 2.4), pixel_mm=(1.0, 1.3), noise_hu=(6, 14), contrast_hu=(70, 160)
)
SHIFTED = CtAcquisition(
    slice_mm=(2.5, 3.0), pixel_mm=(1.3, 1.5), noise_hu=(14, 20), contrast_hu=(50, 90)
)
SITE_B = CtAcquisition(
    slice_mm=(3.4, 4.0),
    pixel_mm=(0.7, 0.85),
    noise_hu=(10, 16),
    contrast_hu=(-80, -40),
    background_hu=110.0,
)


def _ct_case(
    rng: np.random.Generator, acq: CtAcquisition
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], str, tuple[float, float, float]]:
    shape = (32, 64, 64)
    slice_mm = float(rng.uniform(*acq.slice_mm))
    pixel_mm = float(rng.uniform(*acq.pixel_mm))
    spacing = (slice_mm, pixel_mm, pixel_mm)
    z, y, x = (np.arange(n) * s for n, s in zip(shape, spacing, strict=True))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    noise = rng.uniform(*acq.noise_hu)
    background = acq.background_hu
    hu = background + rng.normal(0, noise, shape)
    mask = np.zeros(shape, dtype=bool)
    n_lesions = int(rng.choice([0, 1, 2, 3], p=[0.3, 0.3, 0.25, 0.15]))
    kind = "normal"
    if n_lesions:
        kind = "malignant" if rng.random() < 0.5 else "benign"
    extent = np.array(shape) * np.array(spacing)
    lesions = []
    for i in range(n_lesions):
        radius = float(rng.uniform(4.5, 9.0))
        centre = np.array([rng.uniform(radius + 2, e - radius - 2) for e in extent])
        malignant = kind == "malignant" and (i == 0 or rng.random() < 0.5)
        lesions.append(_Lesion(centre=centre, radius=radius, malignant=malignant))
    for lesion in lesions:
        dz, dy, dx = zz - lesion.centre[0], yy - lesion.centre[1], xx - lesion.centre[2]
        r = np.sqrt(dz**2 + dy**2 + dx**2)
        if lesion.malignant:  # lobulated outline: radius varies with direction
            theta = np.arctan2(dy, dx)
            phi = np.arctan2(dz, np.hypot(dx, dy))
            bumps = 0.28 * np.sin(5 * theta + rng.uniform(0, 6)) * np.cos(3 * phi)
            inside = r <= lesion.radius * (1 + bumps)
        else:
            inside = r <= lesion.radius
        contrast = rng.uniform(*acq.contrast_hu)
        texture = rng.normal(0, 35 if lesion.malignant else 4, shape)
        hu[inside] = (
            background + contrast + texture[inside] + rng.normal(0, noise, int(inside.sum()))
        )
        mask |= inside
    return hu.astype(np.float32), mask, kind, spacing


def write_ct(
    folder: Path,
    hu: npt.NDArray[np.float32],
    spacing: tuple[float, float, float],
    tilt_deg: float,
    *,
    patient: str,
    study: str,
    series: str,
    date: str = "20260101",
    thickness: float | None = None,
    body_part: str = "CHEST",
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    angle = np.deg2rad(tilt_deg)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, np.cos(angle), np.sin(angle)])
    normal = np.cross(row, col)
    for k in range(hu.shape[0]):
        sop = make_uid(series, k)
        ds = Dataset()
        ds.file_meta = _meta(CTImageStorage, sop)
        _common(ds, patient=patient, study=study, series=series, modality="CT", date=date)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.SeriesDescription = "Synthetic CT"
        ds.BodyPartExamined = body_part
        ds.FrameOfReferenceUID = make_uid(study, "for")
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [_ds(v) for v in normal * spacing[0] * k]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[2])]
        ds.SliceThickness = _ds(spacing[0] if thickness is None else thickness)
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = np.clip(np.rint(hu[k] + 1024), 0, 4095).astype("<u2").tobytes()
        ds.save_as(folder / f"CT{k:04d}.dcm", enforce_file_format=True)


def write_case(
    out: Path,
    kind: str,
    seed: int,
    i: int,
    hu: npt.NDArray[np.float32],
    mask: npt.NDArray[np.bool_],
    label: str,
    spacing: tuple[float, float, float],
    tilt_deg: float = 0.0,
    **ct: Any,
) -> dict[str, str]:
    """Study ``i`` of a generated set: its DICOM (``write_ct``, with ``ct``), its mask, its
    ``labels.csv`` row. UIDs and Patient ID follow from ``kind``, ``seed`` and ``i``."""
    patient = f"SYN-{kind.upper()}-{seed}-{i:04d}"
    study, series = make_uid(kind, seed, i), make_uid(f"{kind}-series", seed, i)
    write_ct(
        out / "studies" / f"{i:04d}",
        hu,
        spacing,
        tilt_deg,
        patient=patient,
        study=study,
        series=series,
        **ct,
    )
    np.save(out / "masks" / f"{series}.npy", mask)
    return {"patient_id": patient, "study_uid": study, "series_uid": series, "label": label}


def generate_ct(
    out: Path, n: int, seed: int, *, shift: bool = False, acquisition: CtAcquisition | None = None
) -> Path:
    """Write ``n`` CT studies with ground truth into ``out``; return ``out/labels.csv``.

    ``acquisition`` (default: TRAINING, or SHIFTED with ``shift``) sets the scanner.
    """
    acq = acquisition or (SHIFTED if shift else TRAINING)
    rng = np.random.default_rng(seed)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        hu, mask, kind, spacing = _ct_case(rng, acq)
        tilt = float(rng.uniform(-12, 12)) if rng.random() < 0.3 else 0.0
        rows.append(write_case(out, "ct", seed, i, hu, mask, kind, spacing, tilt))
    return write_labels(out, rows)


def generate_ct_site_b(out: Path, n: int, seed: int, *, shift: bool = False) -> Path:
    """CT studies from a second hospital's scanner (:data:`SITE_B`); ``shift`` is ignored."""
    return generate_ct(out, n, seed, acquisition=SITE_B)


# Radius factor per follow-up interval, by change class (volume x0.17-0.42, x0.8-1.2, x2.2-4.1).
_CHANGE_FACTOR = {"decrease": (0.55, 0.75), "stable": (0.93, 1.07), "increase": (1.3, 1.6)}
_RADIUS_MM = (3.0, 12.5)


def follow_up_classes(
    rng: np.random.Generator, radius: float, intervals: int
) -> tuple[list[str], list[float]]:
    """A change class per interval and the radius after each, kept within ``_RADIUS_MM``."""
    classes, radii = [], [radius]
    for _ in range(intervals):
        feasible = [
            c
            for c in CHANGE_LABELS
            if _RADIUS_MM[0] <= radii[-1] * _CHANGE_FACTOR[c][0]
            and radii[-1] * _CHANGE_FACTOR[c][1] <= _RADIUS_MM[1]
        ]
        change = str(rng.choice(feasible))
        classes.append(change)
        radii.append(radii[-1] * float(rng.uniform(*_CHANGE_FACTOR[change])))
    return classes, radii


def _follow_up_study(
    rng: np.random.Generator,
    spacing: tuple[float, float, float],
    centres: list[npt.NDArray[np.float64]],
    radii: list[float],
    phases: list[float],
    contrast: float,
    shift: bool,
) -> npt.NDArray[np.float32]:
    """One time point: the patient's lesions at their current radii, in a new acquisition."""
    shape = (32, 64, 64)
    offset = rng.uniform(-4, 4, 3)  # the patient lies a little differently each time
    z, y, x = (np.arange(n) * s for n, s in zip(shape, spacing, strict=True))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    noise = rng.uniform(14, 20) if shift else rng.uniform(6, 14)
    hu = 40 + rng.normal(0, noise, shape)
    for centre, radius, phase in zip(centres, radii, phases, strict=True):
        c = centre + offset
        dz, dy, dx = zz - c[0], yy - c[1], xx - c[2]
        r = np.sqrt(dz**2 + dy**2 + dx**2)
        theta = np.arctan2(dy, dx)
        inside = r <= radius * (1 + 0.12 * np.sin(3 * theta + phase))
        lesion_contrast = contrast + rng.uniform(-10, 10)
        hu[inside] = 40 + lesion_contrast + rng.normal(0, noise, int(inside.sum()))
    return hu.astype(np.float32)


def generate_longitudinal(out: Path, n: int, seed: int, *, shift: bool = False) -> Path:
    """Write ``n`` patients with 3-4 CT studies each, 2-8 months apart; return labels.csv.

    Every patient has one or two lesions that grow, stay or shrink between
    consecutive studies (all lesions of a patient change alike). A study's
    label is the change since the patient's previous study (``decrease``:
    radius x0.55-0.75, ``stable``: x0.93-1.07, ``increase``: x1.3-1.6); a
    patient's first study has no label (it is only a prior). Each study is a
    new acquisition: its own noise, a slightly different voxel spacing, the
    patient shifted by up to 4 mm, lesion contrast varying by 10 HU.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        patient = f"SYN-LONG-{seed}-{i:04d}"
        studies = int(rng.choice([3, 4]))
        base = (
            float(rng.uniform(2.5, 3.0) if shift else rng.uniform(1.8, 2.4)),
            float(rng.uniform(1.3, 1.5) if shift else rng.uniform(1.0, 1.3)),
        )
        extent = np.array([32 * base[0], 64 * base[1], 64 * base[1]])
        lesions = int(rng.choice([1, 2]))
        centres = [np.array([rng.uniform(18, e - 18) for e in extent]) for _ in range(lesions)]
        phases = [float(rng.uniform(0, 6)) for _ in range(lesions)]
        contrast = float(rng.uniform(50, 90) if shift else rng.uniform(70, 160))
        classes, radii = follow_up_classes(rng, float(rng.uniform(4.5, 9.0)), studies - 1)
        spread = [float(rng.uniform(0.9, 1.1)) for _ in range(lesions)]
        day = np.datetime64("2023-01-01") + int(rng.integers(0, 365))
        for t in range(studies):
            if t:
                day = day + int(rng.integers(60, 240))
            study = make_uid("long", seed, i, t)
            series = make_uid("long-series", seed, i, t)
            jitter = rng.uniform(0.97, 1.03, 2)
            spacing = (base[0] * float(jitter[0]), base[1] * float(jitter[1]), 0.0)
            spacing = (spacing[0], spacing[1], spacing[1])
            hu = _follow_up_study(
                rng, spacing, centres, [radii[t] * s for s in spread], phases, contrast, shift
            )
            date = str(day).replace("-", "")
            write_ct(
                out / "studies" / f"{i:04d}" / f"{t}",
                hu,
                spacing,
                0.0,
                patient=patient,
                study=study,
                series=series,
                date=date,
            )
            label = classes[t - 1] if t else ""
            rows.append(
                {"patient_id": patient, "study_uid": study, "series_uid": series, "label": label}
            )
    return write_labels(out, rows)


def _beat(t: npt.NDArray[np.float64], st: float, p_wave: bool) -> npt.NDArray[np.float64]:
    """One PQRST complex (mV) on time axis ``t`` (s, 0 at the R peak)."""

    def g(mu: float, sd: float, a: float) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = a * np.exp(-0.5 * ((t - mu) / sd) ** 2)
        return out

    wave = g(0.0, 0.012, 1.2) + g(-0.03, 0.01, -0.15) + g(0.035, 0.012, -0.25)
    wave += g(0.25, 0.05, 0.3)
    if p_wave:
        wave += g(-0.17, 0.025, 0.15)
    wave += np.where((t > 0.05) & (t < 0.2), st, 0.0)
    return wave


_LEAD_GAIN = np.array([0.8, 1.0, 0.5, -0.9, 0.4, 0.7, -0.4, 0.6, 0.9, 1.1, 1.0, 0.8])
_ST_LEADS = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0], dtype=bool)


def _ecg_case(
    rng: np.random.Generator, kind: str, shift: bool, fs: float = 500.0, seconds: float = 10.0
) -> npt.NDArray[np.float32]:
    t = np.arange(int(fs * seconds)) / fs
    rate = rng.uniform(55, 105)
    rr = 60.0 / rate
    if kind == "af":
        intervals = rng.uniform(0.35, 1.2, 40) * rr / 0.75
    else:
        intervals = rr * (1 + rng.normal(0, 0.02, 40))
    peaks = np.cumsum(np.concatenate([[rng.uniform(0.1, 0.6)], intervals]))
    peaks = peaks[peaks < seconds]
    st = rng.uniform(0.15, 0.35) if kind == "st_elevation" else 0.0
    signal = np.zeros((12, t.size))
    for peak in peaks:
        window = np.abs(t - peak) < 0.45
        for lead in range(12):
            signal[lead, window] += _LEAD_GAIN[lead] * _beat(
                t[window] - peak, st if _ST_LEADS[lead] else 0.0, kind != "af"
            )
    if kind == "af":
        signal += 0.05 * np.sin(2 * np.pi * rng.uniform(5, 8) * t + rng.uniform(0, 6))
    noise = 0.06 if shift else 0.03
    wander = rng.uniform(0.05, 0.25 if shift else 0.15)
    signal += wander * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 6))
    signal += rng.normal(0, noise, signal.shape)
    return signal.astype(np.float32)


def _write_ecg(
    path: Path, data: npt.NDArray[np.float32], fs: float, *, patient: str, study: str, series: str
) -> None:
    sop = make_uid(series, "ecg")
    ds = Dataset()
    ds.file_meta = _meta(TWELVE_LEAD_ECG, sop)
    _common(ds, patient=patient, study=study, series=series, modality="ECG")
    ds.SOPClassUID = TWELVE_LEAD_ECG
    ds.SOPInstanceUID = sop
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.AcquisitionDateTime = "20260101120000"
    sensitivity = 0.005  # mV per LSB: 5 uV
    ds.AcquisitionContextSequence = DicomSequence([])
    mux = Dataset()
    mux.WaveformOriginality = "ORIGINAL"
    mux.NumberOfWaveformChannels = 12
    mux.NumberOfWaveformSamples = data.shape[1]
    mux.SamplingFrequency = fs
    mux.MultiplexGroupLabel = "RHYTHM"
    channels = []
    for name in LEADS:
        ch = Dataset()
        source = Dataset()
        code = next(code for code, lead in MDC.items() if lead == name)
        source.CodeValue, source.CodingSchemeDesignator = code, "MDC"
        source.CodeMeaning = f"Lead {name}"
        ch.ChannelSourceSequence = DicomSequence([source])
        ch.ChannelSensitivity = sensitivity
        units = Dataset()
        units.CodeValue, units.CodingSchemeDesignator, units.CodeMeaning = "mV", "UCUM", "mV"
        ch.ChannelSensitivityUnitsSequence = DicomSequence([units])
        ch.ChannelSensitivityCorrectionFactor = 1
        ch.ChannelBaseline = 0
        ch.ChannelTimeSkew = 0
        ch.WaveformBitsStored = 16
        channels.append(ch)
    mux.ChannelDefinitionSequence = DicomSequence(channels)
    mux.WaveformBitsAllocated = 16
    mux.WaveformSampleInterpretation = "SS"
    samples = np.clip(np.rint(data / sensitivity), -32768, 32767).astype("<i2")
    mux.WaveformData = samples.T.tobytes()  # interleaved: sample by sample, all channels
    ds.WaveformSequence = DicomSequence([mux])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def generate_ecg(out: Path, n: int, seed: int, *, shift: bool = False) -> Path:
    """Write ``n`` 12-lead ECGs (classes in turn, shuffled) into ``out``; return labels.csv."""
    rng = np.random.default_rng(seed)
    kinds = [ECG_LABELS[i % len(ECG_LABELS)] for i in range(n)]
    rng.shuffle(kinds)
    rows = []
    for i, kind in enumerate(kinds):
        patient = f"SYN-ECG-{seed}-{i:04d}"
        study, series = make_uid("ecg", seed, i), make_uid("ecg-series", seed, i)
        _write_ecg(
            out / "ecg" / f"{i:04d}.dcm",
            _ecg_case(rng, kind, shift),
            500.0,
            patient=patient,
            study=study,
            series=series,
        )
        rows.append(
            {"patient_id": patient, "study_uid": study, "series_uid": series, "label": kind}
        )
    return write_labels(out, rows)
