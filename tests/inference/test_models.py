"""Packages, architectures, execution and post-processing on known inputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from dicomio.errors import MissingData, UnsupportedInput
from dicomio.records import Volume, Waveform
from inference.architectures import ARCHITECTURES, build
from inference.errors import ModelPackageError
from inference.execute import ATTENTION_LEVELS, classify, pick_device, predict_sequence, segment
from inference.package import load_package
from inference.postprocess import findings, label_lesions, lesions
from inference.spec import LabelSpec, read_spec
from tests.packages import make_package, threshold_segmenter

CPU = torch.device("cpu")


def _volume(array: np.ndarray, spacing=(2.0, 1.0, 0.5)) -> Volume:
    return Volume(
        array=array.astype(np.float32),
        spacing=spacing,
        origin=(10.0, 20.0, 30.0),
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        normal=(0.0, 0.0, 1.0),
        study_instance_uid="1.2",
        series_instance_uid="1.2.3",
        frame_of_reference_uid="1.2.4",
        sop_instance_uids=tuple(f"1.2.3.{k}" for k in range(array.shape[0])),
        modality="CT",
    )


def test_threshold_package_segments_exactly_its_threshold(tmp_path: Path) -> None:
    model = load_package(threshold_segmenter(tmp_path / "pkg", threshold_hu=120), CPU)
    rng = np.random.default_rng(0)
    hu = rng.uniform(-500, 800, size=(20, 40, 50)).astype(np.float32)
    hu[np.abs(hu - 120) < 2] = 0  # keep clear of the decision boundary
    prob = segment(model, _volume(hu), batch_size=4, amp=False)
    assert prob.shape == (1, 20, 40, 50)
    assert np.array_equal(prob[0] >= 0.5, hu >= 120)


def test_uniform_patches_take_one_pass_and_give_the_same_map(tmp_path: Path) -> None:
    """Patches that are one value throughout (air below the window) go through the
    network once per value; the map equals running every patch."""
    torch.manual_seed(1)
    package = make_package(
        tmp_path / "unet",
        name="unet",
        task="segmentation",
        architecture="unet3d",
        parameters={"base": 4, "depth": 2},
        input_spec={"modality": "CT", "window": [-100.0, 300.0], "patch": [8, 16, 16]},
        labels=[{"name": "lesion", "code": ["52988006", "SCT", "Lesion"]}],
    )
    model = load_package(package, CPU)
    hu = np.full((16, 48, 64), -1000.0, dtype=np.float32)  # air, clamped to one value
    hu[2:6, 18:30, 20:34] = np.random.default_rng(2).uniform(-200, 400, (4, 12, 14))
    hu[:, 40:, 50:] = 800.0  # bone above the window: another uniform value
    seen: list[int] = []
    hook = model.module.register_forward_hook(lambda _m, args, _o: seen.append(len(args[0])))
    fast = segment(model, _volume(hu), batch_size=4, amp=False)
    passes_fast = sum(seen)
    seen.clear()
    every = segment(model, _volume(hu), batch_size=4, amp=False, reuse_uniform=False)
    hook.remove()
    assert float(np.abs(fast - every).max()) < 1e-5
    assert sum(seen) == 3 * 4 * 5  # every patch: 3 x 4 x 5 corners
    assert passes_fast < sum(seen) // 2, passes_fast  # most patches are air or bone here


def test_hash_mismatch_names_the_file_and_field(tmp_path: Path) -> None:
    folder = threshold_segmenter(tmp_path / "pkg")
    with open(folder / "weights.pt", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(
        ModelPackageError, match=r"weights.pt: SHA-256 .* does not match \[model\] sha256"
    ):
        load_package(folder, CPU)


def test_sphere_measurements_in_patient_space() -> None:
    spacing = (2.0, 1.0, 0.5)
    shape = (30, 60, 120)
    z, y, x = (np.arange(n) * s for n, s in zip(shape, spacing, strict=True))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    centre, radius = (30.0, 30.0, 30.0), 10.0
    mask = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2
    prob = mask.astype(np.float32)
    prob[2:4, 2:4, 2:4] = 1.0  # a second, tiny component
    found = lesions(prob, _volume(prob), LabelSpec(name="lesion", code=("1", "SCT", "x")))
    assert len(found) == 2
    big = found[0]
    assert big.volume_mm3 == pytest.approx(4 / 3 * np.pi * radius**3, rel=0.05)
    # Centroid: voxel index (15, 30, 60) -> origin + (60*0.5, 30*1.0, 15*2.0) along x, y, z.
    assert big.centroid_mm == pytest.approx((10.0 + 30.0, 20.0 + 30.0, 30.0 + 30.0), abs=0.05)
    assert big.longest_diameter_mm == pytest.approx(2 * radius, rel=0.08)
    assert found[1].voxel_count == 8


def test_lesion_volume_floor_drops_specks_from_list_and_map() -> None:
    prob = np.zeros((10, 20, 20), dtype=np.float32)
    prob[1:5, 1:5, 1:5] = 1.0  # 64 voxels x 1 mm3 = 64 mm3
    prob[7:9, 10:12, 10:12] = 1.0  # 8 voxels = 8 mm3
    volume = _volume(prob, spacing=(1.0, 1.0, 1.0))
    label = LabelSpec(name="lesion", code=("1", "SCT", "x"), min_volume_mm3=8.5)
    found, label_map = label_lesions(prob, volume, label)
    assert [f.voxel_count for f in found] == [64]
    assert set(np.unique(label_map)) == {0, 1} and int((label_map == 1).sum()) == 64
    at_floor = LabelSpec(name="lesion", code=("1", "SCT", "x"), min_volume_mm3=8.0)
    assert len(label_lesions(prob, volume, at_floor)[0]) == 2  # 8 mm3 is not below 8


def test_label_map_and_boxes_match_labelling_the_whole_volume() -> None:
    """Labelling only the box around the mask gives what labelling everything gives."""
    rng = np.random.default_rng(3)
    prob = np.zeros((24, 40, 50), dtype=np.float32)
    prob[5:15, 8:30, 12:44] = rng.random((10, 22, 32), dtype=np.float32)
    volume = _volume(prob, spacing=(1.0, 1.0, 1.0))
    label = LabelSpec(name="lesion", code=("1", "SCT", "x"), threshold=0.8)
    found, label_map = label_lesions(prob, volume, label)
    full, count = ndimage.label(prob >= 0.8, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(full.ravel())[1:]
    assert sorted((f.voxel_count for f in found), reverse=True) == sorted(sizes, reverse=True)
    assert int((label_map > 0).sum()) == int(sizes.sum()) and int(label_map.max()) == count
    for n, lesion in enumerate(found, start=1):  # map value n = n-th lesion, bbox in full grid
        (k0, j0, i0), (k1, j1, i1) = lesion.bbox_kji
        where = np.argwhere(label_map == n)
        assert tuple(where.min(axis=0)) == (k0, j0, i0)
        assert tuple(where.max(axis=0)) == (k1, j1, i1)
        assert lesion.mean_probability == pytest.approx(float(prob[label_map == n].mean()))
    empty_found, empty_map = label_lesions(np.zeros_like(prob), volume, label)
    assert empty_found == () and empty_map.shape == prob.shape and not empty_map.any()


def test_more_components_than_16_bits_hold() -> None:
    prob = np.zeros((2 * 42, 2 * 42, 2 * 42), dtype=np.float32)
    prob[::2, ::2, ::2] = 1.0  # 74,088 isolated voxels: labels past 65,535 need 32 bits
    prob[-5:, -5:, -5:] = 0.0
    prob[-3:, -3:, -3:] = 1.0  # and one 27-voxel lesion apart from them, the last one found
    volume = _volume(prob, spacing=(1.0, 1.0, 1.0))
    label = LabelSpec(name="lesion", code=("1", "SCT", "x"))
    found, label_map = label_lesions(prob, volume, label, min_voxels=2)
    assert [f.voxel_count for f in found] == [27]
    assert int((label_map == 1).sum()) == 27 and int(label_map.max()) == 1


def test_findings_apply_thresholds() -> None:
    labels = [
        LabelSpec(name="a", code=("1", "SCT", "A"), threshold=0.3),
        LabelSpec(name="b", code=("2", "SCT", "B"), threshold=0.8),
    ]
    result = findings([0.35, 0.65], labels)
    assert [(f.label, f.positive) for f in result] == [("a", True), ("b", False)]
    with pytest.raises(ValueError, match="2 probabilities for 3 labels"):
        findings([0.1, 0.2], [*labels, labels[0]])


def test_every_architecture_builds_and_runs() -> None:
    torch.manual_seed(0)
    x3 = torch.zeros(1, 1, 16, 16, 16)
    assert build("unet3d", {"attention": True, "depth": 2})(x3).shape == (1, 1, 16, 16, 16)
    logits, att = build("attention_cnn", {"num_classes": 3})(x3)
    assert logits.shape == (1, 3) and att.shape == (1, 1, 16, 16, 16)
    assert att.min() >= 0  # softmax weights over space, upsampled
    assert build("cnn_classifier", {})(x3)[0].shape == (1, 2)
    for cell in ("lstm", "gru"):
        out, _ = build("sequence_rnn", {"cell": cell, "num_classes": 4})(torch.zeros(2, 12, 512))
        assert out.shape == (2, 4)
    fused = build("fusion_head", {"image_features": 8, "sequence_features": 5})
    assert fused(torch.zeros(2, 8), torch.zeros(2, 3, 5)).shape == (2, 2)
    for cell in ("lstm", "gru"):
        priors = build("priors_fusion", {"cell": cell, "levels": 4})
        logits, none = priors(torch.zeros(2, 3, 1, 8, 8, 8), torch.tensor([[1.0, 0.5, 0.0]] * 2))
        assert logits.shape == (2, 3) and none is None
    assert set(ARCHITECTURES) >= {
        "unet3d",
        "attention_cnn",
        "sequence_rnn",
        "fusion_head",
        "priors_fusion",
    }
    with pytest.raises(KeyError, match="unknown architecture 'resnet9000'"):
        build("resnet9000", {})


def test_classifier_and_sequence_execution(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cls = load_package(
        make_package(
            tmp_path / "cls",
            name="att",
            task="classification",
            architecture="attention_cnn",
            parameters={"num_classes": 2, "depth": 2},
            input_spec={"size": [16, 16, 16]},
            labels=[
                {"name": "normal", "code": ["17621005", "SCT", "Normal"]},
                {"name": "abnormal", "code": ["263654008", "SCT", "Abnormal"]},
            ],
        ),
        CPU,
    )
    image = np.random.default_rng(1).normal(size=(10, 20, 30))
    probs, attention = classify(cls, _volume(image), amp=False)
    assert probs.shape == (2,) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert attention is not None and attention.shape == (10, 20, 30)
    assert attention.min() >= 0 and attention.max() == pytest.approx(1.0)
    # In steps of 1/ATTENTION_LEVELS (what makes the float map compress).
    levels = attention * ATTENTION_LEVELS
    assert np.array_equal(levels, np.rint(levels)) and len(np.unique(levels)) > 10
    ecg = load_package(
        make_package(
            tmp_path / "ecg",
            name="ecg",
            task="sequence",
            architecture="sequence_rnn",
            parameters={"in_channels": 2, "num_classes": 3, "hidden": 8},
            input_spec={"leads": ["II", "I"], "sampling_hz": 250.0, "samples": 1000},
            labels=[{"name": n, "code": [str(i), "SCT", n]} for i, n in enumerate("abc")],
        ),
        CPU,
    )
    w = Waveform(
        data=np.zeros((3, 5000), np.float32),
        sampling_hz=500.0,
        lead_names=("I", "II", "III"),
        units="mV",
        study_instance_uid="1",
        series_instance_uid="2",
        sop_instance_uid="3",
    )
    assert predict_sequence(ecg, w, amp=False).shape == (3,)
    missing = dataclasses.replace(w, lead_names=("I", "V1", "V2"))
    with pytest.raises(MissingData, match=r"lacks the lead\(s\) the model needs: II"):
        predict_sequence(ecg, missing, amp=False)


def test_device_auto_is_cpu_without_cuda() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            pick_device("cuda")


def test_priors_fusion_features_are_log_fractions_above_each_level() -> None:
    """Untrained, the soft histogram is a box filter and steep steps at its levels."""
    model = build("priors_fusion", {"levels": 2, "low": 0.3, "high": 0.7})
    half = torch.zeros(1, 1, 16, 16, 16)
    half[0, 0, :, :8] = 1.0  # half the volume bright; the box filter blurs only edges
    quarter = torch.zeros(1, 1, 16, 16, 16)
    quarter[0, 0, :, :4] = 1.0
    with torch.no_grad():
        fractions = model.features(half).exp()[0]
        step = model.features(half) - model.features(quarter)  # twice the bright volume
    # Above the low level: the bright half, give or take the blurred edge.
    assert abs(float(fractions[0]) - 0.5) < 0.05
    assert abs(float(step[0, 0]) - np.log(2)) < 0.1
    # Above the high level the blurred edges drop out: less volume, still a clear step.
    assert float(fractions[1]) < float(fractions[0]) and float(step[0, 1]) > 0.5


def test_whole_volume_input_keeps_millimetres_with_a_target_spacing() -> None:
    from inference.preprocess import days_between, prepare_volume
    from inference.spec import InputSpec

    volume = _volume(np.ones((4, 10, 10)), spacing=(2.0, 1.0, 1.0))
    spec = InputSpec(window=(0.0, 1.0), target_spacing=(2.0, 2.0, 2.0), size=(6, 4, 4))
    x = prepare_volume(volume, spec)
    # 4x10x10 at (2, 1, 1) mm -> 4x5x5 at 2 mm, then padded/cropped around the centre.
    assert x.shape == (1, 1, 6, 4, 4)
    assert float(x[0, 0, 0].sum()) == 0 and float(x[0, 0, 5].sum()) == 0  # padded slices
    assert torch.allclose(x[0, 0, 1:5], torch.ones(4, 4, 4))
    resized = prepare_volume(volume, InputSpec(window=(0.0, 1.0), size=(6, 4, 4)))
    assert torch.allclose(resized, torch.ones(1, 1, 6, 4, 4))  # no target spacing: resized
    assert days_between("20250101", "20250301") == 59
    with pytest.raises(UnsupportedInput, match="not YYYYMMDD"):
        days_between("2025-01-01", "20250301")


def test_progression_package_needs_max_priors(tmp_path: Path) -> None:
    args = {
        "name": "change",
        "task": "progression",
        "architecture": "priors_fusion",
        "parameters": {"levels": 2, "num_classes": 1},
        "labels": [{"name": "increase", "code": ["15454001", "SCT", "Increase in size"]}],
    }
    make_package(tmp_path / "no", input_spec={"size": [4, 4, 4]}, **args)
    with pytest.raises(
        ModelPackageError, match=r"\[input\] max_priors: is required for a progression model"
    ):
        read_spec(tmp_path / "no")
    make_package(tmp_path / "ok", input_spec={"size": [4, 4, 4], "max_priors": 2}, **args)
    assert load_package(tmp_path / "ok", CPU).spec.input.max_priors == 2
