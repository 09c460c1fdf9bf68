"""Blob candidates and the candidate CNN: finding, cutting, training, scoring."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from inference.candidates import find_candidates, regrid, suppress
from inference.detect import score
from inference.patches import LUNG, PATCH, patches, windowed
from training.candidate_net import CandidateSchedule, train_candidates


def _ball(shape: tuple[int, int, int], centre: tuple[float, ...], radius: float) -> np.ndarray:
    z, y, x = np.indices(shape)
    return np.asarray(
        (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2
    )


def _lung_with_nodule_and_vessel() -> np.ndarray:
    """Lung (-850 HU) with a 10 mm nodule and a vessel of the same width running along z."""
    hu = np.full((40, 60, 60), -850.0, np.float32)
    hu[_ball(hu.shape, (20, 20, 20), 4.0)] = 40.0
    _, y, x = np.indices(hu.shape)
    hu[(y - 40) ** 2 + (x - 40) ** 2 <= 16] = 40.0
    return hu


def test_the_nodule_outranks_a_vessel_of_its_width() -> None:
    cand = find_candidates(_lung_with_nodule_and_vessel())
    bright = cand.points[cand.bright]
    assert np.abs(bright[0] - (20, 20, 20)).max() <= 1
    on_vessel = [
        r
        for p, r in zip(bright, cand.response[cand.bright], strict=True)
        if abs(p[1] - 40) <= 1 and abs(p[2] - 40) <= 1
    ]
    assert on_vessel and max(on_vessel) < cand.response[0]


def test_a_ground_glass_nodule_gets_a_candidate_among_vessels_only_from_its_stream() -> None:
    """Lung with 16 vessels (40 HU, 3 voxels = 3.75 mm wide, along z) and a ground-glass
    nodule (-550 HU, 12.5 mm): every bright candidate of the usual stream lies on a vessel;
    the ground-glass stream (vessels thinner than its 5 mm ball opened away, lungs clipped
    to ground-glass values) puts its strongest in the nodule."""
    hu = np.full((40, 80, 80), -850.0, np.float32)
    _, y, x = np.indices(hu.shape)
    for cy in (10, 30, 50, 70):
        for cx in (10, 30, 50, 70):
            hu[(y - cy) ** 2 + (x - cx) ** 2 <= 1.5**2] = 40.0
    nodule = _ball(hu.shape, (20, 40, 40), 5.0)
    hu[nodule] = -550.0
    hu += np.random.default_rng(4).normal(0, 20, hu.shape).astype(np.float32)
    usual = find_candidates(hu, bright_keep=30, dark_keep=0)
    assert not nodule[tuple(usual.points.T)].any()
    both = find_candidates(hu, bright_keep=30, dark_keep=0, ground_glass_keep=3)
    glass = both.points[both.family == 4]
    assert len(glass) == 3 and nodule[tuple(glass[0])]
    assert both.bright[both.family == 4].all()


def test_dark_blobs_only_in_soft_tissue() -> None:
    hu = np.full((40, 60, 60), 60.0, np.float32)  # liver-like block
    hu[_ball(hu.shape, (20, 20, 20), 4.0)] = 20.0  # a hypodense lesion
    hu[:, :, 45:] = -850.0  # lung beside it: no dark candidate there
    cand = find_candidates(hu)
    dark = cand.points[~cand.bright]
    assert len(dark) and np.abs(dark[0] - (20, 20, 20)).max() <= 1
    assert (dark[:, 2] < 44).all()


def test_nothing_outside_the_body() -> None:
    hu = np.full((20, 30, 30), -1000.0, np.float32)
    assert len(find_candidates(hu)) == 0


def test_regrid_makes_cubes_of_iso_mm() -> None:
    v = np.zeros((10, 20, 20), np.float32)
    assert regrid(v, (2.5, 0.625, 1.25)).shape == (20, 10, 20)


def test_patches_are_centred_and_air_outside_the_scan() -> None:
    hu = np.random.default_rng(0).normal(0, 300, (30, 40, 40)).astype(np.float32)
    points = np.array([[15, 20, 20], [0, 0, 0]], np.int64)
    x = patches(hu, points)
    assert x.shape == (2, 3, PATCH, PATCH, PATCH)
    c = PATCH // 2
    assert x[0, 0, c, c, c] == np.float16(windowed(hu[15, 20, 20], LUNG))
    assert x[1, 0, 0, 0, 0] == 0.0  # beyond the scan's corner: air, the window's lowest value
    assert x[1, 0, c, c, c] == np.float16(windowed(hu[0, 0, 0], LUNG))


def test_suppress_keeps_the_best_of_each_place() -> None:
    points = np.array([[0, 0, 0], [0, 0, 2], [0, 0, 10], [0, 1, 10]], np.int64)
    kept = suppress(points, np.array([0.5, 0.9, 0.1, 0.3]), radius=3.0)
    assert kept.tolist() == [1, 3]


def _toy(rng: np.random.Generator, n: int, blob: bool) -> np.ndarray:
    """Patches of a bright ball at the centre (a lesion) or of a bright tube through it."""
    out = np.empty((n, 3, PATCH, PATCH, PATCH), np.float16)
    z, y, x = np.indices((PATCH,) * 3)
    c = PATCH // 2
    for i in range(n):
        r = rng.uniform(2, 5)
        shape = (
            ((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2 <= r * r)
            if blob
            else ((y - c) ** 2 + (x - c) ** 2 <= r * r)
        )
        hu = np.where(shape, 40.0, -850.0) + rng.normal(0, 30, shape.shape)
        out[i, 0] = windowed(hu, LUNG)
        out[i, 1] = windowed(hu, (-160.0, 240.0))
        out[i, 2] = windowed(hu, LUNG)
    return out


def test_the_cnn_learns_balls_from_tubes_and_the_same_seed_gives_the_same_weights() -> None:
    rng = np.random.default_rng(3)
    pos, neg = _toy(rng, 24, True), _toy(rng, 24, False)
    schedule = CandidateSchedule(steps=40, batch=16, lr=3e-3, warmup=5)
    torch.set_num_threads(1)
    a = train_candidates(pos, neg, schedule, seed=5, log_every=0)
    b = train_candidates(pos, neg, schedule, seed=5, log_every=0)
    for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    test_pos, test_neg = score(a, _toy(rng, 16, True)), score(a, _toy(rng, 16, False))
    # every held-out ball above every tube (AUROC 1)
    assert test_pos.min() > test_neg.max(), (test_pos, test_neg)


def test_a_faint_organ_lesion_is_a_candidate_among_strong_edges() -> None:
    """A hypodense lesion 20 HU below its liver, beside gas bubbles that outrank it."""
    hu = np.full((40, 60, 60), 60.0, np.float32)
    hu[_ball(hu.shape, (20, 30, 30), 5.0)] = 40.0
    rng = np.random.default_rng(1)
    for _ in range(10):
        centre = (rng.integers(5, 35), rng.integers(5, 55), rng.integers(5, 55))
        if max(abs(a - b) for a, b in zip(centre, (20, 30, 30), strict=True)) > 10:
            hu[_ball(hu.shape, centre, 2.0)] = -900.0
    plain = find_candidates(hu, bright_keep=5, dark_keep=5)
    found = find_candidates(hu, bright_keep=5, dark_keep=5, organ_keep=3)

    def near(c: np.ndarray) -> bool:
        return bool((np.abs(c - (20, 30, 30)).max(axis=1) <= 1).any())

    assert not near(plain.points[~plain.bright])
    assert near(found.points[~found.bright])
    at_lesion = np.abs(found.points - (20, 30, 30)).max(axis=1) <= 1
    assert set(found.family[at_lesion].tolist()) == {3}  # dark, inside an organ


def _liver_in_fat(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A liver-like block (60 HU) in fat (-100 HU) with a 12.5 mm lesion 25 HU darker,
    under correlated noise of 20 HU (a sharp kernel's grain): its contrast to noise is
    about 1 voxel by voxel."""
    hu = np.full((40, 72, 72), -100.0, np.float32)
    hu[4:36, 8:64, 8:64] = 60.0
    lesion = _ball(hu.shape, (20, 30, 40), 5.0)
    hu[lesion] -= 25.0
    grain = np.asarray(
        ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, 1, hu.shape), 0.7)
    )
    return hu + (20.0 * grain / grain.std()).astype(np.float32), lesion


def test_a_faint_liver_lesion_in_noise_gets_a_candidate_from_the_organ_snr_stream() -> None:
    """The clipped organ stream ranks the noise's own small blobs above the lesion; the
    organ_snr stream, each scale's response over its spread inside the organ, puts the
    lesion among its three strongest dark blobs, in 5 noise draws of 5."""
    for seed in range(5):
        hu, lesion = _liver_in_fat(seed)
        clipped = find_candidates(hu, bright_keep=1, dark_keep=1, organ_keep=3)
        assert not lesion[tuple(clipped.points[clipped.family == 3].T)].any()
        snr = find_candidates(hu, bright_keep=1, dark_keep=1, organ_snr_keep=3)
        dark = snr.points[snr.family == 6]
        assert len(dark) == 3 and lesion[tuple(dark.T)].any(), seed
        assert not snr.bright[snr.family == 6].any() and snr.bright[snr.family == 5].all()
