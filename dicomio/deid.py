"""De-identification of a DICOM dataset: PS3.15 Annex E, the options a training set needs.

The attribute rules come from the Basic Application Level Confidentiality
Profile table (PS3.15 Table E.1-1) as the maintained ``dicom-anonymizer``
package carries it (``dicomfields_2026c``: 655 attributes and ranges, each with
its action code). This module applies those codes, walking every element of
every sequence item, with the options a training set needs:

- **Retain Longitudinal Temporal Information with Modified Dates** (113107):
  every date (DA, and the date part of DT) is moved by one shift per patient
  (1 to 10 years back, from a keyed hash), so a patient's studies keep their
  order and intervals; times of day are kept. Patient's Birth Date is emptied.
- **Retain Patient Characteristics** (113108): Patient's Age (90 years and over
  as 090Y), Sex, Size, Weight, Sex Neutered and Pregnancy Status are kept
  (Ethnic Group, Smoking Status, Allergies and the other free-text
  characteristics are removed: stricter than the option).
- **Clean Descriptors** (113105): Study, Series, Protocol and procedure
  descriptions, and Text Values of SR content items, keep only the words
  that hold none of the dataset's identifying values (names, IDs, accession,
  institution, station) and no run of four or more digits; a descriptor left
  empty is removed. Comments (Image, Study, Patient comments...) are removed.

How each code is carried out: ``X`` removes; ``Z`` empties; ``D`` puts a dummy
("ANONYMIZED", 0) or, for a sequence, cleans its items; ``U`` maps the UID to
``2.25.<128 bits of HMAC-SHA256(secret, uid)>``, so the same UID becomes the
same new one in every file and every export made with the same secret, and
references (Referenced SOP Instance UID, Referenced Series, Pertinent Other
Evidence, SEG source images) still resolve. Where the table leaves a choice
(``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``, ``X/Z/U*``) the value that keeps the
object valid is taken: ``Z`` over ``X``, ``D`` over ``Z``, a cleaned sequence
over an emptied one. Patient ID and Patient's Name (its family name) become the patient's
pseudonym (a keyed hash of Issuer of Patient ID and Patient ID). Private
elements are removed unless their block's private creator is safe-listed.
Patient Identity Removed = YES, De-identification Method and its Code
Sequence say what was done; Longitudinal Temporal Information Modified =
MODIFIED.

Pixel data is not touched: text burned into pixels is not found here, which
is why the export leaves out instances that may carry it
(:func:`dicomio.deid_file.burned_in_risk`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from importlib.metadata import version

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

__all__ = [
    "METHOD",
    "OPTION_CODES",
    "PROFILE_TABLE",
    "Deidentifier",
    "clean_descriptor",
]

#: The edition of PS3.15 Table E.1-1 the rules come from (dicom-anonymizer's name for it).
PROFILE_TABLE = "dicomfields_2026c"

#: CID 7050 De-identification Method: the profile and the options applied.
OPTION_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
    ("113105", "Clean Descriptors Option"),
)

#: De-identification Method (0012,0063): LO values of at most 64 characters each.
METHOD = (
    "PS3.15 E.1 Basic Profile (Table E.1-1 2026c)",
    "Retain Longitudinal Modified Dates; Retain Patient Chars",
    "Clean Descriptors; private elements removed",
    f"ainode with dicom-anonymizer {version('dicom-anonymizer')}",
)

# Retain Patient Characteristics: the option's K attributes this export keeps.
_RETAINED = frozenset(
    int(Tag(k))
    for k in (
        "PatientAge",
        "PatientSex",
        "PatientSize",
        "PatientWeight",
        "PatientSexNeutered",
        "PregnancyStatus",
    )
)
# Clean Descriptors: kept in part when their words hold nothing identifying.
_DESCRIPTORS = frozenset(
    int(Tag(k))
    for k in (
        "StudyDescription",
        "SeriesDescription",
        "ProtocolName",
        "PerformedProcedureStepDescription",
        "RequestedProcedureDescription",
        "DerivationDescription",
        "AcquisitionDeviceProcessingDescription",
        "ContrastBolusAgent",
        "TextValue",
    )
)
# Their words are looked for in descriptors (PS3.15 E.3.5: clean of identifying information).
_IDENTIFYING = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyID",
    "PatientBirthDate",
    "PatientBirthName",
    "PatientMotherBirthName",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "StationName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "PhysiciansOfRecord",
)
_PATIENT_ID = int(Tag("PatientID"))
_AGE = int(Tag("PatientAge"))
_PATIENT_NAME = int(Tag("PatientName"))
_BIRTH_DATE = int(Tag("PatientBirthDate"))
_TEXT_VALUE = int(Tag("TextValue"))
_DIGITS = re.compile(r"\d{4,}")
_WORDS = re.compile(r"[^\W_]+", re.UNICODE)
_DUMMY = "ANONYMIZED"
_STRINGS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMBERS = frozenset({"DS", "IS", "FD", "FL", "SS", "US", "SL", "UL", "SV", "UV"})


@cache
def _table() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    """Table E.1-1 as tag -> action code, and its ranges (group, element, masks, code)."""
    codes = {
        "D_TAGS": "D",
        "Z_TAGS": "Z",
        "X_TAGS": "X",
        "U_TAGS": "U",
        "Z_D_TAGS": "D",  # Z unless D is needed for a valid object: D keeps it valid
        "X_Z_TAGS": "Z",
        "X_D_TAGS": "D",
        "X_Z_D_TAGS": "D",
        "X_Z_U_STAR_TAGS": "U*",
    }
    table = dicom_anonymization_database_selector(PROFILE_TABLE)
    single: dict[int, str] = {}
    ranges: list[tuple[int, int, int, int, str]] = []
    for category, code in codes.items():
        for entry in table[category]:
            if len(entry) == 2:
                single[(entry[0] << 16) | entry[1]] = code
            else:
                ranges.append((entry[0], entry[1], entry[2], entry[3], code))
    return single, tuple(ranges)


def _action(tag: BaseTag) -> str | None:
    single, ranges = _table()
    code = single.get(int(tag))
    if code is not None:
        return code
    for group, element, group_mask, element_mask, range_code in ranges:
        if tag.group & group_mask == group and tag.element & element_mask == element:
            return range_code
    return None


def _hmac(secret: bytes, what: str) -> bytes:
    return hmac.new(secret, what.encode(), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Deidentifier:
    """Keyed de-identification: the same secret gives the same pseudonyms, UIDs and shifts."""

    secret: bytes
    keep_private_creators: frozenset[str] = frozenset()

    def pseudonym(self, patient_id: str, issuer: str = "") -> str:
        """The patient's pseudonym: not reversible without the secret, stable with it."""
        digest = _hmac(self.secret, f"patient\x00{issuer}\x00{patient_id}")
        return "ANON-" + digest[:10].hex().upper()

    def uid(self, uid: str) -> str:
        """The UID's replacement (PS3.5 B.2: a 2.25 UUID-derived UID, at most 44 characters)."""
        digest = _hmac(self.secret, f"uid\x00{uid}")
        return f"2.25.{int.from_bytes(digest[:16], 'big') >> 1}"

    def fraction(self, purpose: str, pseudonym: str) -> float:
        """A keyed number in [0, 1) for the patient and ``purpose`` (e.g. the export's split)."""
        digest = _hmac(self.secret, f"{purpose}\x00{pseudonym}")
        return int.from_bytes(digest[:8], "big") / 2**64

    def day_shift(self, pseudonym: str) -> int:
        """Days the patient's dates move: 365 to 3650 back, one value per patient."""
        digest = _hmac(self.secret, f"dates\x00{pseudonym}")
        return -(365 + int.from_bytes(digest[:4], "big") % 3286)

    def apply(self, ds: Dataset) -> str:
        """De-identify ``ds`` in place (file meta included); return the patient's pseudonym."""
        patient_id = str(ds.get("PatientID", "")).strip()
        if not patient_id:  # no ID: not one anonymous patient, each study a patient of its own
            patient_id = "\x00study " + str(ds.get("StudyInstanceUID", ""))
        pseudonym = self.pseudonym(patient_id, str(ds.get("IssuerOfPatientID", "")))
        words = _identifying_words(ds)
        _Walk(self, pseudonym, self.day_shift(pseudonym), words).dataset(ds)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = list(METHOD)
        ds.DeidentificationMethodCodeSequence = Sequence([_code(v, m) for v, m in OPTION_CODES])
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        meta = FileMetaDataset()
        old = getattr(ds, "file_meta", None)
        if old is not None and "TransferSyntaxUID" in old:
            meta.TransferSyntaxUID = old.TransferSyntaxUID
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta = meta
        return pseudonym


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def _identifying_words(ds: Dataset) -> frozenset[str]:
    """Lower-case words (3+ characters) of the dataset's identifying values."""
    found: set[str] = set()
    for keyword in _IDENTIFYING:
        value = ds.get(keyword)
        if value is None:
            continue
        values: Iterable[object] = value if isinstance(value, list | tuple) else [value]
        for v in values:
            text = str(v)
            found.add(text.lower())
            found |= {w.lower() for w in _WORDS.findall(text) if len(w) >= 3}
    return frozenset(w for w in found if len(w) >= 3)


def clean_descriptor(text: str, identifying: frozenset[str]) -> str:
    """``text`` without the words that hold an identifying value or four or more digits.

    A word goes when one of its parts is an identifying word, or (for values of
    five or more characters) when it contains one: "Doe" and "DOE-followup" go
    for a patient named Doe, "Synthetic" stays for a patient ID "SYN-1".
    """
    kept = []
    for word in text.split():
        low = word.lower()
        parts = {p.lower() for p in _WORDS.findall(word)}
        if (
            _DIGITS.search(word)
            or parts & identifying
            or any(len(f) >= 5 and f in low for f in identifying)
        ):
            continue
        kept.append(word)
    return " ".join(kept)


class _Walk:
    """One dataset's de-identification: the keys, the patient's shift, its identifying words."""

    def __init__(
        self, keys: Deidentifier, pseudonym: str, shift_days: int, words: frozenset[str]
    ) -> None:
        self.keys, self.pseudonym, self.shift, self.words = keys, pseudonym, shift_days, words

    def dataset(self, ds: Dataset) -> None:
        for tag in list(ds.keys()):
            self.element(ds, ds[tag])

    def element(self, ds: Dataset, elem: DataElement) -> None:
        tag = elem.tag
        if tag.is_private:
            if not self._kept_private(ds, tag):
                del ds[tag]
            return
        if int(tag) == _PATIENT_ID:
            elem.value = self.pseudonym
            return
        if int(tag) == _PATIENT_NAME:  # family name component: not the retired one-part form
            elem.value = f"{self.pseudonym}^"
            return
        if int(tag) == _BIRTH_DATE:
            elem.value = ""
            return
        if int(tag) == _AGE:
            elem.value = _age(str(elem.value or ""))
            return
        if int(tag) in _RETAINED:
            return
        if elem.VR in ("DA", "DT"):
            elem.value = self._shift(elem)
            return
        if int(tag) in _DESCRIPTORS:
            self._clean(ds, elem)
            return
        code = _action(tag)
        if code is None:
            if elem.VR == "SQ":
                self._items(elem)
            return
        self._apply(ds, elem, code)

    def _apply(self, ds: Dataset, elem: DataElement, code: str) -> None:
        vr = elem.VR
        if code == "X":
            del ds[elem.tag]
        elif vr == "SQ":
            if code == "Z":
                elem.value = Sequence([])
            else:  # D, U*: clean the items (their UIDs are replaced, names emptied...)
                self._items(elem)
        elif vr == "UI" and code in ("U", "U*", "D"):
            elem.value = self._uids(elem.value)
        elif vr == "TM":
            pass  # times of day are kept with modified dates (the dates move, not the hours)
        elif code == "Z" or code == "U*":
            elem.value = None if vr in _NUMBERS else ("" if vr not in ("OB", "OW", "UN") else b"")
        elif vr == "PN":
            elem.value = f"{_DUMMY}^"
        elif vr in _STRINGS:
            elem.value = _DUMMY
        elif vr in _NUMBERS:
            elem.value = 0 if vr not in ("DS", "IS") else "0"
        elif vr == "AS":
            elem.value = "000Y"
        else:  # UR, binary: no dummy that means anything; remove it
            del ds[elem.tag]

    def _items(self, elem: DataElement) -> None:
        for item in elem.value:
            self.dataset(item)

    def _uids(self, value: object) -> object:
        if isinstance(value, str):
            return self.keys.uid(value) if value else value
        return [self.keys.uid(str(v)) for v in value]  # type: ignore[attr-defined]

    def _shift(self, elem: DataElement) -> object:
        values = elem.value if elem.VM > 1 else [elem.value]
        shifted = [_shift_date(str(v), self.shift) for v in values if v]
        if elem.VM > 1:
            return shifted
        return shifted[0] if shifted else ""

    def _clean(self, ds: Dataset, elem: DataElement) -> None:
        cleaned = clean_descriptor(str(elem.value or ""), self.words)
        if cleaned:
            elem.value = cleaned
        elif int(elem.tag) == _TEXT_VALUE:
            elem.value = "(removed)"  # a TEXT content item needs a value (PS3.3 C.17.3)
        else:
            del ds[elem.tag]

    def _kept_private(self, ds: Dataset, tag: BaseTag) -> bool:
        if not self.keys.keep_private_creators:
            return False
        if 0x0010 <= tag.element <= 0x00FF:  # a private creator element itself
            return str(ds[tag].value) in self.keys.keep_private_creators
        creator = ds.get(Tag(tag.group, tag.element >> 8))
        return creator is not None and str(creator.value) in self.keys.keep_private_creators


def _age(value: str) -> str:
    """Patient's Age, with 90 years and over as "090Y" (an age that rare singles people out)."""
    if value.endswith("Y") and value[:-1].isdigit() and int(value[:-1]) >= 90:
        return "090Y"
    return value


def _shift_date(value: str, days: int) -> str:
    """A DA or DT value moved by ``days``; "" for a value that is not a date."""
    text = value.strip()
    try:
        moved = date(int(text[:4]), int(text[4:6]), int(text[6:8])) + timedelta(days=days)
    except ValueError:
        return ""
    return moved.strftime("%Y%m%d") + text[8:]
