"""Models hospitals bring: ONNX files and MONAI bundles, built here from our own trained networks.

Each foreign form must give what the native package gives on the same
volume. The bundle's network is wrapped so that it takes and returns MONAI's
``(X, Y, Z)`` in RAS — written out by hand below, independently of
:mod:`inference.orient` — so the node's orientation code is what makes the
outputs meet.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from dicomio.records import Volume
from inference.errors import ModelPackageError
from inference.execute import ATTENTION_LEVELS, classify, segment
from inference.modelspec import sha256_file
from inference.orient import orientation_of
from inference.package import load_package
from inference.postprocess import lesions
from inference.spec import read_spec
from inference.trial import load_and_try
from tests.dicomcheck import validate
from tests.dicomgen import write_lesion_ct

MODELS = Path(__file__).resolve().parents[2] / "models"
CPU = torch.device("cpu")


def _phantom(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Volume:
    """Soft tissue with noise and two spheres of enhancing lesion (ours: k, j, i in LPS)."""
    rng = np.random.default_rng(11)
    hu = 40 + rng.normal(0, 10, shape)
    zz, yy, xx = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij"
    )
    extent = [n * s for n, s in zip(shape, spacing, strict=True)]
    for frac, radius in (((0.4, 0.3, 0.6), 7.0), ((0.6, 0.7, 0.3), 5.0)):
        c = [f * e for f, e in zip(frac, extent, strict=True)]
        inside = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius**2
        hu[inside] = 170 + rng.normal(0, 10, int(inside.sum()))
    return Volume(
        array=hu.astype(np.float32),
        spacing=spacing,
        origin=(-100.0, -120.0, 40.0),
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        normal=(0.0, 0.0, 1.0),
        study_instance_uid="1.2",
        series_instance_uid="1.2.3",
        frame_of_reference_uid="1.2.4",
        sop_instance_uids=tuple(f"1.2.3.{k}" for k in range(shape[0])),
        modality="CT",
    )


def _foreign_toml(native: Path, fmt: str, weights: str, folder: Path) -> None:
    """The native model.toml with the weights swapped: no architecture, no parameters, no domain."""
    lines, skipping = [], False
    for line in (native / "model.toml").read_text().splitlines():
        if line.startswith("["):
            skipping = line.strip() in ("[model.parameters]", "[domain]")
        if skipping or re.match(r"(architecture|format|weights|sha256) = ", line):
            continue
        lines.append(line)
        if line.strip() == "[model]":
            sha = sha256_file(folder / weights)
            lines += [f'format = "{fmt}"', f'weights = "{weights}"', f'sha256 = "{sha}"']
    (folder / "model.toml").write_text("\n".join(lines) + "\n")


def _export_onnx(module: nn.Module, example: tuple[Tensor, ...], path: Path, outputs: int) -> None:
    names = ["logits", "attention"][:outputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter says it is legacy
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=names,
            dynamic_axes={"image": {0: "n"}, **{n: {0: "n"} for n in names}},
        )


def test_onnx_segmenter_gives_the_native_maps(tmp_path: Path) -> None:
    native = load_package(MODELS / "lesion-seg", CPU)
    folder = tmp_path / "lesion-seg-onnx"
    folder.mkdir()
    _export_onnx(native.module, (torch.zeros(1, 1, 32, 64, 64),), folder / "model.onnx", 1)
    _foreign_toml(MODELS / "lesion-seg", "onnx", "model.onnx", folder)
    onnx_model = load_and_try(folder, CPU)  # verified, loaded and trial-run like any package
    assert onnx_model.spec.format == "onnx"

    volume = _phantom((40, 80, 72), (2.0, 1.2, 1.2))  # several overlapping windows
    expected = segment(native, volume, batch_size=2, amp=False)
    got = segment(onnx_model, volume, batch_size=3, amp=False)
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) < 1e-4
    assert len(lesions(expected[0], volume, native.spec.labels[0])) == 2  # the maps say something


def test_onnx_attention_classifier_gives_the_native_probabilities_and_map(tmp_path: Path) -> None:
    native = load_package(MODELS / "lesion-class", CPU)
    size = native.spec.input.size
    assert size is not None
    folder = tmp_path / "lesion-class-onnx"
    folder.mkdir()
    _export_onnx(native.module, (torch.zeros(1, 1, *size),), folder / "model.onnx", 2)
    _foreign_toml(MODELS / "lesion-class", "onnx", "model.onnx", folder)
    onnx_model = load_and_try(folder, CPU)

    volume = _phantom((30, 64, 64), (2.0, 1.1, 1.1))
    probs, attention = classify(native, volume, amp=False)
    got_probs, got_attention = classify(onnx_model, volume, amp=False)
    assert np.allclose(got_probs, probs, atol=1e-5)
    assert attention is not None and got_attention is not None
    # Both maps are in steps of 1/ATTENTION_LEVELS: a value within float rounding
    # of a step's midpoint may land one step apart, nothing more, and rarely.
    step = 1.0 / ATTENTION_LEVELS
    difference = np.abs(got_attention - attention)
    assert float(difference.max()) <= step + 1e-6
    assert float((difference > 1e-6).mean()) < 1e-3


def test_an_unloadable_onnx_file_is_a_package_error(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not a protobuf at all")
    _foreign_toml(MODELS / "lesion-seg", "onnx", "model.onnx", folder)
    with pytest.raises(ModelPackageError, match=r"model.onnx: not a loadable ONNX model"):
        load_package(folder, CPU)


class _RasWrapper(nn.Module):
    """Takes and returns MONAI's RAS ``(N, C, X, Y, Z)`` around a net on our LPS ``(D, H, W)``.

    For an axial series with rows along +x (L) and columns along +y (P): our
    i runs to the Left, so X (Right) is i reversed; Y (Anterior) is j
    reversed; Z (Superior) is k. ``softmax``: a zero background channel is put
    before the lesion logit, so a softmax over the two is the native sigmoid.
    """

    def __init__(self, net: nn.Module, softmax: bool) -> None:
        super().__init__()
        self.net = net
        self.softmax = softmax

    def forward(self, x: Tensor) -> Tensor:
        ours = x.flip(2, 3).permute(0, 1, 4, 3, 2)
        logits = self.net(ours)
        if self.softmax:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        return logits.permute(0, 1, 4, 3, 2).flip(2, 3)


def _bundle(
    folder: Path,
    net: nn.Module,
    *,
    pixdim: list[float],
    roi: list[int],
    softmax: bool,
    extra_pre: list[dict[str, Any]] | None = None,
) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch says TorchScript is deprecated; bundles ship it
        example = torch.zeros(1, 1, *roi)
        scripted = torch.jit.trace(_RasWrapper(net, softmax), example)  # type: ignore[no-untyped-call]
    scripted.save(str(folder / "models" / "model.ts"))
    channels = {"0": "background", "1": "lesion"} if softmax else {"0": "lesion"}
    metadata = {
        "name": "Lesion segmentation (test bundle)",
        "version": "0.1.0",
        "description": "lesion-seg wrapped as a MONAI bundle by the tests",
        "network_data_format": {
            "inputs": {"image": {"modality": "CT", "num_channels": 1}},
            "outputs": {"pred": {"num_channels": len(channels), "channel_def": channels}},
        },
    }
    pre = [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": pixdim, "mode": "bilinear"},
        {
            "_target_": "ScaleIntensityRanged",
            "keys": "image",
            "a_min": -100.0,
            "a_max": 300.0,
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        },
        *(extra_pre or []),
        {"_target_": "EnsureTyped", "keys": "image"},
    ]
    activation = {"softmax": True} if softmax else {"sigmoid": True}
    inference = {
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": roi, "overlap": 0.25},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", **activation},
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
                {"_target_": "SaveImaged", "keys": "pred"},
            ],
        },
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    return folder


@pytest.mark.parametrize("softmax", [False, True], ids=["sigmoid", "softmax-background"])
def test_monai_bundle_gives_the_native_maps(tmp_path: Path, softmax: bool) -> None:
    native_folder = tmp_path / "native"
    shutil.copytree(MODELS / "lesion-seg", native_folder)
    toml = (native_folder / "model.toml").read_text()
    toml = toml.replace(
        "patch = [32, 64, 64]", "patch = [32, 64, 64]\ntarget_spacing = [2.0, 1.0, 1.0]"
    )
    (native_folder / "model.toml").write_text(toml)
    native = load_package(native_folder, CPU)
    bundle = _bundle(
        tmp_path / "bundle",
        native.module,
        pixdim=[1.0, 1.0, 2.0],  # (X, Y, Z): the native (z, y, x) spacing reversed
        roi=[64, 64, 32],
        softmax=softmax,
    )
    model = load_and_try(bundle, CPU)
    assert model.spec.format == "monai_bundle"
    assert [label.name for label in model.spec.labels] == ["lesion"]

    # Resampled to exactly one window, so both see the same voxels in the same patch.
    volume = _phantom((40, 80, 80), (1.6, 0.8, 0.8))
    expected = segment(native, volume, batch_size=1, amp=False)
    got = segment(model, volume, batch_size=1, amp=False)
    assert got.shape == expected.shape == (1, 40, 80, 80)
    assert float(np.abs(got - expected).max()) < 1e-4
    assert len(lesions(expected[0], volume, native.spec.labels[0])) == 2


def test_bundle_with_a_transform_ainode_cannot_apply_is_refused_naming_it(tmp_path: Path) -> None:
    net = load_package(MODELS / "lesion-seg", CPU).module
    extra = [{"_target_": "monai.transforms.NormalizeIntensityd", "keys": "image"}]
    folder = _bundle(
        tmp_path / "b",
        net,
        pixdim=[1.0, 1.0, 2.0],
        roi=[64, 64, 32],
        softmax=False,
        extra_pre=extra,
    )
    with pytest.raises(
        ModelPackageError, match=r"inference.json: pre-processing transform NormalizeIntensityd"
    ):
        read_spec(folder)


def test_bundle_without_channel_names_is_refused(tmp_path: Path) -> None:
    net = load_package(MODELS / "lesion-seg", CPU).module
    folder = _bundle(tmp_path / "b", net, pixdim=[1.0, 1.0, 2.0], roi=[64, 64, 32], softmax=False)
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelPackageError, match=r"metadata.json: .* need a channel_def"):
        read_spec(folder)


def _world_volume(
    row: tuple[float, ...], col: tuple[float, ...], normal: tuple[float, ...]
) -> Volume:
    return Volume(
        array=np.zeros((3, 4, 5), dtype=np.float32),
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        row_direction=row,  # type: ignore[arg-type]
        column_direction=col,  # type: ignore[arg-type]
        normal=normal,  # type: ignore[arg-type]
        study_instance_uid="1",
        series_instance_uid="1.1",
        frame_of_reference_uid="1.2",
        sop_instance_uids=("1.1.1", "1.1.2", "1.1.3"),
    )


@pytest.mark.parametrize(
    ("row", "col", "normal"),
    [
        ((1, 0, 0), (0, 1, 0), (0, 0, 1)),  # axial
        ((0, 1, 0), (0, 0, -1), (1, 0, 0)),  # sagittal
        ((1, 0, 0), (0, 0, -1), (0, -1, 0)),  # coronal
        ((-1, 0, 0), (0, -1, 0), (0, 0, -1)),  # axial, every axis reversed
    ],
    ids=["axial", "sagittal", "coronal", "reversed"],
)
def test_orientation_puts_each_model_axis_along_its_letter(
    row: tuple[float, ...], col: tuple[float, ...], normal: tuple[float, ...]
) -> None:
    """Each voxel holds its own LPS coordinates; after RAS orientation x falls, y falls, z rises."""
    volume = _world_volume(row, col, normal)
    k, j, i = np.meshgrid(*(np.arange(n) for n in volume.array.shape), indexing="ij")
    world = (
        k[..., None] * np.array(normal)
        + j[..., None] * np.array(col)
        + i[..., None] * np.array(row)
    )  # (D, H, W, 3), LPS millimetres with unit spacing
    x = torch.from_numpy(np.moveaxis(world, -1, 0)[None].astype(np.float32))  # (1, 3, D, H, W)
    orient = orientation_of(volume, "RAS")
    y = orient.apply(x)
    assert torch.all(y[0, 0].diff(dim=0) < 0)  # X: towards Right = LPS x decreasing
    assert torch.all(y[0, 1].diff(dim=1) < 0)  # Y: towards Anterior = LPS y decreasing
    assert torch.all(y[0, 2].diff(dim=2) > 0)  # Z: towards Superior = LPS z increasing
    assert torch.equal(orient.invert(y), x)
    model_sizes = tuple(float(n) for n in y.shape[2:])
    assert orient.to_ours(model_sizes) == tuple(float(n) for n in volume.array.shape)  # type: ignore[arg-type]


def test_analyze_runs_a_bundle_named_in_config_toml(tmp_path: Path) -> None:
    """A hospital's bundle in [[pipelines]] models: checked by check-config, run by analyze."""
    net = load_package(MODELS / "lesion-seg", CPU).module
    bundle = _bundle(
        tmp_path / "bundle", net, pixdim=[0.8, 0.8, 2.0], roi=[64, 64, 32], softmax=True
    )
    write_lesion_ct(tmp_path / "study")
    config = tmp_path / "config.toml"
    config.write_text(
        "[storage]\ndata_dir = 'data'\nmin_free_mb = 0\n[web]\nenabled = false\n"
        f"[inference]\nworkers = 0\n[[pipelines]]\nname = 'ct'\nmodels = ['{bundle}']\n"
    )
    check = _ainode("check-config", "--config", str(config), cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "Lesion_segmentation__test_bundle_ 0.1.0" in check.stdout
    run = _ainode(
        "analyze", str(tmp_path / "study"), "--out", str(tmp_path / "out"), "--config", str(config),
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "lesion 2:" in run.stdout and "lesion 3:" not in run.stdout, run.stdout
    written = list((tmp_path / "out").rglob("*.dcm"))
    assert {p.name[:3] for p in written} == {"SR_", "SEG"}
    result = validate(tmp_path / "out")  # the bundle's own label names, coded 99AINODE
    assert result.ok, result.report()


def _ainode(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )
