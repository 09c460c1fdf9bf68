"""One stored file, de-identified into an export folder (rules: :mod:`dicomio.deid`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomio.deid import Deidentifier
from dicomio.errors import InputError

__all__ = ["Deidentified", "NotExported", "burned_in_risk", "deidentify_file", "text_document"]

# Secondary Capture and ultrasound classes: text is often burned into their pixels.
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_ULTRASOUND = ("1.2.840.10008.5.1.4.1.1.6.", "1.2.840.10008.5.1.4.1.1.3.1")
_ENCAPSULATED = "1.2.840.10008.5.1.4.1.1.104."


def burned_in_risk(ds: Dataset) -> str:
    """Why the instance's pixels may hold identifying text; "" when there is no sign of it.

    Burned In Annotation = YES, or a Secondary Capture or ultrasound instance
    without Burned In Annotation (the classes that typically carry such text).
    """
    burned = str(ds.get("BurnedInAnnotation", "")).upper()
    if burned == "YES":
        return "Burned In Annotation is YES"
    sop_class = str(ds.get("SOPClassUID", ""))
    if burned == "NO":
        return ""
    if sop_class == _SECONDARY_CAPTURE or sop_class.startswith(_SECONDARY_CAPTURE + "."):
        return "Secondary Capture without Burned In Annotation"
    if sop_class.startswith(_ULTRASOUND):
        return "ultrasound without Burned In Annotation"
    return ""


def text_document(ds: Dataset) -> str:
    """Why the instance is a document of free text (PDF, CDA, STL...); "" when it is not."""
    if str(ds.get("SOPClassUID", "")).startswith(_ENCAPSULATED):
        return "an encapsulated document (free text the profile cannot clean)"
    return ""


class NotExported(InputError):
    """An instance left out of an export, and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Deidentified:
    """One file written by :func:`deidentify_file`: its new identity, and where it came from."""

    pseudonym: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    original_study_instance_uid: str
    original_series_instance_uid: str
    path: Path


def deidentify_file(
    src: Path, keys: Deidentifier, out: Path, *, allow_burned_in: bool
) -> Deidentified:
    """De-identify ``src`` into ``out/<pseudonym>/<study>/<series>/<instance>.dcm``.

    Raises :class:`NotExported` for a file that cannot be read or may carry
    burned-in identifying text (unless ``allow_burned_in``).
    """
    try:
        ds = dcmread(src)
    except (InvalidDicomError, OSError) as exc:
        raise NotExported(f"cannot be read: {exc}") from None
    risk = burned_in_risk(ds)
    if risk and not allow_burned_in:
        raise NotExported(f"may carry burned-in text ({risk})")
    if document := text_document(ds):
        raise NotExported(f"never exported: {document}")
    study, series = str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
    if not study or not series or "SOPInstanceUID" not in ds:
        raise NotExported("no Study, Series or SOP Instance UID")
    pseudonym = keys.apply(ds)
    folder = out / pseudonym / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return Deidentified(
        pseudonym=pseudonym,
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        original_study_instance_uid=study,
        original_series_instance_uid=series,
        path=path,
    )
