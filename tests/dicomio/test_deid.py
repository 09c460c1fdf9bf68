"""De-identification rules on hand-built datasets (PS3.15 Annex E with the export's options)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from dicomio.deid import Deidentifier, clean_descriptor
from dicomio.deid_file import NotExported, burned_in_risk, deidentify_file

KEYS = Deidentifier(b"a-secret-of-enough-bytes")


def _item(**values: object) -> Dataset:
    ds = Dataset()
    for k, v in values.items():
        setattr(ds, k, v)
    return ds


def _ct(**extra: object) -> Dataset:
    ds = _item(
        SOPClassUID=CTImageStorage,
        SOPInstanceUID="1.2.3.4.5",
        StudyInstanceUID="1.2.3",
        SeriesInstanceUID="1.2.3.4",
        PatientName="Doe^Jane",
        PatientID="MRN-1",
        PatientBirthDate="19600412",
        PatientAge="064Y",
        PatientSex="F",
        PatientWeight="61",
        StudyDate="20250110",
        AcquisitionDateTime="20250110093015.5",
        StudyTime="093000",
        AccessionNumber="ACC1",
        InstitutionName="St Elsewhere",
        StudyDescription="CT chest Doe ACC1 2025-01-10 follow-up",
        ImageComments="patient Jane was anxious",
        Modality="CT",
        **extra,
    )
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    return ds


def test_basic_profile_with_options() -> None:
    ds = _ct()
    pseudonym = KEYS.apply(ds)
    assert ds.PatientID == ds.PatientName.family_name == pseudonym == KEYS.pseudonym("MRN-1")
    assert ds.PatientBirthDate == ""  # Z, not retained by any option here
    assert (ds.PatientAge, ds.PatientSex, ds.PatientWeight) == ("064Y", "F", 61)  # retained
    assert ds.AccessionNumber == ""  # Z
    assert ds.InstitutionName == "ANONYMIZED"  # X/Z/D: D keeps the object valid
    assert "ImageComments" not in ds  # X
    assert ds.StudyDescription == "CT chest follow-up"  # cleaned: name, accession, date go
    assert ds.StudyTime == "093000"  # times of day kept with modified dates
    shift = KEYS.day_shift(pseudonym)
    assert -3650 <= shift <= -365
    assert ds.StudyDate != "20250110" and ds.AcquisitionDateTime.endswith("093015.5")
    assert ds.AcquisitionDateTime[:8] == ds.StudyDate  # one shift for all the patient's dates
    assert ds.SOPInstanceUID == KEYS.uid("1.2.3.4.5") == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.SOPClassUID == CTImageStorage  # not an instance UID: kept
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_patients_without_an_id_and_the_very_old() -> None:
    first, second = _ct(), _ct()
    first.PatientID = second.PatientID = ""
    second.StudyInstanceUID = "1.2.9"
    assert KEYS.apply(first) != KEYS.apply(second)  # not one "anonymous" patient
    old = _ct()
    old.PatientAge = "093Y"
    KEYS.apply(old)
    assert old.PatientAge == "090Y"


def test_encapsulated_documents_are_never_exported(tmp_path: Path) -> None:
    pdf = _ct()
    pdf.SOPClassUID = pdf.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    pdf.save_as(tmp_path / "pdf.dcm", enforce_file_format=True)
    with pytest.raises(NotExported, match="encapsulated document"):
        deidentify_file(tmp_path / "pdf.dcm", KEYS, tmp_path / "out", allow_burned_in=True)


def test_uids_are_keyed_valid_and_consistent() -> None:
    uid = KEYS.uid("1.2.840.99.1")
    assert (
        uid == KEYS.uid("1.2.840.99.1") != Deidentifier(b"another secret, 16+").uid("1.2.840.99.1")
    )
    assert uid.startswith("2.25.") and len(uid) <= 64 and uid[5:].isdigit()
    assert uid[5] != "0"  # no leading zero in a UID component (PS3.5 9.1)


def test_sequences_are_walked_references_kept_consistent() -> None:
    ds = _ct(
        ReferencedSeriesSequence=Sequence([_item(SeriesInstanceUID="1.2.3.4")]),
        ContentSequence=Sequence(
            [
                _item(ValueType="TEXT", TextValue="seen by Dr Doe on 20250110"),
                _item(ValueType="PNAME", PersonName="Doe^Jane"),
                _item(ValueType="UIDREF", UID="1.2.3.4.5"),
            ]
        ),
        OtherPatientIDsSequence=Sequence([_item(PatientID="OLD-7")]),
    )
    KEYS.apply(ds)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ds.SeriesInstanceUID
    text, person, uid = ds.ContentSequence
    assert text.TextValue == "seen by Dr on"
    assert person.PersonName == "ANONYMIZED^"
    assert uid.UID == ds.SOPInstanceUID
    assert "OtherPatientIDsSequence" not in ds


def test_private_elements_go_unless_their_creator_is_safe_listed() -> None:
    ds = _ct()
    ds.private_block(0x0029, "SAFE VENDOR", create=True).add_new(0x10, "LO", "kept")
    ds.private_block(0x0031, "OTHER VENDOR", create=True).add_new(0x10, "LO", "MRN-1")
    Deidentifier(b"a-secret-of-enough-bytes", frozenset({"SAFE VENDOR"})).apply(ds)
    assert ds.private_block(0x0029, "SAFE VENDOR")[0x10].value == "kept"
    assert not any(e.tag.group == 0x0031 for e in ds)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("CT Thorax Doe", "CT Thorax"),
        ("CT Thorax DOE-followup", "CT Thorax"),
        ("Synthetic CT", "Synthetic CT"),  # 'syn' of patient ID 'SYN-1' is too short to match
        ("Abdomen 20250110 MRN-1", "Abdomen"),
    ],
)
def test_clean_descriptor(text: str, kept: str) -> None:
    assert clean_descriptor(text, frozenset({"doe", "syn", "mrn-1", "mrn"})) == kept


@pytest.mark.parametrize(
    ("sop_class", "burned", "risk"),
    [
        ("1.2.840.10008.5.1.4.1.1.7", None, "Secondary Capture without Burned In Annotation"),
        ("1.2.840.10008.5.1.4.1.1.7.2", None, "Secondary Capture without Burned In Annotation"),
        ("1.2.840.10008.5.1.4.1.1.7", "NO", ""),
        ("1.2.840.10008.5.1.4.1.1.6.1", None, "ultrasound without Burned In Annotation"),
        ("1.2.840.10008.5.1.4.1.1.77.1.1", None, ""),  # VL Endoscopic: not a 1.1.7 class
        (CTImageStorage, "YES", "Burned In Annotation is YES"),
        (CTImageStorage, None, ""),
    ],
)
def test_burned_in_risk(sop_class: str, burned: str | None, risk: str) -> None:
    ds = _item(SOPClassUID=sop_class)
    if burned is not None:
        ds.BurnedInAnnotation = burned
    assert burned_in_risk(ds) == risk


def test_files_are_written_under_new_identifiers_or_refused(tmp_path: Path) -> None:
    src = tmp_path / "in.dcm"
    _ct().save_as(src, enforce_file_format=True)
    d = deidentify_file(src, KEYS, tmp_path / "out", allow_burned_in=False)
    assert d.path == tmp_path / "out" / d.pseudonym / d.study_instance_uid / (
        f"{d.series_instance_uid}/{d.sop_instance_uid}.dcm"
    )
    assert (d.original_study_instance_uid, d.original_series_instance_uid) == ("1.2.3", "1.2.3.4")
    burned = _ct(BurnedInAnnotation="YES")
    burned.save_as(src, enforce_file_format=True)
    with pytest.raises(NotExported, match="burned-in"):
        deidentify_file(src, KEYS, tmp_path / "out", allow_burned_in=False)
    assert deidentify_file(src, KEYS, tmp_path / "out2", allow_burned_in=True).path.exists()
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    with pytest.raises(NotExported, match="cannot be read"):
        deidentify_file(tmp_path / "junk.dcm", KEYS, tmp_path / "out", allow_burned_in=False)
