"""Patch training for lesion segmentation (training.patch_seg) on small CPU cases."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from inference.architectures import build
from training.anatomy import indexed_scan
from training.patch_seg import (
    PatchSchedule,
    SegScan,
    _loss,
    _mine,
    _Sampler,
    grid_scan,
    predict_grid,
    train_patches,
)

CPU = torch.device("cpu")


def _phantom(
    centres: list[tuple[int, int, int]], radii: list[float]
) -> tuple[np.ndarray, np.ndarray]:
    """A body of soft tissue in air with bright spherical lesions (HU, mask)."""
    z, y, x = np.mgrid[:20, :48, :48]
    hu = np.full((20, 48, 48), -1000.0, np.float32)
    hu[:, 4:44, 4:44] = 40.0
    mask = np.zeros(hu.shape, bool)
    for (cz, cy, cx), r in zip(centres, radii, strict=True):
        ball = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r**2
        hu[ball], mask[ball] = 200.0, True
    return hu, mask


def _grid(
    hu: np.ndarray, mask: np.ndarray, *, patch: tuple[int, int, int] = (8, 16, 16), seed: int = 0
) -> SegScan:
    """A phantom on its own 1 mm grid, window [-1000, 400] HU."""
    return grid_scan(
        hu,
        mask,
        (1.0, 1.0, 1.0),
        window=(-1000, 400),
        target=(1, 1, 1),
        patch=patch,
        device=CPU,
        seed=seed,
    )


def test_grid_scan_resamples_as_the_worker_does() -> None:
    hu, mask = _phantom([(10, 24, 24)], [5])
    spacing, target, window = (2.0, 0.8, 0.8), (1.5, 1.0, 1.0), (-1000.0, 400.0)
    scan = grid_scan(
        hu, mask, spacing, window=window, target=target, patch=(8, 16, 16), device=CPU, seed=0
    )
    # inference.execute.segment: window to [0, 1], then trilinear to round(n * s / t).
    x = torch.from_numpy(hu).clamp(*window).sub(window[0]).div(window[1] - window[0])
    expected = F.interpolate(x[None, None], size=(27, 38, 38), mode="trilinear")[0, 0]
    assert tuple(scan.image.shape) == (27, 38, 38)
    assert torch.allclose(scan.image.float(), expected, atol=1e-3)
    assert scan.mask.sum() > 0 and len(scan.lesions) == 1
    assert all(scan.mask[tuple(p)] == 1 for p in scan.lesions[0].tolist())
    assert all(scan.image[tuple(p)] >= 0.05 for p in scan.body.tolist())


def test_grid_scan_pads_a_small_scan_to_one_patch() -> None:
    hu, mask = _phantom([], [])
    scan = _grid(hu, mask, patch=(32, 64, 64), seed=0)
    assert tuple(scan.image.shape) == (32, 64, 64) and scan.lesions == ()


def test_each_lesion_is_drawn_equally_often_whatever_its_size() -> None:
    hu, mask = _phantom([(10, 12, 12), (10, 34, 34)], [1.5, 7])
    scan = _grid(hu, mask, patch=(8, 16, 16), seed=0)
    small = int(mask[:, :24, :24].sum())
    big = int(mask[:, 24:, 24:].sum())
    assert big > 20 * small  # ~1400 against ~30 voxels
    sampler = _Sampler([scan], PatchSchedule(steps=1, batch=400, lr=1e-3, lesion_share=1.0), 3)
    near_small = sum(1 for _i, c in sampler.centres() if int(c[1]) < 24)
    assert 150 <= near_small <= 250  # half the draws, as for the 50 times larger lesion


def _digest(module: nn.Module) -> str:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def _train(seed: int, dice: str = "batch") -> str:
    hu, mask = _phantom([(10, 20, 20)], [4])
    scans = [_grid(hu, mask, patch=(8, 16, 16), seed=i) for i in range(2)]
    torch.manual_seed(seed)
    module = build("unet3d", {"base": 2, "depth": 2, "attention": True})
    schedule = PatchSchedule(
        steps=6, batch=2, lr=1e-2, mine_from=3, mine_every=2, mine_scans=2, warmup=2, dice=dice
    )
    train_patches(module, scans, schedule, (8, 16, 16), seed=seed, log=lambda s: None)
    return _digest(module)


def test_training_is_reproducible_bit_for_bit_and_follows_the_seed() -> None:
    assert _train(5) == _train(5)
    assert _train(5) != _train(6)
    assert _train(5, dice="lesion") == _train(5, dice="lesion") != _train(5)


def _two_patches() -> Tensor:
    """Patch 0 holds a 5 mm-like nodule (7 voxels), patch 1 a mass (about 4,000 voxels)."""
    target = torch.zeros(2, 1, 16, 32, 32)
    target[0, 0, 8, 16, 16] = 1
    for d in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
        target[0, 0, 8 + d[0], 16 + d[1], 16 + d[2]] = 1
    z, y, x = torch.meshgrid(torch.arange(16), torch.arange(32), torch.arange(32), indexing="ij")
    target[1, 0] = (((z - 8) ** 2 + (y - 16) ** 2 + (x - 16) ** 2) <= 10**2).float()
    return target


def test_lesion_dice_makes_a_missed_small_nodule_cost_what_a_missed_mass_costs() -> None:
    target = _two_patches()
    sure = torch.where(target > 0, 20.0, -20.0)  # finds both
    missed_nodule, missed_mass = sure.clone(), sure.clone()
    missed_nodule[0] = -20.0
    missed_mass[1] = -20.0

    def cost(logits: Tensor, dice: str) -> float:
        return float(_loss(logits, target, dice) - _loss(sure, target, dice))

    # Over the whole batch the nodule is 7 voxels among 4,000: missing it costs next to nothing.
    assert cost(missed_nodule, "batch") < 0.01 < 0.5 < cost(missed_mass, "batch")
    # Per patch it costs its share of the per-patch half of the Dice term: 0.5 * 0.875 / 2
    # (a patch's Dice of 0 is 0.875 with the +1 smoothing over 7 voxels), plus its BCE.
    assert 0.21 < cost(missed_nodule, "lesion") < 0.23
    assert cost(missed_mass, "lesion") > 0.5


def test_an_unknown_dice_mode_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"PatchSchedule.dice must be 'batch' or 'lesion'"):
        PatchSchedule(steps=1, batch=1, lr=1e-3, dice="per-lesion")


class _Bright(nn.Module):
    """Calls every voxel brighter than soft tissue a lesion."""

    def forward(self, x: Tensor) -> Tensor:
        return (x - 0.78) * 200


def test_mining_keeps_false_positives_away_from_lesions() -> None:
    hu, mask = _phantom([(10, 12, 12)], [3])
    hu[8:12, 30:36, 30:36] = 300.0  # bright, not a lesion: a vessel seen end-on
    scan = _grid(hu, mask, patch=(8, 16, 16), seed=0)
    prob = predict_grid(_Bright(), scan.image, (8, 16, 16))
    assert prob[10, 12, 12] > 0.9 and prob[10, 33, 33] > 0.9 and prob[10, 24, 24] < 0.1
    found = _mine(_Bright(), [scan], [0], (8, 16, 16), torch.Generator().manual_seed(0))
    points = found[0]
    assert len(points) > 0
    assert all(30 <= int(p[1]) < 36 and 30 <= int(p[2]) < 36 for p in points)


def test_indexed_scans_do_not_depend_on_order() -> None:
    a = indexed_scan(11, 3)
    indexed_scan(11, 2)
    b = indexed_scan(11, 3)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.mask, b.mask)
    c = indexed_scan(11, 4)
    assert c.hu.shape != a.hu.shape or not np.array_equal(c.hu, a.hu)
