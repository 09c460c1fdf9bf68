"""Series a model was not made for, made here independently of ``training/synthetic.py``.

Each is an array of Hounsfield units (or MR signal) written slice by slice
with full geometry; nothing shares code or parameters with the training
generator, so what the domain check says about them is not a property of
one generator seen twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.uid import MRImageStorage, generate_uid

from tests.dicomgen import ct_slice

Array = npt.NDArray[np.float64]


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[Array, ...]:
    """Millimetres from the volume's centre, (z, y, x)."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    return tuple(np.meshgrid(*axes, indexing="ij"))


def noise_ct(shape: tuple[int, int, int], seed: int = 0) -> Array:
    """Plain noise over the whole CT range, the benchmark's kind of series."""
    return np.random.default_rng(seed).uniform(-1024, 976, shape)


def chest_vessels(seed: int = 0) -> list[tuple[float, float, float]]:
    """Where ``chest_phantom``'s lung vessels run (along z): (x, y, radius) in mm from the
    volume's centre, six in each lung."""
    rng = np.random.default_rng([seed, 1])
    return [
        (side * 75 + rng.uniform(-35, 35), rng.uniform(-45, 40), rng.uniform(2, 5))
        for side in (-1, 1)
        for _ in range(6)
    ]


def chest_phantom(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 0
) -> Array:
    """Air, an elliptic trunk (skin, fat, muscle), ribs, two lungs with vessels, a spine, a
    nodule."""
    rng = np.random.default_rng(seed)
    z, y, x = _grid(shape, spacing)
    hu = np.full(shape, -1000.0)
    trunk = (x / 160) ** 2 + (y / 110) ** 2
    hu[trunk <= 1.0] = -100.0  # fat
    hu[trunk <= 0.8] = 50.0  # muscle and mediastinum
    lungs = np.zeros(shape, bool)
    for side in (-1, 1):
        lungs |= ((x - side * 75) / 55) ** 2 + ((y + 5) / 70) ** 2 <= 1.0
    hu[lungs] = -850.0
    for cx, cy, r in chest_vessels(seed):  # thin tubes running along z
        hu[lungs & ((x - cx) ** 2 + (y - cy) ** 2 <= r**2)] = 40.0
    hu[((x / 18) ** 2 + ((y - 80) / 18) ** 2) <= 1.0] = 700.0  # a vertebral body
    # ribs: bands of bone in the chest wall every 25 mm along z, open at the sternum
    wall = (trunk > 0.74) & (trunk <= 0.8)
    for z0 in np.arange(-200.0, 201.0, 25.0):
        hu[wall & (np.abs(z - z0) <= 5.0) & ((np.abs(x) > 25) | (y > 0))] = 450.0
    nodule = (x - 70) ** 2 + (y + 10) ** 2 + z**2 <= 6.0**2
    hu[nodule] = 30.0
    return hu + rng.normal(0, 12, shape)


def head_phantom(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 0
) -> Array:
    """Air, a skull (cortical bone) and brain: what a chest model must not read."""
    rng = np.random.default_rng(seed)
    z, y, x = _grid(shape, spacing)
    r = np.sqrt((x / 75) ** 2 + (y / 90) ** 2 + (z / 200) ** 2)
    hu = np.full(shape, -1000.0)
    hu[r <= 1.0] = 1200.0  # skull
    hu[r <= 0.9] = 35.0  # brain
    hu[(r <= 0.2) & (np.abs(x) < 4)] = 5.0  # a ventricle-ish slit
    return hu + rng.normal(0, 5, shape)


def write_series(
    folder: Path,
    values: Array,
    spacing: tuple[float, float, float],
    *,
    modality: str = "CT",
    body_part: str = "CHEST",
    study_uid: str | None = None,
) -> list[Path]:
    """Write ``values`` (z, y, x) as a CT (HU, intercept -1024) or MR series."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    for k in range(values.shape[0]):
        ds = ct_slice(study_uid=study_uid, series_uid=series_uid, index=k, size=values.shape[1])
        ds.Columns = values.shape[2]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.ImagePositionPatient = [0.0, 0.0, k * spacing[0]]
        ds.Modality = modality
        ds.BodyPartExamined = body_part
        if modality == "MR":
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            for keyword in ("RescaleIntercept", "RescaleSlope"):
                delattr(ds, keyword)
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
            ds.MRAcquisitionType = "3D"
            ds.PixelData = np.clip(np.rint(values[k]), 0, 4095).astype("<u2").tobytes()
        else:
            ds.PixelData = np.clip(np.rint(values[k] + 1024), 0, 4095).astype("<u2").tobytes()
        path = folder / f"S{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
