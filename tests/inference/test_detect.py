"""The detection task: a candidate detector package run by the worker's pipeline.

The package's network is trained here (60 small steps), on patches of balls (lesions)
against tubes (vessels, some ending at the scan's edge) and plain lung; the tests check
what the detection stage makes of it on a whole volume: where the detections are, their
outlines on the volume's own grid, the lesions the pipeline reports.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from core.config import SeriesRule
from inference.architectures import CandidateNet
from inference.candidates import Candidates, find_candidates, lesion_outline, outline, regrid
from inference.detect import detect, score
from inference.errors import ModelPackageError
from inference.package import LoadedModel
from inference.patches import DEFAULT_CHANNELS, LUNG, PATCH, SOFT, patches, windowed
from inference.pipeline import run_pipeline
from inference.spec import read_spec
from inference.trial import load_and_try
from tests.dicomgen import ct_series_info
from tests.inference.test_models import _volume
from tests.packages import make_package
from tests.phantoms import write_series
from tests.training.test_candidates import _ball
from training.candidate_net import CandidateSchedule, train_candidates, widened
from training.metrics import dice

SPACING = (2.5, 0.8, 0.8)
NODULE = (50.0, 40.0, 40.0)  # mm (z, y, x)
NODULE_R = 5.0
VESSEL = (40.0, 90.0)  # mm (y, x) of a tube along z
LESION = ["52988006", "SCT", "Lesion"]


def _package(
    folder: Path, state: dict[str, torch.Tensor] | None = None, channels: int = 3, **inp: object
) -> Path:
    return make_package(
        folder,
        name="toy-detect",
        task="detection",
        architecture="candidate_net",
        parameters={"channels": channels, "base": 16},
        state=state,
        input_spec={"modality": ["CT"], "candidates": [20, 0, 0], **inp},
        labels=[{"name": "lesion", "code": LESION, "threshold": 0.5}],
    )


def _toy(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """Patches as ``inference.patches.patches`` cuts them (fine and coarse view) of a ball
    ("ball"), a tube along z ("tube", some ending at the scan's edge) or lung ("lung")."""
    out = np.empty((n, 3, PATCH, PATCH, PATCH), np.float16)
    z, y, x = np.indices((2 * PATCH,) * 3)
    c, q = PATCH, PATCH // 2
    for i in range(n):
        r = rng.uniform(2, 5)
        oy, ox = rng.integers(-1, 2, 2)
        if kind == "ball":
            shape = (z - c) ** 2 + (y - c - oy) ** 2 + (x - c - ox) ** 2 <= r * r
        elif kind == "tube":
            shape = (y - c - oy) ** 2 + (x - c - ox) ** 2 <= r * r
        else:
            shape = np.zeros(z.shape, bool)
        hu = np.where(shape, 40.0, -850.0) + rng.normal(0, rng.uniform(5, 30), shape.shape)
        if kind == "tube" and rng.random() < 0.3:
            hu[z < c - 2] = -1000.0  # beyond the scan
        fine = hu[q : q + PATCH, q : q + PATCH, q : q + PATCH]
        out[i, 0] = windowed(fine, LUNG)
        out[i, 1] = windowed(fine, SOFT)
        out[i, 2] = windowed(ndimage.zoom(hu, 0.5, order=1), LUNG)
    return out


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    rng = np.random.default_rng(3)
    torch.set_num_threads(1)
    balls = _toy(rng, 48, "ball")
    others = np.concatenate([_toy(rng, 48, "tube"), _toy(rng, 16, "lung")])
    schedule = CandidateSchedule(steps=60, batch=16, lr=3e-3, warmup=5)
    net = train_candidates(balls, others, schedule, seed=5, log_every=0)
    folder = _package(tmp_path_factory.mktemp("detector"), net.state_dict())
    return load_and_try(folder, torch.device("cpu"))  # the trial run included


def _lung() -> tuple[np.ndarray, np.ndarray]:
    """Lung (-850 HU) on an anisotropic grid, a 10 mm nodule and a 5 mm vessel along z."""
    shape = (40, 128, 128)
    z, y, x = np.indices(shape).astype(np.float64) * np.asarray(SPACING)[:, None, None, None]
    nodule = (z - NODULE[0]) ** 2 + (y - NODULE[1]) ** 2 + (x - NODULE[2]) ** 2 <= NODULE_R**2
    vessel = (y - VESSEL[0]) ** 2 + (x - VESSEL[1]) ** 2 <= 2.5**2
    hu = np.where(nodule | vessel, 40.0, -850.0)
    hu = hu + np.random.default_rng(0).normal(0, 10, shape)
    return hu.astype(np.float32), nodule


def test_the_nodule_is_detected_and_outlined_on_the_volumes_grid_the_vessel_is_not(
    detector: LoadedModel,
) -> None:
    hu, nodule = _lung()
    found = detect(detector, _volume(hu, SPACING))
    assert found.candidates > 1  # the vessel's blobs were candidates too
    (only,) = found.detections
    centre = np.asarray(only.centre_kji) * SPACING
    assert np.abs(centre - NODULE).max() <= 2.5
    assert found.probability.shape == (1, *hu.shape)
    outlined = found.probability[0] >= 0.5
    assert dice(outlined, nodule) >= 0.7, dice(outlined, nodule)
    _, y, x = np.nonzero(outlined)
    assert (np.hypot(y * SPACING[1] - VESSEL[0], x * SPACING[2] - VESSEL[1]) > 10).all()


def test_the_pipeline_reports_the_nodule_as_a_lesion(tmp_path: Path, detector: LoadedModel) -> None:
    hu, nodule = _lung()
    files = write_series(tmp_path / "ct", hu.astype(np.float64), SPACING)
    series = ct_series_info("2.25.20", files)
    run = run_pipeline(
        [series], SeriesRule(modalities=("CT",)), [detector], batch_size=2, amp=False
    )
    (result,) = run.results
    (lesion,) = result.outcome.lesions
    truth_mm3 = nodule.sum() * float(np.prod(SPACING))
    assert lesion.volume_mm3 == pytest.approx(truth_mm3, rel=0.3)
    assert result.lesion_labels is not None and result.lesion_labels.shape == hu.shape
    assert result.outcome.task == "detection"


@pytest.mark.parametrize(
    ("inp", "key", "rule"),
    [
        ({"candidates": [0, 0, 5]}, "candidates", "bright + dark >= 1"),
        ({"candidates": [10.5, 2, 0]}, "candidates", "whole numbers"),
        ({"candidates": [10, 2, 0], "window": [-1000.0, 400.0]}, "window", "only for an image"),
        ({"candidates": [10, 2, 0], "suppress_mm": 0.1}, "suppress_mm", ""),
        ({"candidates": [10, 2, 0], "ground_glass": -1}, "ground_glass", ""),
        ({"candidates": [10, 2, 0], "organ_snr": 2.5}, "organ_snr", ""),
        ({"candidates": [10, 2, 0], "turns": 5}, "turns", "at most 4"),
        (
            {"candidates": [10, 2, 0], "patch_channels": ["lung", "liver", "lung_coarse"]},
            "patch_channels",
            "must name each view once, of lung, soft_tissue, lung_coarse, organ_smooth",
        ),
        (
            {"candidates": [10, 2, 0], "patch_channels": ["lung", "lung", "lung_coarse"]},
            "patch_channels",
            "must name each view once",
        ),
        (
            {"candidates": [10, 2, 0], "patch_channels": ["lung", "soft_tissue"]},
            "patch_channels",
            "2 view(s), but [model.parameters] channels = 3",
        ),
    ],
)
def test_a_detection_packages_input_is_checked(
    tmp_path: Path, inp: dict[str, object], key: str, rule: str
) -> None:
    folder = _package(tmp_path / "p")
    text = (folder / "model.toml").read_text().replace("candidates = [20, 0, 0]\n", "")
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in inp.items())
    (folder / "model.toml").write_text(text.replace("[input]\n", "[input]\n" + lines))
    with pytest.raises(ModelPackageError, match=rf"\[input\] {key}.*{re.escape(rule)}"):
        read_spec(folder)


def test_a_detector_that_sees_another_view_is_run_with_it(
    tmp_path: Path, detector: LoadedModel
) -> None:
    """``[input] patch_channels``: the worker cuts the views the package names, in its
    order. The fixture's detector widened by the smoothed organ view (zero weights there)
    passes its trial run and finds what it found before, as the package says."""
    views = ("lung", "organ_smooth", "soft_tissue", "lung_coarse")
    assert isinstance(detector.module, CandidateNet)
    wide = widened(detector.module, DEFAULT_CHANNELS, views)
    folder = _package(tmp_path / "p", wide.state_dict(), patch_channels=list(views), channels=4)
    loaded = load_and_try(folder, torch.device("cpu"))
    assert loaded.spec.input.patch_channels == views
    hu, _ = _lung()
    before = detect(detector, _volume(hu, SPACING))
    after = detect(loaded, _volume(hu, SPACING))
    assert [d.centre_kji for d in after.detections] == [d.centre_kji for d in before.detections]
    assert np.allclose([d.score for d in after.detections], [d.score for d in before.detections])


def test_a_detector_that_asks_for_turns_is_scored_with_them(
    tmp_path: Path, detector: LoadedModel
) -> None:
    """``[input] turns = 4``: the worker scores each candidate as ``score(turns=4)`` does,
    not as cut."""
    folder = _package(tmp_path / "p", detector.module.state_dict(), turns=4)
    loaded = load_and_try(folder, torch.device("cpu"))
    assert loaded.spec.input.turns == 4 and detector.spec.input.turns == 1
    hu, _ = _lung()
    volume = _volume(hu, SPACING)
    iso = regrid(volume.array, volume.spacing)
    x = patches(iso, find_candidates(iso, bright_keep=20, dark_keep=0).points)
    turned, as_cut = score(detector.module, x, turns=4), score(detector.module, x)
    strongest = detect(loaded, volume).detections[0].score
    assert strongest == pytest.approx(float(turned.max()), abs=1e-6)
    assert strongest != pytest.approx(float(as_cut.max()), abs=1e-4)
    assert detect(detector, volume).detections[0].score == pytest.approx(float(as_cut.max()))


def test_detection_needs_its_candidates_and_one_label(tmp_path: Path) -> None:
    folder = _package(tmp_path / "p")
    toml = folder / "model.toml"
    good = toml.read_text()
    toml.write_text(good.replace("candidates = [20, 0, 0]\n", ""))
    with pytest.raises(ModelPackageError, match=r"\[input\] candidates: is required"):
        read_spec(folder)
    toml.write_text(good + '[[output.labels]]\nname = "cyst"\ncode = ["1", "99X", "cyst"]\n')
    with pytest.raises(ModelPackageError, match="exactly one label"):
        read_spec(folder)
    onnx = good.replace('architecture = "candidate_net"', 'format = "onnx"')
    toml.write_text(onnx.split("[model.parameters]")[0] + "[input]" + onnx.split("[input]")[1])
    with pytest.raises(ModelPackageError, match=r"\[model\] format: a detection model is"):
        read_spec(folder)
    seg = good.replace('task = "detection"', 'task = "segmentation"')
    toml.write_text(seg)
    with pytest.raises(ModelPackageError, match=r"candidates: only for task detection"):
        read_spec(folder)
    toml.write_text(good.replace("[input]\n", "[input]\nground_glass = 100\n"))
    assert read_spec(folder).input.ground_glass == 100
    toml.write_text(seg.replace("candidates = [20, 0, 0]\n", "ground_glass = 100\n"))
    with pytest.raises(ModelPackageError, match=r"ground_glass: only for task detection"):
        read_spec(folder)
    toml.write_text(good.replace("[input]\n", "[input]\norgan_snr = 300\n"))
    assert read_spec(folder).input.organ_snr == 300
    toml.write_text(seg.replace("candidates = [20, 0, 0]\n", "organ_snr = 300\n"))
    with pytest.raises(ModelPackageError, match=r"organ_snr: only for task detection"):
        read_spec(folder)


def _outlined(hu: np.ndarray, *, bright: bool) -> np.ndarray:
    """The outline of the strongest candidate of its kind, on the whole grid."""
    found = find_candidates(hu, bright_keep=3 if bright else 0, dark_keep=0 if bright else 3)
    return _drawn(
        hu.shape, *outline(hu, found.points[0], float(found.diameter_mm[0]), bright=bright)
    )


def test_an_outline_keeps_to_its_blob_where_a_vessel_touches_it() -> None:
    shape = (48, 48, 48)
    ball = _ball(shape, (24, 24, 24), 6.0)
    _, y, x = np.indices(shape)
    tube = (y - 24) ** 2 + (x - 31) ** 2 <= 2.0**2  # touches the ball's side, runs along z
    hu = np.where(ball | tube, 40.0, -850.0).astype(np.float32)
    hu += np.random.default_rng(1).normal(0, 15, shape).astype(np.float32)
    drawn = _outlined(hu, bright=True)
    assert dice(drawn, ball) >= 0.8
    z = np.nonzero(drawn)[0]
    assert z.min() >= 24 - 10 and z.max() <= 24 + 10  # not along the vessel


def test_a_dark_lesion_in_the_liver_is_outlined() -> None:
    shape = (40, 40, 40)
    lesion = _ball(shape, (20, 20, 20), 5.0)
    hu = np.where(lesion, 20.0, 60.0).astype(np.float32)
    hu += np.random.default_rng(2).normal(0, 5, shape).astype(np.float32)
    assert dice(_outlined(hu, bright=False), lesion) >= 0.8


def test_a_part_solid_nodule_is_outlined_with_its_ground_glass() -> None:
    """A solid core (40 HU, radius 3 voxels) in ground glass (-450 HU, radius 8) in lung,
    found at the nodule's scale: halfway between the core and the lung (-405 HU) would
    leave the ground glass out. (Where the blob filter answers at the core's scale instead,
    the outline stays within 1.5 of its radii and covers the core: docs/lesion-seg-anatomy.md.)"""
    shape = (48, 48, 48)
    nodule = _ball(shape, (24, 24, 24), 8.0)
    hu = np.where(nodule, -450.0, -850.0).astype(np.float32)
    hu[_ball(shape, (24, 24, 24), 3.0)] = 40.0
    hu += np.random.default_rng(3).normal(0, 15, shape).astype(np.float32)
    drawn = _outlined(hu, bright=True)
    assert dice(drawn, nodule) >= 0.9, dice(drawn, nodule)


def _candidates(*blobs: tuple[tuple[int, int, int], float, int]) -> Candidates:
    """Candidates by hand: (point, diameter mm, family) each (family 0 bright, 1 dark)."""
    return Candidates(
        points=np.array([p for p, _, _ in blobs], np.int64),
        response=np.ones(len(blobs), np.float32),
        family=np.array([f for _, _, f in blobs], np.uint8),
        diameter_mm=np.array([d for _, d, _ in blobs], np.float32),
    )


def _drawn(shape: tuple[int, ...], where: tuple[slice, ...], mask: np.ndarray) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[where] = mask
    return out


def test_a_small_blob_inside_a_large_lesion_is_outlined_at_the_lesions_scale() -> None:
    """A 20 mm dark liver lesion whose best candidate is a 5 mm blob of its noise, off its
    centre: the blob's own outline keeps a sliver; ``lesion_outline`` takes the larger
    candidate of the same sign that holds it (not the even larger bright one there), and
    the outline covers the lesion."""
    shape = (48, 48, 48)
    lesion = _ball(shape, (24, 24, 24), 8.0)  # 1.25 mm voxels: 20 mm across
    hu = np.where(lesion, 20.0, 60.0).astype(np.float32)
    hu += np.random.default_rng(4).normal(0, 5, shape).astype(np.float32)
    found = _candidates(((24, 27, 23), 5.2, 1), ((24, 24, 24), 31.2, 0), ((24, 24, 24), 22.5, 1))
    small = outline(hu, found.points[0], 5.2, bright=False)
    assert dice(_drawn(shape, *small), lesion) < 0.3
    assert dice(_drawn(shape, *lesion_outline(hu, found, 0)), lesion) >= 0.85


def test_a_nodule_beside_a_larger_structure_keeps_its_own_outline() -> None:
    """A 6 mm nodule 2 mm of lung away from a larger ball whose candidate reaches it and
    whose outline would take it in: the nodule's own outline closes within its bound, so
    it is the outline, without the ball."""
    shape = (48, 48, 64)
    ball = _ball(shape, (24, 24, 16), 7.0)
    nodule = _ball(shape, (24, 24, 27), 2.5)
    hu = np.where(ball | nodule, 40.0, -850.0).astype(np.float32)
    hu += np.random.default_rng(5).normal(0, 15, shape).astype(np.float32)
    found = _candidates(((24, 24, 27), 5.2, 0), ((24, 24, 16), 31.2, 0))
    drawn = _drawn(shape, *lesion_outline(hu, found, 0))
    assert dice(drawn, nodule) >= 0.7, dice(drawn, nodule)
    assert not (drawn & ball).any()


def test_a_larger_outline_through_a_gentle_slope_loses_to_the_lesions_own_edge() -> None:
    """A 25 mm dark lesion in tissue that brightens slowly away from it (5 HU a voxel): its
    own candidate's outline is the lesion but touches its bound, so the larger candidate
    there is outlined too; with that one's brighter surroundings its threshold lies on the
    slope and its outline takes a rim of tissue in. The steeper border wins: the lesion's."""
    shape = (56, 56, 56)
    zz, yy, xx = np.ogrid[:56, :56, :56]
    dist = np.sqrt((zz - 28) ** 2 + (yy - 28) ** 2 + (xx - 28) ** 2)
    lesion = dist <= 10.0
    hu = np.where(lesion, 20.0, np.clip(40.0 + 5.0 * (dist - 10.0), 40.0, 100.0))
    hu = (hu + np.random.default_rng(6).normal(0, 3, shape)).astype(np.float32)
    found = _candidates(((28, 28, 28), 17.0, 1), ((28, 28, 28), 31.2, 1))
    larger = _drawn(shape, *outline(hu, found.points[1], 31.2, bright=False))
    assert dice(larger, lesion) < 0.7  # the rim of tissue the larger scale takes
    assert dice(_drawn(shape, *lesion_outline(hu, found, 0)), lesion) >= 0.9
