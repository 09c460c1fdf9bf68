"""``ainode export``: a de-identified training set from the node's own archive.

Selected studies (:mod:`storage.export_select`) are written, instance by
instance and with the result objects the node made for them (SR, SEG, maps),
through :mod:`dicomio.deid` into ``OUT/<pseudonym>/<study>/<series>/``, in the
layout ``ainode train`` reads: DICOM, ``labels.csv`` (``patient_id, study_uid,
series_uid, label, split, source``) and a SEG as ground truth where one exists.

Labels come from the hospital's CSV (``label`` with the original
``series_uid`` or ``study_uid``; source ``ground_truth``) or, flagged as
``silver``, from the most probable finding of one of the node's models. Each
patient falls into ``train`` (70 %), ``val`` (15 %) or ``test`` (15 %) by a
keyed hash of the pseudonym: the same patient stays in the same split in
every export made with the same secret, so no patient is in two splits.

``export.json`` says what was done (profile, options, library), what was
written and what was left out, by new identifiers only. The table of original
to new identifiers is written only when asked, and never inside ``OUT``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.config import ExportConfig
from dicomio.deid import METHOD, OPTION_CODES, PROFILE_TABLE, Deidentifier
from dicomio.deid_file import Deidentified, NotExported, deidentify_file
from storage.export_filter import StudyFilter
from storage.export_select import result_paths, select_studies, silver_labels
from storage.lookup import patient_ids, study_series

__all__ = [
    "ExportError",
    "ExportRequest",
    "ExportSummary",
    "Preflight",
    "export_training_set",
    "preflight",
]

logger = logging.getLogger(__name__)

_SPLITS = (("train", 0.70), ("val", 0.85), ("test", 1.0))


class ExportError(Exception):
    """The export cannot start (no secret, OUT not empty, a bad labels CSV...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportRequest:
    out: Path
    select: StudyFilter
    labels_csv: Path | None = None
    silver_model: str = ""
    mapping: Path | None = None


@dataclass(slots=True)
class ExportSummary:
    studies: dict[str, dict[str, int]] = field(default_factory=dict)  # original UID -> classes
    patient_ids: dict[str, str] = field(default_factory=dict)  # original study -> Patient ID
    patients: set[str] = field(default_factory=set)
    instances: int = 0
    results: int = 0
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (new or counted id, why)
    labelled: int = 0
    unlabelled: int = 0
    label_problems: list[str] = field(default_factory=list)


def _split(keys: Deidentifier, pseudonym: str) -> str:
    u = keys.fraction("split", pseudonym)
    return next(name for name, upper in _SPLITS if u < upper)


def _secret(cfg: ExportConfig) -> bytes:
    if cfg.secret_file is None:
        raise ExportError(
            "[export] secret_file is not set: the pseudonyms and new UIDs need a key "
            "(head -c 32 /dev/urandom > export-secret && chmod 600 export-secret)"
        )
    return cfg.secret_file.read_bytes()


def _check_paths(request: ExportRequest) -> None:
    out = request.out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {request.out}: not empty (an export goes to a new folder)")
    if request.mapping is not None:
        mapping = request.mapping.resolve()
        if mapping == out or out in mapping.parents:
            raise ExportError(f"--mapping {request.mapping}: must lie outside --out")


def _hospital_labels(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ExportError(f"--labels {path}: cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ExportError(f"--labels {path}: not UTF-8 text ({exc.reason})") from None
    if rows and ("label" not in rows[0] or not {"series_uid", "study_uid"} & set(rows[0])):
        raise ExportError(f"--labels {path}: needs a label column and series_uid or study_uid")
    return rows


@dataclass(slots=True)
class _Series:
    pseudonym: str
    study_uid: str
    series_uid: str
    result: bool
    original_study: str
    label: str = ""
    source: str = ""


def _record(written: dict[str, _Series], d: Deidentified, *, result: bool) -> None:
    if d.original_series_instance_uid not in written:
        written[d.original_series_instance_uid] = _Series(
            pseudonym=d.pseudonym,
            study_uid=d.study_instance_uid,
            series_uid=d.series_instance_uid,
            result=result,
            original_study=d.original_study_instance_uid,
        )


@dataclass(frozen=True, slots=True)
class Preflight:
    """What :func:`preflight` read: the key, and the hospital's label rows (if any)."""

    secret: bytes
    rows: list[dict[str, str]]


def preflight(cfg: ExportConfig, request: ExportRequest) -> Preflight:
    """The secret and labels, once the request is known to be possible; else :class:`ExportError`.

    Nothing is opened or written before it: the index is opened after it succeeds.
    """
    secret = _secret(cfg)
    _check_paths(request)
    rows = _hospital_labels(request.labels_csv) if request.labels_csv else []
    return Preflight(secret, rows)


def export_training_set(
    sessions: sessionmaker[Session], cfg: ExportConfig, request: ExportRequest, checked: Preflight
) -> ExportSummary:
    """Write the export that :func:`preflight` found possible (``checked``)."""
    secret, rows = checked.secret, checked.rows
    keys = Deidentifier(secret, frozenset(cfg.keep_private_creators))
    with sessions.begin() as s:
        try:
            studies = select_studies(s, request.select)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        plan = [(uid, study_series(s, uid), result_paths(s, uid)) for uid in studies]
        originals = patient_ids(s, studies)
        silver = silver_labels(s, studies, request.silver_model) if request.silver_model else {}
    request.out.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(patient_ids=originals)
    written: dict[str, _Series] = {}
    for study_uid, series, results in plan:
        classes: Counter[str] = Counter()
        files = [(p, False) for info in series for p in info.paths]
        files += [(path, True) for path in results]
        for path, is_result in files:
            try:
                d = deidentify_file(path, keys, request.out, allow_burned_in=cfg.allow_burned_in)
            except NotExported as exc:
                new_study = keys.uid(study_uid)
                summary.excluded.append((f"an instance of study {new_study}", str(exc)))
                continue
            _record(written, d, result=is_result)
            classes[d.sop_class_uid] += 1
            summary.patients.add(d.pseudonym)
            summary.results += is_result
            summary.instances += not is_result
        summary.studies[study_uid] = dict(classes)
        logger.info("export: study %s written (%d files)", study_uid, sum(classes.values()))
    _label(written, rows, silver, request, summary)
    _write_labels(request.out, written, keys, summary)
    _write_manifest(request, summary, secret)
    if request.mapping is not None:
        _write_mapping(request.mapping, written, originals)
    return summary


def _label(
    written: dict[str, _Series],
    rows: list[dict[str, str]],
    silver: dict[str, str],
    request: ExportRequest,
    summary: ExportSummary,
) -> None:
    by_study: dict[str, list[_Series]] = {}
    for s in written.values():
        if not s.result:
            by_study.setdefault(s.original_study, []).append(s)
    for series_uid, label in silver.items():
        if series_uid in written:
            written[series_uid].label, written[series_uid].source = label, "silver"
    for n, row in enumerate(rows, start=2):
        series_uid, study_uid = row.get("series_uid", ""), row.get("study_uid", "")
        targets = [written[series_uid]] if series_uid in written else []
        if not series_uid:
            targets = by_study.get(study_uid, [])
        if not targets:
            summary.label_problems.append(f"{request.labels_csv} line {n}: not in the export")
        for s in targets:
            s.label, s.source = row["label"], "ground_truth"


def _write_labels(
    out: Path, written: dict[str, _Series], keys: Deidentifier, summary: ExportSummary
) -> None:
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "study_uid", "series_uid", "label", "split", "source"])
        for s in written.values():
            if s.result:
                continue  # a SEG is ground truth of its source series, not a case
            w.writerow(
                [
                    s.pseudonym,
                    s.study_uid,
                    s.series_uid,
                    s.label,
                    _split(keys, s.pseudonym),
                    s.source,
                ]
            )
            summary.labelled += bool(s.label)
            summary.unlabelled += not s.label


def _write_manifest(request: ExportRequest, summary: ExportSummary, secret: bytes) -> None:
    manifest: dict[str, Any] = {
        "deidentification": {
            "profile": "DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile",
            "options": [meaning for _code, meaning in OPTION_CODES[1:]],
            "codes": [f"DCM {code}" for code, _meaning in OPTION_CODES],
            "method": list(METHOD),
            "attribute_rules": f"dicom-anonymizer {version('dicom-anonymizer')} "
            f"table {PROFILE_TABLE} (PS3.15 Table E.1-1)",
            "pixel_data": "not cleaned: instances that may carry burned-in text are left out",
            "secret_fingerprint": secret_fingerprint(secret),
        },
        "labels": "silver: the most probable finding of model " + request.silver_model
        if request.silver_model
        else ("ground_truth: " + request.labels_csv.name if request.labels_csv else "none"),
        "split": "per patient, keyed hash of the pseudonym: train 70 %, val 15 %, test 15 %",
        "studies": len(summary.studies),
        "patients": len(summary.patients),
        "instances": summary.instances,
        "result_objects": summary.results,
        "series_labelled": summary.labelled,
        "series_unlabelled": summary.unlabelled,
        "excluded": [{"what": what, "why": why} for what, why in summary.excluded],
        "label_problems": summary.label_problems,
    }
    (request.out / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _write_mapping(path: Path, written: dict[str, _Series], patients: dict[str, str]) -> None:
    """Original -> new identifiers, for whoever must re-identify (kept apart, owner-only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "original_patient_id",
                "original_study_uid",
                "original_series_uid",
                "pseudonym",
                "study_uid",
                "series_uid",
            ]
        )
        for original, s in written.items():
            patient = patients.get(s.original_study, "")
            w.writerow(
                [patient, s.original_study, original, s.pseudonym, s.study_uid, s.series_uid]
            )


def secret_fingerprint(secret: bytes) -> str:
    """A short fingerprint of the secret (which one an export used), not the secret."""
    return hashlib.sha256(b"ainode-export\x00" + secret).hexdigest()[:12]
