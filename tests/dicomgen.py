"""Small synthetic DICOM for tests: CT series with full geometry, written as Part 10."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_slice(
    *,
    study_uid: str,
    series_uid: str,
    index: int,
    size: int = 64,
    patient_id: str = "TEST-1",
    seed: int = 0,
) -> Dataset:
    """One CT slice, 1.25 mm apart along z, with random-but-seeded pixels."""
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = "Test^Patient"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic chest CT"
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Axial 1.25"
    ds.BodyPartExamined = "CHEST"
    ds.FrameOfReferenceUID = study_uid + ".1" if len(study_uid) < 62 else generate_uid()
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, -1.25 * index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.8, 0.8]
    ds.SliceThickness = 1.25
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    rng = np.random.default_rng(seed + index)
    ds.PixelData = rng.integers(0, 2000, size=(size, size), dtype="<u2").tobytes()
    return ds


def write_ct_series(
    folder: Path,
    *,
    count: int,
    size: int = 64,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "TEST-1",
) -> list[Path]:
    """Write ``count`` slices of one series into ``folder``; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    paths = []
    for i in range(count):
        ds = ct_slice(
            study_uid=study_uid, series_uid=series_uid, index=i, size=size, patient_id=patient_id
        )
        path = folder / f"IM{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part 10 file after its File Meta Information."""
    data = path.read_bytes()
    if data[128:132] != b"DICM":
        raise ValueError(f"{path} is not a Part 10 file")
    # (0002,0000) File Meta Information Group Length: UL, value at 140..144.
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]
