"""Model packages built by tests from fixed weights that encode a known function.

Never random weights presented as a result: the threshold segmenter below is
exactly "HU >= threshold", written as a per-voxel logistic model.
"""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path
from typing import Any

import torch

from inference.architectures import build
from inference.spec import sha256_file


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def make_package(
    folder: Path,
    *,
    name: str,
    task: str,
    architecture: str,
    parameters: dict[str, Any],
    state: dict[str, torch.Tensor] | None = None,
    input_spec: dict[str, Any],
    labels: list[dict[str, Any]],
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    module = build(architecture, parameters)
    if state is not None:
        module.load_state_dict(state)
    torch.save(module.state_dict(), folder / "weights.pt")
    lines = [
        "[model]",
        f'name = "{name}"',
        'version = "1.0.0"',
        f'task = "{task}"',
        f'architecture = "{architecture}"',
        'weights = "weights.pt"',
        f'sha256 = "{sha256_file(folder / "weights.pt")}"',
        "[model.parameters]",
        *(f"{k} = {_toml_value(v)}" for k, v in parameters.items()),
        "[input]",
        *(f"{k} = {_toml_value(v)}" for k, v in input_spec.items()),
    ]
    for label in labels:
        lines += ["[[output.labels]]", *(f"{k} = {_toml_value(v)}" for k, v in label.items())]
    lines += ["[provenance]", 'training_data = "none: fixed weights written by the test"']
    (folder / "model.toml").write_text("\n".join(lines) + "\n")
    tomllib.loads((folder / "model.toml").read_text())  # the test's own TOML must parse
    return folder


def threshold_segmenter(folder: Path, threshold_hu: float = 120.0) -> Path:
    """sigmoid(w * (HU + 1000) / 2000 + b) >= 0.5  exactly when  HU >= threshold_hu."""
    w = 200.0
    x_t = (threshold_hu + 1000.0) / 2000.0
    state = {
        "conv.weight": torch.full((1, 1, 1, 1, 1), w),
        "conv.bias": torch.tensor([-w * x_t]),
    }
    return make_package(
        folder,
        name="threshold-lesions",
        task="segmentation",
        architecture="voxel_logistic",
        parameters={},
        state=state,
        input_spec={"modality": ["CT"], "window": [-1000.0, 1000.0], "patch": [32, 64, 64]},
        labels=[{"name": "lesion", "code": ["52988006", "SCT", "Lesion"], "threshold": 0.5}],
    )


class _FailsOnBrightInput(torch.nn.Module):
    """A segmenter that runs on the trial input (mid-window grey) but raises on real data."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.max() > 0.9):
            raise RuntimeError("input too bright for this test model")
        return x


def failing_segmenter(folder: Path) -> Path:
    """A TorchScript package that passes its trial run, then fails every job on a CT."""
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; packages still use it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_FailsOnBrightInput()).save(str(folder / "model.pt"))  # type: ignore[no-untyped-call]
    _torchscript_toml(folder, "fails-on-bright")
    return folder


class _SlowOnBrightInput(torch.nn.Module):
    """Passes its trial run at once; on real data computes for minutes (a job that runs long)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.max() > 0.9):
            w = torch.eye(256) * 0.5
            y = torch.ones(256, 256)
            for _ in range(400000):
                y = torch.mm(y, w) + 0.5
            x = x + y.mean() * 0
        return x


def slow_segmenter(folder: Path) -> Path:
    """A TorchScript segmenter whose jobs on a real CT take minutes."""
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_SlowOnBrightInput()).save(str(folder / "model.pt"))  # type: ignore[no-untyped-call]
    _torchscript_toml(folder, "slow-on-bright")
    return folder


def _torchscript_toml(folder: Path, name: str) -> None:
    lines = [
        "[model]",
        f'name = "{name}"',
        'version = "1.0.0"',
        'task = "segmentation"',
        'format = "torchscript"',
        'weights = "model.pt"',
        f'sha256 = "{sha256_file(folder / "model.pt")}"',
        "[input]",
        'modality = ["CT"]',
        "window = [-1000.0, 1000.0]",
        "patch = [16, 32, 32]",
        "[[output.labels]]",
        'name = "lesion"',
        'code = ["52988006", "SCT", "Lesion"]',
        "[provenance]",
        'training_data = "none: a test model that misbehaves on purpose"',
    ]
    (folder / "model.toml").write_text("\n".join(lines) + "\n")
