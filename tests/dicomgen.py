"""Small synthetic DICOM for tests: CT series with full geometry, written as Part 10."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from storage.lookup import SeriesInfo


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
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["frame of reference", series_uid])
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


def write_lesion_ct(
    folder: Path,
    *,
    shape: tuple[int, int, int] = (40, 64, 64),
    spacing: tuple[float, float, float] = (2.0, 0.8, 0.8),
    spheres: list[tuple[tuple[float, float, float], float]] | None = None,
    lesion_hu: float = 200.0,
    noise_sd: float = 10.0,
    seed: int = 0,
    study_uid: str | None = None,
) -> tuple[list[Path], list[float]]:
    """A CT series of soft tissue (40 HU) with spherical lesions of ``lesion_hu``.

    ``spheres`` are (centre in mm from the first voxel (z, y, x), radius in mm).
    Returns the files and each sphere's true volume (4/3 pi r^3, mm^3).
    """
    spheres = spheres or [((30.0, 20.0, 20.0), 6.0), ((50.0, 32.0, 32.0), 8.0)]
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    rng = np.random.default_rng(seed)
    z, y, x = (np.arange(n) * s for n, s in zip(shape, spacing, strict=True))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    hu = np.full(shape, 40.0) + rng.normal(0, noise_sd, shape)
    for (cz, cy, cx), r in spheres:
        inside = (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        hu[inside] = lesion_hu + rng.normal(0, noise_sd, int(inside.sum()))
    paths = []
    for k in range(shape[0]):
        ds = ct_slice(study_uid=study_uid, series_uid=series_uid, index=k, size=shape[1])
        ds.Columns = shape[2]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.ImagePositionPatient = [0.0, 0.0, k * spacing[0]]
        ds.PixelData = np.clip(np.rint(hu[k] + 1024), 0, 4095).astype("<u2").tobytes()
        path = folder / f"L{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths, [4.0 / 3.0 * np.pi * r**3 for _, r in spheres]


def manual_seg(sources: list[Dataset], mask: np.ndarray, *, series_number: int = 99) -> Dataset:
    """A one-segment BINARY SEG of ``mask`` (one frame per source, in order), as an
    annotator's tool writes it: MANUAL, no ainode provenance."""
    import highdicom as hd

    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="lesion",
                segmented_property_category=hd.sr.CodedConcept(
                    "49755003", "SCT", "Morphologically abnormal structure"
                ),
                segmented_property_type=hd.sr.CodedConcept("52988006", "SCT", "Lesion"),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        ],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="annotator",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )


def ct_series_info(uid: str, paths: Sequence[Path], *, body: str = "CHEST") -> SeriesInfo:
    """A CT series as the store lists it to the pipeline (CT Image Storage files)."""
    return SeriesInfo(
        series_instance_uid=uid,
        modality="CT",
        body_part_examined=body,
        series_description="",
        sop_class_uids=(str(CTImageStorage),),
        paths=tuple(paths),
    )
