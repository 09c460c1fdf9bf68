"""Datasets from folders of DICOM plus a labels CSV, read with the node's own loaders.

``labels.csv`` has the columns ``patient_id, study_uid, series_uid, label``; a
segmentation set adds ground truth per series: ``masks/<series uid>.npy`` (bool,
on the series' grid in the loader's slice order) or a DICOM SEG anywhere in the
folder that references the series (its frames placed by their source images).
An optional ``split`` column (``train``, ``val``, ``test``: what ``ainode
export`` writes, per patient) lets one folder hold all three; the loaders take
one split when asked. Missing data is never silently dropped: each case skipped is listed with its
reason in the returned :class:`DataReport`, and the policy
``on_missing = "skip" | "error"`` decides whether a gap stops training.
A longitudinal set (progression) lists every study of a patient; a row's
label is the change since the patient's previous study, and a patient's first
study has an empty label (it is only a prior). For ECGs,
``missing_leads = "skip" | "zero"`` decides whether a recording without all
the model's leads is dropped or the missing leads are zero-masked.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dicomio.errors import InputError
from dicomio.leads import name_key
from dicomio.records import Volume, Waveform
from dicomio.seg_in import find_segmentations, load_seg_mask
from dicomio.volume_in import load_volume, load_waveform, patient_and_date, series_files
from inference.preprocess import days_between

__all__ = [
    "CtCase",
    "DataReport",
    "EcgCase",
    "HistoryCase",
    "load_ct_cases",
    "load_ecg_cases",
    "load_history_cases",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class CtCase:
    patient_id: str
    label: int
    volume: Volume
    mask: npt.NDArray[np.bool_] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class EcgCase:
    patient_id: str
    label: int
    waveform: Waveform


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryCase:
    """A labelled study with the patient's earlier studies: oldest first, itself last."""

    patient_id: str
    label: int
    volumes: tuple[Volume, ...]
    days_before: tuple[int, ...]  # days before the labelled study (0 for itself)


@dataclass(slots=True)
class DataReport:
    used: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, what: str, why: str, on_missing: str) -> None:
        if on_missing == "error":
            raise ValueError(f"{what}: {why} (on_missing = 'error')")
        self.skipped.append((what, why))


def _scan(folder: Path, report: DataReport, on_missing: str) -> dict[str, list[Path]]:
    """The folder's series; each DICOM file that cannot be read is reported by path."""
    scan = series_files(folder)
    for bad in scan.unreadable:
        report.skip(str(bad.path), bad.reason, on_missing)
    return scan.series


def _labels(labels_csv: Path, split: str | None) -> list[dict[str, str]]:
    """The CSV's rows; with ``split``, only the rows of that split (column ``split``)."""
    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    required = {"patient_id", "series_uid", "label"} | ({"split"} if split else set())
    if rows and not required <= set(rows[0]):
        raise ValueError(f"{labels_csv}: needs the columns {', '.join(sorted(required))}")
    return [r for r in rows if split is None or r["split"] == split]


def _labelled_series(
    row: dict[str, str],
    files: dict[str, list[Path]],
    classes: tuple[str, ...],
    report: DataReport,
    on_missing: str,
    *,
    unlabelled: bool = False,
) -> list[Path] | None:
    """The files of a CSV row's series, or None (reported) for an unknown label or series.

    ``unlabelled``: an empty label is allowed (a longitudinal set's first study).
    """
    uid, label = row["series_uid"], row["label"]
    if label not in classes and not (unlabelled and not label):
        report.skip(uid, f"label {label!r} is not one of {classes}", on_missing)
        return None
    if uid not in files:
        report.skip(uid, "series not found in the folder", on_missing)
        return None
    return files[uid]


def _volume(uid: str, paths: list[Path], report: DataReport, on_missing: str) -> Volume | None:
    """The series as the node loads it, or None (reported) when it cannot make a volume.

    Without the source headers the node keeps for its result encoders: a training set
    holds thousands of volumes, and a small one's headers outweigh its voxels."""
    try:
        return replace(load_volume(paths), headers=())
    except InputError as exc:  # missing slices, gaps, undecodable pixels...
        report.skip(uid, str(exc), on_missing)
        return None


def load_ct_cases(
    folder: Path,
    labels_csv: Path,
    classes: tuple[str, ...],
    *,
    masks: bool,
    on_missing: str = "skip",
    split: str | None = None,
) -> tuple[list[CtCase], DataReport]:
    report = DataReport()
    files = _scan(folder, report, on_missing)
    segs = find_segmentations(folder) if masks else {}
    ground_truth = set(segs.values())
    cases = []
    labelled = set()
    for row in _labels(labels_csv, split):
        uid = row["series_uid"]
        labelled.add(uid)
        paths = _labelled_series(row, files, classes, report, on_missing)
        volume = _volume(uid, paths, report, on_missing) if paths else None
        if volume is None:
            continue
        mask = None
        if masks:
            mask_path = labels_csv.parent / "masks" / f"{uid}.npy"
            if mask_path.exists():
                mask = np.load(mask_path)
            elif uid in segs:
                try:
                    mask = load_seg_mask(segs[uid], volume)
                except InputError as exc:
                    report.skip(uid, f"ground-truth SEG {segs[uid].name}: {exc}", on_missing)
                    continue
            else:
                why = "no ground-truth mask (masks/<series uid>.npy or a DICOM SEG of the series)"
                report.skip(uid, why, on_missing)
                continue
            if mask.shape != volume.array.shape:
                report.skip(uid, f"mask {mask.shape} != volume {volume.array.shape}", on_missing)
                continue
        cases.append(
            CtCase(
                patient_id=row["patient_id"],
                label=classes.index(row["label"]),
                volume=volume,
                mask=mask,
            )
        )
    for uid in sorted(set(files) - labelled) if split is None else ():  # others: other splits
        if not set(files[uid]) <= ground_truth:  # a SEG series is ground truth, not a case
            report.skip(uid, "no label in the CSV", on_missing)
    report.used = len(cases)
    return cases, report


def load_ecg_cases(
    folder: Path,
    labels_csv: Path,
    classes: tuple[str, ...],
    leads: tuple[str, ...],
    *,
    on_missing: str = "skip",
    missing_leads: str = "skip",
    split: str | None = None,
) -> tuple[list[EcgCase], DataReport]:
    report = DataReport()
    files = _scan(folder, report, on_missing)
    cases = []
    for row in _labels(labels_csv, split):
        uid = row["series_uid"]
        if row["label"] not in classes or uid not in files:
            report.skip(uid, "unknown label or series not found", on_missing)
            continue
        try:
            waveform = load_waveform(files[uid][0])
        except InputError as exc:
            report.skip(uid, str(exc), on_missing)
            continue
        absent = [lead for lead in leads if name_key(lead) not in waveform.keys]
        if absent:
            if missing_leads == "skip":
                report.skip(uid, f"missing lead(s) {', '.join(absent)}", on_missing)
                continue
            zeros = np.zeros((len(absent), waveform.data.shape[1]), np.float32)
            waveform = replace(
                waveform,
                data=np.concatenate([waveform.data, zeros]),
                lead_names=waveform.lead_names + tuple(absent),
                lead_keys=waveform.keys + tuple(name_key(lead) for lead in absent),
            )
        cases.append(
            EcgCase(
                patient_id=row["patient_id"], label=classes.index(row["label"]), waveform=waveform
            )
        )
    report.used = len(cases)
    return cases, report


def load_history_cases(
    folder: Path,
    labels_csv: Path,
    classes: tuple[str, ...],
    *,
    max_priors: int,
    on_missing: str = "skip",
    split: str | None = None,
) -> tuple[list[HistoryCase], DataReport]:
    """Every labelled study with up to ``max_priors`` earlier studies of its patient.

    Studies are ordered by their Study Date (from the DICOM headers, as the
    node orders priors); a study without a date, or a labelled study without
    any earlier study to compare with, is skipped and reported.
    """
    report = DataReport()
    files = _scan(folder, report, on_missing)
    patients: dict[str, list[tuple[str, str, Volume]]] = {}
    for row in _labels(labels_csv, split):
        uid, label = row["series_uid"], row["label"]
        paths = _labelled_series(row, files, classes, report, on_missing, unlabelled=True)
        if not paths:
            continue
        _patient, date = patient_and_date(paths[0])
        if not date:
            report.skip(uid, "no Study Date: cannot be ordered among the priors", on_missing)
            continue
        volume = _volume(uid, paths, report, on_missing)
        if volume is None:
            continue
        patients.setdefault(row["patient_id"], []).append((date, label, volume))
    cases = []
    for patient, studies in patients.items():
        studies.sort(key=lambda s: s[0])
        for t, (date, label, volume) in enumerate(studies):
            if not label:
                continue
            if t == 0:
                report.skip(
                    volume.series_instance_uid, "no earlier study to compare with", on_missing
                )
                continue
            history = studies[max(0, t - max_priors) : t + 1]
            cases.append(
                HistoryCase(
                    patient_id=patient,
                    label=classes.index(label),
                    volumes=tuple(v for _d, _l, v in history),
                    days_before=tuple(days_between(d, date) for d, _l, _v in history),
                )
            )
    report.used = len(cases)
    return cases, report
