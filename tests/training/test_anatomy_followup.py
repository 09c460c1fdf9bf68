"""Longitudinal anatomical patients: one anatomy per patient, lesions that change as labelled."""

from __future__ import annotations

import csv
import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from training.anatomy_followup import (
    FollowUpStudy,
    generate_anatomical_longitudinal,
    make_patient,
)
from training.data import load_history_cases
from training.synthetic import CHANGE_LABELS


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _axes(study: FollowUpStudy) -> list[np.ndarray]:
    """Each voxel axis in the patient's millimetres (the grid is centred; the patient moved)."""
    return [
        (np.arange(n) - (n - 1) / 2) * step + shift
        for n, step, shift in zip(study.hu.shape, study.spacing, study.offset_mm, strict=True)
    ]


def _seen_from(study: FollowUpStudy, other: FollowUpStudy) -> np.ndarray:
    """``other``'s image sampled at ``study``'s voxels (the same places in the patient)."""
    mine, theirs = _axes(study), _axes(other)
    index = [(m - t[0]) / s for m, t, s in zip(mine, theirs, other.spacing, strict=True)]
    sampled: np.ndarray = ndimage.map_coordinates(
        other.hu, np.meshgrid(*index, indexing="ij"), order=1, mode="constant", cval=np.nan
    )
    return sampled


def _agreement(a: FollowUpStudy, b: FollowUpStudy) -> float:
    """Correlation of two studies' tissues where both see the patient (lung or body)."""
    seen = _seen_from(a, b)
    both = ~np.isnan(seen) & (a.hu > -950)
    x, y = np.clip(a.hu[both], -1000, 400), np.clip(seen[both], -1000, 400)
    return float(np.corrcoef(x, y)[0, 1])


@pytest.fixture(scope="module")
def patients() -> list[list[FollowUpStudy]]:
    return [make_patient(11, i) for i in range(3)]


def test_every_study_of_a_patient_shows_the_same_anatomy(
    patients: list[list[FollowUpStudy]],
) -> None:
    for studies in patients:
        assert 3 <= len(studies) <= 4
        for later in studies[1:]:
            # A new acquisition each time: another grid, kernel and noise ...
            assert later.hu.shape != studies[0].hu.shape or later.spacing != studies[0].spacing
            # ... of the same body: its tissues line up once the patient's position is known.
            assert _agreement(studies[0], later) > 0.8
    # Another patient's body does not.
    assert _agreement(patients[0][0], patients[1][0]) < 0.6


def test_lesions_change_as_labelled(patients: list[list[FollowUpStudy]]) -> None:
    seen = set()
    for studies in [*patients, make_patient(11, 3), make_patient(11, 4)]:
        assert studies[0].label == "" and studies[0].day == 0
        volumes = [s.mask.sum() * float(np.prod(s.spacing)) for s in studies]
        assert all(v > 0 for v in volumes)
        for before, after, study in zip(volumes, volumes[1:], studies[1:], strict=False):
            assert study.label in CHANGE_LABELS
            seen.add(study.label)
            ratio = after / before  # radius x1.3-1.6, x0.93-1.07, x0.55-0.75
            bounds = {"increase": (1.8, 5.0), "stable": (0.75, 1.3), "decrease": (0.1, 0.5)}
            low, high = bounds[study.label]
            assert low < ratio < high, (study.label, ratio)
        days = [s.day for s in studies]
        assert all(60 <= b - a < 240 for a, b in itertools.pairwise(days))
    assert seen == set(CHANGE_LABELS)
    # Each lesion differs from what surrounds it at every visit (one patient may have a
    # hypodense and a hyperdense one: each on its own).
    for study in patients[0]:
        labelled, count = ndimage.label(study.mask)
        assert count >= 1
        for n in range(1, count + 1):
            lesion = labelled == n
            ring = ndimage.binary_dilation(lesion, iterations=2) & ~study.mask
            assert abs(study.hu[lesion].mean() - study.hu[ring].mean()) > 15


def test_shifted_patients_are_seen_by_acquisitions_never_trained_on() -> None:
    studies = make_patient(2, 0, shift=True)
    assert all(not 1.2 < s.spacing[1] < 2.3 for s in studies)


def test_written_set_is_reproducible_and_read_by_the_change_model_loader(tmp_path: Path) -> None:
    labels = generate_anatomical_longitudinal(tmp_path / "a", 2, seed=5)
    generate_anatomical_longitudinal(tmp_path / "b", 2, seed=5)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    with labels.open() as f:
        rows = list(csv.DictReader(f))
    assert len({r["patient_id"] for r in rows}) == 2
    labelled = [r for r in rows if r["label"]]
    assert labelled and all(r["label"] in CHANGE_LABELS for r in labelled)
    for row in rows:
        assert (tmp_path / "a" / "masks" / f"{row['series_uid']}.npy").exists()
    cases, report = load_history_cases(tmp_path / "a", labels, CHANGE_LABELS, max_priors=2)
    assert len(cases) == len(labelled) and not report.skipped
    for case in cases:  # each follow-up with its priors, oldest first, in days before it
        assert len(case.volumes) >= 2
        assert list(case.days_before) == sorted(case.days_before, reverse=True)
        assert case.days_before[-1] == 0
