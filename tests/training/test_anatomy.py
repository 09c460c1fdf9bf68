"""The anatomy-like CT generator: reproducible, anatomically plausible, truthful ground truth."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from dicomio.volume_in import load_volume
from tests.dicomcheck import validate
from training.anatomy import generate_anatomical_ct, make_scan


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    generate_anatomical_ct(tmp_path / "a", 2, seed=5)
    generate_anatomical_ct(tmp_path / "b", 2, seed=5)
    generate_anatomical_ct(tmp_path / "c", 2, seed=6)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


@pytest.mark.parametrize("section", ["chest", "abdomen"])
def test_a_scan_has_the_tissues_of_its_section(section: str) -> None:
    scan = make_scan(np.random.default_rng(3), section=section)
    hu = scan.hu
    share = {
        "air or lung": float((hu < -500).mean()),
        "fat": float(((hu > -200) & (hu < -50)).mean()),
        "soft tissue": float(((hu > 0) & (hu < 100)).mean()),
        "bone": float((hu > 500).mean()),
    }
    assert all(v > 0.002 for v in share.values()), share
    if section == "chest":  # lungs: a large share of the body is air-filled
        inside = hu[:, hu.shape[1] // 2, :]
        assert (inside < -700).mean() > 0.3
    # the scan's noise is correlated (a kernel's texture), not white: neighbours agree
    air = hu[:, :8, :8].astype(np.float64)  # outside the body: only noise
    air = air - air.mean()
    lag1 = float((air[:, :, 1:] * air[:, :, :-1]).mean() / (air * air).mean())
    assert lag1 > 0.2, lag1


def test_lung_vessels_are_seen_end_on_as_dots() -> None:
    """Lesion-free chest scans are full of round vessel cross-sections (the false-nodule trap)."""
    rng = np.random.default_rng(11)
    scan = next(s for s in (make_scan(rng, section="chest") for _ in range(10)) if not s.lesions)
    assert not scan.mask.any()
    k = scan.hu.shape[0] // 2
    dense = (scan.hu[k] > -300) & (scan.hu[k] < 600)
    lungs = ndimage.binary_erosion(scan.hu[k] < -700, iterations=2)
    # small dense blobs inside the lung fields
    labelled, _n = ndimage.label(dense & ndimage.binary_fill_holes(lungs))
    sizes = np.bincount(labelled.ravel())[1:]
    assert (sizes > 2).sum() >= 5, sizes


def test_labels_and_masks_tell_the_truth(tmp_path: Path) -> None:
    generate_anatomical_ct(tmp_path, 6, seed=21)
    with (tmp_path / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    for i, row in enumerate(rows):
        files = sorted((tmp_path / "studies" / f"{i:04d}").glob("*.dcm"))
        volume = load_volume(files)
        mask = np.load(tmp_path / "masks" / f"{row['series_uid']}.npy")
        assert mask.shape == volume.array.shape
        assert (row["label"] == "normal") == (not mask.any())
        if mask.any():  # a lesion differs from what surrounds it
            ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
            assert abs(volume.array[mask].mean() - volume.array[ring].mean()) > 15


def test_shifted_set_uses_acquisitions_never_trained_on() -> None:
    train = [make_scan(np.random.default_rng(s)) for s in range(8)]
    test = [make_scan(np.random.default_rng(s), shift=True) for s in range(8)]
    trained_pixels = {round(s.spacing[1], 2) for s in train}
    assert all(1.3 <= p <= 2.2 for p in trained_pixels)
    assert all(not 1.2 < s.spacing[1] < 2.3 for s in test)
    assert {s.thickness_mm for s in test} - {1.25, 1.5, 2.0, 2.5, 3.0} != set()


@pytest.mark.tools("dciodvfy", "dcentvfy")
def test_anatomical_dicom_passes_dciodvfy_and_dcentvfy(tmp_path: Path) -> None:
    generate_anatomical_ct(tmp_path, 1, seed=3, shift=True)
    result = validate(tmp_path / "studies", entity=True)
    assert result.ok, result.report()
    assert len(result.files) > 0
