"""Export a trained module as a model package the worker loads, with a model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inference.spec import sha256_file, verify_package

__all__ = ["export_package"]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(round(value, 6))
    return repr(value)


def export_package(
    module: nn.Module,
    folder: Path,
    *,
    name: str,
    version: str,
    task: str,
    architecture: str,
    parameters: dict[str, Any],
    input_spec: dict[str, Any],
    labels: list[dict[str, Any]],
    training_data: str,
    metrics: dict[str, float],
    card: str,
) -> Path:
    """Write weights, ``model.toml`` (with SHA-256) and ``MODEL_CARD.md``; verify them."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "weights.pt"
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    torch.save(state, weights)
    lines = [
        "[model]",
        f"name = {_toml(name)}",
        f"version = {_toml(version)}",
        f"task = {_toml(task)}",
        f"architecture = {_toml(architecture)}",
        'format = "state_dict"',
        'weights = "weights.pt"',
        f'sha256 = "{sha256_file(weights)}"',
        "[model.parameters]",
        *(f"{k} = {_toml(v)}" for k, v in parameters.items()),
        "[input]",
        *(f"{k} = {_toml(v)}" for k, v in input_spec.items()),
    ]
    for label in labels:
        lines += ["[[output.labels]]", *(f"{k} = {_toml(v)}" for k, v in label.items())]
    lines += [
        "[provenance]",
        f"training_data = {_toml(training_data)}",
        "[provenance.metrics]",
        *(f"{k} = {_toml(v)}" for k, v in metrics.items()),
    ]
    (folder / "model.toml").write_text("\n".join(lines) + "\n")
    (folder / "MODEL_CARD.md").write_text(card)
    verify_package(folder)
    return folder
