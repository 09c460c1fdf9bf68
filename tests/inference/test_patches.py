"""The candidate CNN's views: the default three as before, the smoothed organ view, widening."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from inference.architectures import CandidateNet
from inference.detect import score
from inference.patches import CHANNELS, LUNG, PATCH, SOFT, patches, windowed
from tests.training.test_candidates import _ball
from training.candidate_net import widened


def test_the_default_views_are_the_three_the_shipped_network_was_trained_on() -> None:
    """Bit for bit what ``patches`` cut before its views were named: lung and soft-tissue
    window at the grid's voxel size and the lung window at twice it."""
    rng = np.random.default_rng(1)
    hu = rng.normal(-300, 400, (40, 50, 44)).astype(np.float32)
    points = np.array([[20, 25, 22], [3, 47, 1], [39, 0, 43]], np.int64)
    coarse = ndimage.zoom(hu, 0.5, order=1)
    c = PATCH // 2
    x = patches(hu, points)
    for i, (k, j, m) in enumerate(points):
        fine = np.full((PATCH,) * 3, -1000.0, np.float32)
        at = (k, j, m)
        sl = [
            slice(max(0, p - c), min(n, p - c + PATCH)) for p, n in zip(at, hu.shape, strict=True)
        ]
        into = tuple(
            slice(s.start - (p - c), s.stop - (p - c)) for s, p in zip(sl, at, strict=True)
        )
        fine[into] = hu[tuple(sl)]
        assert np.array_equal(x[i, 0], windowed(fine, LUNG).astype(np.float16))
        assert np.array_equal(x[i, 1], windowed(fine, SOFT).astype(np.float16))
        half = np.array([k, j, m]) // 2
        assert x[i, 2, c, c, c] == np.float16(windowed(coarse[tuple(half)], LUNG))


def test_a_faint_liver_lesion_stands_out_of_the_noise_only_in_the_smoothed_organ_view() -> None:
    """A 10 mm lesion 20 HU under its liver, with 20 HU of noise: in the soft-tissue view
    its mean is about one voxel's noise under the liver around it; in the smoothed organ
    view several."""
    shape = (48, 48, 48)
    lesion = _ball(shape, (24, 24, 24), 4.0)  # 1.25 mm voxels: 10 mm across
    hu = np.where(lesion, 40.0, 60.0) + np.random.default_rng(2).normal(0, 20, shape)
    x = patches(hu.astype(np.float32), np.array([[24, 24, 24]]), ("soft_tissue", "organ_smooth"))
    inside = _ball((PATCH,) * 3, (PATCH // 2,) * 3, 3.0)
    ring = _ball((PATCH,) * 3, (PATCH // 2,) * 3, 10.0) & ~_ball(
        (PATCH,) * 3, (PATCH // 2,) * 3, 6.0
    )
    for view, least, most in ((0, 0.5, 1.5), (1, 3.0, np.inf)):
        v = x[0, view].astype(np.float32)
        contrast = (v[ring].mean() - v[inside].mean()) / v[ring].std()
        assert least <= contrast < most, (view, contrast)


def test_widening_keeps_the_scores_and_the_new_view_starts_at_zero() -> None:
    torch.manual_seed(0)
    net = CandidateNet().eval()
    rng = np.random.default_rng(3)
    three = rng.random((5, 3, PATCH, PATCH, PATCH)).astype(np.float16)
    extra = rng.random((5, 1, PATCH, PATCH, PATCH)).astype(np.float16)
    have = ("lung", "soft_tissue", "lung_coarse")
    wide = widened(net, have, ("lung", "organ_smooth", "soft_tissue", "lung_coarse"))
    four = np.concatenate([three[:, :1], extra, three[:, 1:]], axis=1)
    assert np.allclose(score(wide, four), score(net, three), atol=1e-6)
    with pytest.raises(ValueError, match=r"lung_coarse.*would be dropped"):
        widened(net, have, ("lung", "soft_tissue"))


def test_every_view_is_a_window_of_zero_to_one() -> None:
    hu = np.random.default_rng(4).normal(0, 500, (30, 30, 30)).astype(np.float32)
    x = patches(hu, np.array([[15, 15, 15]]), tuple(CHANNELS))
    assert x.shape == (1, len(CHANNELS), PATCH, PATCH, PATCH)
    assert x.min() >= 0.0 and x.max() <= 1.0
