"""Model packages: a folder with ``model.toml`` and the weights it names.

::

    [model]
    name = "lesion-seg"            # letters, digits, - _ .
    version = "1.0.0"
    task = "segmentation"          # classification | segmentation | sequence | progression
    architecture = "unet3d"        # inference.architectures registry, or
    format = "state_dict"          #   "torchscript" (then architecture is ignored)
    weights = "weights.pt"
    sha256 = "<hex digest of the weights file>"
    [model.parameters]             # keyword arguments of the architecture
    base = 8

    [input]
    modality = ["CT"]
    window = [-200.0, 300.0]       # images: clip, then scale to [0, 1]
    target_spacing = [2.0, 2.0, 2.0]   # images: resample (z, y, x mm) before the model
    size = [64, 64, 64]            # classification, progression: this grid (resized, or
                                   #   cropped/padded when target_spacing is set)
    patch = [64, 64, 64]           # segmentation: sliding-window patch
    leads = ["Lead I (Einthoven)", ...]  # sequence: lead order
    sampling_hz = 500.0            # sequence: resample to this rate
    samples = 5000                 # sequence: crop or pad to this length
    max_priors = 2                 # progression: the newest prior studies it compares with

    [[output.labels]]
    name = "lesion"
    code = ["52988006", "SCT", "Lesion"]   # value, scheme, meaning
    threshold = 0.5
    min_volume_mm3 = 0.0           # segmentation: smaller components are not lesions

    [provenance]
    training_data = "..."
    [provenance.metrics]
    dice = 0.91

The weights' SHA-256 is checked by :func:`verify_package` (and on load); any problem raises
:class:`ModelPackageError` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.errors import ModelPackageError

__all__ = ["InputSpec", "LabelSpec", "ModelSpec", "read_spec", "sha256_file", "verify_package"]

TASKS = ("classification", "segmentation", "sequence", "progression")


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelSpec:
    name: str
    code: tuple[str, str, str]
    threshold: float = 0.5
    min_volume_mm3: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class InputSpec:
    modalities: tuple[str, ...] = ()
    window: tuple[float, float] | None = None
    target_spacing: tuple[float, float, float] | None = None
    size: tuple[int, int, int] | None = None
    patch: tuple[int, int, int] | None = None
    leads: tuple[str, ...] = ()
    sampling_hz: float | None = None
    samples: int | None = None
    max_priors: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    folder: Path
    name: str
    version: str
    task: str
    architecture: str
    format: str
    weights: Path
    sha256: str
    parameters: dict[str, Any]
    input: InputSpec
    labels: tuple[LabelSpec, ...]
    provenance: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _req(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in table:
        raise ModelPackageError(f"{where}: {key} is required")
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind):
        raise ModelPackageError(f"{where}: {key} must be a {kind.__name__}")
    return value


def _triple(value: Any, where: str, cast: type) -> Any:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 3:
        raise ModelPackageError(f"{where}: must be a list of 3 numbers")
    return tuple(cast(v) for v in value)


def read_spec(folder: Path) -> ModelSpec:
    """Parse and validate ``folder/model.toml`` (no weights are read)."""
    toml_path = folder / "model.toml"
    where = str(toml_path)
    try:
        data = tomllib.loads(toml_path.read_text())
    except FileNotFoundError:
        raise ModelPackageError(f"{where}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ModelPackageError(f"{where}: not valid TOML: {exc}") from None
    model = data.get("model", {})
    name = _req(model, "name", str, f"{where} [model]")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise ModelPackageError(f"{where} [model]: name must be letters, digits, '-', '_', '.'")
    task = _req(model, "task", str, f"{where} [model]")
    if task not in TASKS:
        raise ModelPackageError(f"{where} [model]: task must be one of {', '.join(TASKS)}")
    fmt = model.get("format", "state_dict")
    if fmt not in ("state_dict", "torchscript"):
        raise ModelPackageError(f'{where} [model]: format must be "state_dict" or "torchscript"')
    sha = _req(model, "sha256", str, f"{where} [model]").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ModelPackageError(f"{where} [model]: sha256 must be 64 hex digits")
    inp = data.get("input", {})
    window = inp.get("window")
    if window is not None and (
        not isinstance(window, list) or len(window) != 2 or not window[0] < window[1]
    ):
        raise ModelPackageError(f"{where} [input]: window must be [low, high] with low < high")
    labels = []
    for i, label in enumerate(data.get("output", {}).get("labels", [])):
        lw = f"{where} [[output.labels]] #{i + 1}"
        code = _req(label, "code", list, lw)
        if len(code) != 3 or not all(isinstance(c, str) and c for c in code):
            raise ModelPackageError(f"{lw}: code must be [value, scheme, meaning]")
        floor = label.get("min_volume_mm3", 0.0)
        if not isinstance(floor, (int, float)) or isinstance(floor, bool) or floor < 0:
            raise ModelPackageError(f"{lw}: min_volume_mm3 must be a number >= 0")
        labels.append(
            LabelSpec(
                name=_req(label, "name", str, lw),
                code=(code[0], code[1], code[2]),
                threshold=float(label.get("threshold", 0.5)),
                min_volume_mm3=float(floor),
            )
        )
    if not labels:
        raise ModelPackageError(f"{where} [output]: at least one label is required")
    modality = inp.get("modality", [])
    max_priors = inp.get("max_priors", 0)
    if task == "progression" and (
        not isinstance(max_priors, int) or isinstance(max_priors, bool) or max_priors < 1
    ):
        raise ModelPackageError(
            f"{where} [input]: max_priors must be an integer >= 1 for a progression model"
        )
    return ModelSpec(
        folder=folder,
        name=name,
        version=_req(model, "version", str, f"{where} [model]"),
        task=task,
        architecture=model.get("architecture", "") if fmt == "state_dict" else "",
        format=fmt,
        weights=folder / _req(model, "weights", str, f"{where} [model]"),
        sha256=sha,
        parameters=dict(model.get("parameters", {})),
        input=InputSpec(
            modalities=tuple(
                m.upper() for m in ([modality] if isinstance(modality, str) else modality)
            ),
            window=(float(window[0]), float(window[1])) if window else None,
            target_spacing=_triple(
                inp.get("target_spacing"), f"{where} [input] target_spacing", float
            ),
            size=_triple(inp.get("size"), f"{where} [input] size", int),
            patch=_triple(inp.get("patch"), f"{where} [input] patch", int),
            leads=tuple(inp.get("leads", [])),
            sampling_hz=float(inp["sampling_hz"]) if "sampling_hz" in inp else None,
            samples=int(inp["samples"]) if "samples" in inp else None,
            max_priors=int(max_priors) if task == "progression" else 0,
        ),
        labels=tuple(labels),
        provenance=dict(data.get("provenance", {})),
    )


def verify_package(folder: Path) -> ModelSpec:
    """Validate ``model.toml`` and the weights' SHA-256, without loading the model."""
    spec = read_spec(folder)
    if not spec.weights.is_file():
        raise ModelPackageError(
            f"{folder / 'model.toml'} [model] weights: {spec.weights} not found"
        )
    actual = sha256_file(spec.weights)
    if actual != spec.sha256:
        raise ModelPackageError(
            f"{spec.weights}: SHA-256 {actual} does not match [model] sha256 {spec.sha256} "
            "in model.toml (corrupt or replaced weights)"
        )
    return spec
