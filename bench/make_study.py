"""The benchmarks' data: a large CT series and many small instances, valid DICOM, reproducible.

Written below ``--out`` (a temp folder, never the repository)::

    ct/      one CT series of N slices of 512 x 512 (default 200, about 105 MB):
             a body-shaped phantom (trunk with fat rim, lungs, spine) plus noise
    small/   M CT images of S x S (default 1000 of 64 x 64) in their own study,
             spread over a few series

Both are CT Image Storage in Explicit VR Little Endian with full geometry, and
pass dciodvfy. UIDs and noise come from ``--seed``, so the same seed gives the
same bytes: runs of different receivers can be compared side by side.

    python bench/make_study.py --out /tmp/bench-data [--ct-slices 200] [--small-count 1000]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

__all__ = ["make_ct", "make_small", "uid"]


def uid(*parts: object) -> str:
    """A deterministic 2.25 UID (UUID arc) from a hash of ``parts``."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _inside(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
    cx: float,
    cy: float,
    rx: float,
    ry: float,
) -> npt.NDArray[np.bool_]:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def phantom(size: int, z: float, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """One axial slice in HU; ``z`` in [0, 1] from the lower neck to the mid chest."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    grow = float(np.sin(np.pi * (0.3 + 0.6 * z)))
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    trunk_x, trunk_y = 0.26 + 0.12 * grow, 0.17 + 0.05 * grow
    hu[_inside(x, y, 0, 0, trunk_x, trunk_y)] = -90.0  # fat
    hu[_inside(x, y, 0, 0, trunk_x - 0.025, trunk_y - 0.02)] = 45.0  # muscle, organs
    lung = max(0.0, grow - 0.35)
    for side in (-1, 1):
        hu[_inside(x, y, side * 0.13, -0.01, 0.02 + 0.09 * lung, 0.03 + 0.09 * lung)] = -820.0
    hu[_inside(x, y, 0, 0.11, 0.035, 0.035)] = 700.0  # vertebral body
    hu[_inside(x, y, 0, -0.02, 0.03, 0.03)] = 40.0 + 150.0 * lung  # heart / mediastinum
    return hu + rng.normal(0.0, 12.0, hu.shape).astype(np.float32)


def _slice(
    *,
    study: str,
    series: str,
    number: int,
    index: int,
    hu: npt.NDArray[np.float32],
    spacing: float,
    thickness: float,
    patient: str,
) -> Dataset:
    sop = uid(series, index)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.PatientName, ds.PatientID = f"Bench^{patient}", patient
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study, "20260101", "120000"
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "", "1", ""
    ds.Modality, ds.Manufacturer = "CT", "ainode bench"
    ds.SeriesInstanceUID, ds.SeriesNumber = series, number
    ds.SeriesDescription, ds.BodyPartExamined = "Bench CT", "CHEST"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = uid(study, "for"), ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber, ds.AcquisitionNumber = index + 1, 1
    ds.PatientPosition, ds.KVP = "HFS", "120"
    ds.ImagePositionPatient = [
        f"{-hu.shape[1] * spacing / 2:.3f}",
        "0",
        f"{-index * thickness:.3f}",
    ]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
    ds.SliceThickness = f"{thickness:.3f}"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.PixelData = np.clip(np.rint(hu + 1024), 0, 4095).astype("<u2").tobytes()
    return ds


def make_ct(out: Path, slices: int, seed: int) -> list[Path]:
    """``out/ct``: one series of ``slices`` 512 x 512 slices, 1.25 mm apart."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study, series = uid("bench-ct", seed, "study"), uid("bench-ct", seed, "series")
    paths = []
    for k in range(slices):
        hu = phantom(512, k / max(1, slices - 1), rng)
        ds = _slice(
            study=study,
            series=series,
            number=1,
            index=k,
            hu=hu,
            spacing=0.7,
            thickness=1.25,
            patient="CT",
        )
        path = out / f"CT{k:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_small(out: Path, count: int, size: int, series_count: int, seed: int) -> list[Path]:
    """``out/small``: ``count`` images of ``size`` x ``size`` over ``series_count`` series."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    study = uid("bench-small", seed, "study")
    paths = []
    per_series = -(-count // series_count)
    for i in range(count):
        s, k = divmod(i, per_series)
        series = uid("bench-small", seed, "series", s)
        hu = phantom(size, k / max(1, per_series - 1), rng)
        ds = _slice(
            study=study,
            series=series,
            number=s + 1,
            index=k,
            hu=hu,
            spacing=5.0,
            thickness=2.0,
            patient="SMALL",
        )
        path = out / f"S{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ct-slices", type=int, default=200)
    parser.add_argument("--small-count", type=int, default=1000)
    parser.add_argument("--small-size", type=int, default=64)
    parser.add_argument("--small-series", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-small", action="store_true", help="write only the CT")
    args = parser.parse_args(argv)
    if args.ct_slices:
        make_ct(args.out / "ct", args.ct_slices, args.seed)
    if not args.skip_small and args.small_count:
        make_small(
            args.out / "small", args.small_count, args.small_size, args.small_series, args.seed
        )
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
