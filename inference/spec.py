"""Model packages: a folder with ``model.toml`` and the weights it names.

::

    [model]
    name = "lesion-seg"            # letters, digits, - _ .
    version = "1.0.0"
    task = "segmentation"          # classification | segmentation | detection | sequence
                                   #   | progression
    architecture = "unet3d"        # inference.architectures registry, or
    format = "state_dict"          #   "torchscript" or "onnx" (then no architecture)
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
    candidates = [900, 300, 150]   # detection: blob candidates per scan, bright, dark and
                                   #   inside solid organs (inference.candidates)
    ground_glass = 0               # detection: faint lung blobs per scan (ground glass)
    organ_snr = 0                  # detection: blobs per scan and sign inside solid organs,
                                   #   ranked by contrast to the organ's noise
    patch_channels = ["lung", "soft_tissue", "lung_coarse"]  # detection: the views of each
                                   #   candidate the CNN sees, in its order (inference.patches)
    turns = 1                      # detection: each patch scored as cut and turned half a turn
                                   #   about each axis, the mean of the first 1-4 (1: as cut)
    suppress_mm = 5.0              # detection: one detection within this distance

    [[output.labels]]
    name = "lesion"
    code = ["52988006", "SCT", "Lesion"]   # value, scheme, meaning
    threshold = 0.5
    min_volume_mm3 = 0.0           # segmentation, detection: smaller components are not
                                   #   lesions (detection: exactly one label)

    [provenance]
    training_data = "..."
    [provenance.metrics]
    dice = 0.91

``model.toml`` is validated like ``config.toml`` (:mod:`core.tomltable`): unknown
keys are errors, every value is typed and ranged, keys that do not apply to the
task are refused, and each error names the file and the key. The weights'
SHA-256 is checked by :func:`verify_package` (and on load); the loaded model is
then run once on a dummy input (:mod:`inference.trial`).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from core.tomltable import Table
from inference.bundle import is_bundle, read_bundle
from inference.domain import read_domain
from inference.errors import ModelPackageError
from inference.modelspec import DomainFile, InputSpec, LabelSpec, ModelSpec, sha256_file
from inference.patches import CHANNELS, DEFAULT_CHANNELS

__all__ = ["InputSpec", "LabelSpec", "ModelSpec", "read_spec", "sha256_file", "verify_package"]

TASKS = ("classification", "segmentation", "detection", "sequence", "progression")
_MASK_TASKS = ("segmentation", "detection")
_IMAGE_TASKS = ("classification", "segmentation", "progression")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _table(data: object, name: str) -> Table:
    return Table(data, name, ModelPackageError)


def _choice(table: Table, key: str, options: tuple[str, ...], default: str | None) -> str:
    if default is None and not table.has(key):
        raise table.fail(key, "is required")
    value = table.string(key, default or "")
    if value not in options:
        raise table.fail(key, f"must be one of {', '.join(options)} (got {value!r})")
    return value


def _file_and_digest(table: Table, key: str) -> tuple[str, str]:
    """A file named by ``key`` inside the package folder, and its ``sha256`` (lower-case hex)."""
    name = table.required_string(key)
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise table.fail(key, f"must name a file inside the package folder (got {name!r})")
    sha = table.required_string("sha256").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise table.fail("sha256", "must be 64 hex digits")
    return name, sha


def _model(table: Table, folder: Path) -> dict[str, Any]:
    name = table.required_string("name")
    if not _NAME_RE.fullmatch(name):
        raise table.fail("name", "must be letters, digits, '-', '_', '.' (at most 64)")
    version = table.required_string("version")
    task = _choice(table, "task", TASKS, None)
    fmt = _choice(table, "format", ("state_dict", "torchscript", "onnx"), "state_dict")
    architecture = table.string("architecture", "")
    if fmt == "state_dict" and not architecture:
        raise table.fail("architecture", 'is required with format = "state_dict"')
    if fmt != "state_dict" and architecture:
        raise table.fail("architecture", f'must not be set with format = "{fmt}"')
    if task == "detection" and fmt == "onnx":
        raise table.fail("format", 'a detection model is "state_dict" or "torchscript"')
    weights, sha = _file_and_digest(table, "weights")
    parameters = table.raw("parameters")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise table.fail("parameters", "must be a table of the architecture's arguments")
    if fmt != "state_dict" and parameters:
        raise table.fail("parameters", f'must be empty with format = "{fmt}"')
    table.finish()
    return {
        "name": name,
        "version": version,
        "task": task,
        "format": fmt,
        "architecture": architecture,
        "weights": folder / weights,
        "sha256": sha,
        "parameters": dict(parameters),
    }


def _ints(table: Table, key: str) -> tuple[int, int, int] | None:
    values = table.numbers(key, 3, 1)
    if values is None:
        return None
    if not all(v == int(v) for v in values):
        raise table.fail(key, f"must be whole numbers (got {list(values)})")
    return (int(values[0]), int(values[1]), int(values[2]))


def _input(table: Table, task: str) -> InputSpec:
    only = {
        "sequence": ("leads", "sampling_hz", "samples"),
        "progression": ("max_priors",),
        "detection": (
            "candidates",
            "ground_glass",
            "organ_snr",
            "patch_channels",
            "turns",
            "suppress_mm",
        ),
        "image": ("window", "target_spacing", "size", "patch"),
    }
    for group, keys in only.items():
        applies = task in _IMAGE_TASKS if group == "image" else task == group
        for key in keys:
            if table.has(key) and not applies:
                what = "an image task" if group == "image" else f"task {group}"
                raise table.fail(key, f"only for {what} (this model's task is {task})")
    window = table.numbers("window", 2, -1e6)
    if window is not None and not window[0] < window[1]:
        raise table.fail("window", f"must be [low, high] with low < high (got {list(window)})")
    spacing = table.numbers("target_spacing", 3, 1e-3, 100.0)
    if task == "progression" and not table.has("max_priors"):
        raise table.fail("max_priors", "is required for a progression model: an integer >= 1")
    samples = table.integer("samples", 0, 1, 10**8) if table.has("samples") else None
    if task == "detection" and not table.has("candidates"):
        raise table.fail(
            "candidates", "is required for a detection model: [bright, dark, organ] blobs per scan"
        )
    spec = InputSpec(
        modalities=tuple(m.upper() for m in table.strings("modality")),
        window=None if window is None else (window[0], window[1]),
        target_spacing=None if spacing is None else (spacing[0], spacing[1], spacing[2]),
        size=_ints(table, "size"),
        patch=_ints(table, "patch"),
        leads=table.strings("leads"),
        sampling_hz=table.number("sampling_hz", 0.0, 1.0, 1e6)
        if table.has("sampling_hz")
        else None,
        samples=samples,
        max_priors=table.integer("max_priors", 1, 1, 100) if table.has("max_priors") else 0,
        axcodes=_axcodes(table),
        candidates=_candidates(table),
        ground_glass=table.integer("ground_glass", 0, 0, 100_000),
        organ_snr=table.integer("organ_snr", 0, 0, 100_000),
        patch_channels=_patch_channels(table),
        turns=table.integer("turns", 1, 1, 4),
        suppress_mm=table.number("suppress_mm", 5.0, 0.5, 100.0),
    )
    table.finish()
    return spec


def _patch_channels(table: Table) -> tuple[str, ...]:
    if not table.has("patch_channels"):
        return DEFAULT_CHANNELS
    names = table.strings("patch_channels")
    unknown = [n for n in names if n not in CHANNELS]
    if unknown or not names or len(set(names)) < len(names):
        raise table.fail(
            "patch_channels",
            f"must name each view once, of {', '.join(CHANNELS)} (got {list(names)})",
        )
    return names


def _candidates(table: Table) -> tuple[int, int, int]:
    values = table.numbers("candidates", 3, 0, 100_000)
    if values is None:
        return (0, 0, 0)
    if not all(v == int(v) for v in values) or values[0] + values[1] < 1:
        raise table.fail(
            "candidates",
            f"must be whole numbers [bright, dark, organ], bright + dark >= 1 (got {list(values)})",
        )
    return (int(values[0]), int(values[1]), int(values[2]))


def _axcodes(table: Table) -> str:
    codes = table.string("axcodes", "").upper()
    if codes and (len(codes) != 3 or sorted(codes) not in _AXCODE_SETS):
        raise table.fail("axcodes", f'must be three of L/R, P/A, S/I, e.g. "RAS" (got {codes!r})')
    return codes


_AXCODE_SETS = [sorted(a + b + c) for a in "LR" for b in "PA" for c in "SI"]


def _activation(table: Table, labels: int, task: str) -> tuple[str, int | None]:
    activation = _choice(table, "activation", ("sigmoid", "softmax"), "sigmoid")
    background = (
        table.integer("background_channel", 0, 0, labels) if table.has("background_channel")
        else None
    )  # fmt: skip
    if (activation != "sigmoid" or background is not None) and task != "segmentation":
        raise table.fail("activation", f"only for task segmentation (this is {task})")
    if background is not None and activation != "softmax":
        raise table.fail("background_channel", 'only with activation = "softmax"')
    return activation, background


def _labels(raw: object, where: str, task: str) -> tuple[LabelSpec, ...]:
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ModelPackageError(f"{where} [[output.labels]]: must be an array of tables")
    labels: list[LabelSpec] = []
    for i, item in enumerate(raw):
        table = _table(item, f"{where} [[output.labels]] #{i + 1}")
        name = table.required_string("name")
        if any(label.name == name for label in labels):
            raise table.fail("name", f"must be unique ({name!r} repeats)")
        code = table.raw("code")
        if (
            not isinstance(code, list)
            or len(code) != 3
            or not all(isinstance(c, str) and c for c in code)
        ):
            raise table.fail("code", "must be [value, scheme, meaning], three non-empty strings")
        if table.has("min_volume_mm3") and task not in _MASK_TASKS:
            raise table.fail(
                "min_volume_mm3", f"only for tasks segmentation and detection (this is {task})"
            )
        labels.append(
            LabelSpec(
                name=name,
                code=(code[0], code[1], code[2]),
                threshold=table.number("threshold", 0.5, 0.0, 1.0),
                min_volume_mm3=table.number("min_volume_mm3", 0.0, 0.0),
            )
        )
        table.finish()
    if not labels:
        raise ModelPackageError(f"{where} [[output.labels]]: at least one label is required")
    if task == "detection" and len(labels) != 1:
        raise ModelPackageError(
            f"{where} [[output.labels]]: a detection model has exactly one label "
            f"(got {len(labels)})"
        )
    return tuple(labels)


def _provenance(table: Table) -> dict[str, Any]:
    training_data = table.string("training_data", "")
    notes = table.string("notes", "")
    metrics = _table(table.raw("metrics") or {}, f"{table.key('metrics')}")
    values = {}
    for key in metrics.keys():  # every metric is a number
        values[key] = metrics.number(key, 0.0, float("-inf"))
    metrics.finish()
    table.finish()
    found: dict[str, Any] = {"training_data": training_data, "metrics": values}
    if notes:
        found["notes"] = notes
    return found


def read_spec(folder: Path) -> ModelSpec:
    """Parse and validate ``folder/model.toml``, or read a MONAI bundle (no weights are read).

    Raises
    ------
    ModelPackageError
        Naming the file and the key: missing, unknown, mistyped or out of range.
    """
    if is_bundle(folder):
        return read_bundle(folder)
    toml_path = folder / "model.toml"
    where = str(toml_path)
    try:
        data = tomllib.loads(toml_path.read_text())
    except FileNotFoundError:
        raise ModelPackageError(f"{where}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ModelPackageError(f"{where}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelPackageError(f"{where}: cannot read: {exc}") from None
    top = _table(data, where)
    model = _model(_table(top.raw("model") or {}, f"{where} [model]"), folder)
    inp = _input(_table(top.raw("input") or {}, f"{where} [input]"), model["task"])
    views = model["parameters"].get("channels", 3)
    if model.get("architecture") == "candidate_net" and views != len(inp.patch_channels):
        raise ModelPackageError(
            f"{where} [input] patch_channels: {len(inp.patch_channels)} view(s), but "
            f"[model.parameters] channels = {views}: the network takes one view a channel"
        )
    output = _table(top.raw("output") or {}, f"{where} [output]")
    labels = _labels(output.raw("labels"), where, model["task"])
    activation, background = _activation(output, len(labels), model["task"])
    output.finish()
    provenance = _provenance(_table(top.raw("provenance") or {}, f"{where} [provenance]"))
    domain = _domain(_table(top.raw("domain") or {}, f"{where} [domain]"), folder, model["task"])
    top.finish()
    return ModelSpec(
        folder=folder,
        input=inp,
        labels=labels,
        provenance=provenance,
        activation=activation,
        background_channel=background,
        domain=domain,
        **model,
    )


def _domain(table: Table, folder: Path, task: str) -> DomainFile | None:
    """``[domain] file``, ``sha256``: the validated input domain (:mod:`inference.domain`)."""
    if not table.has("file"):
        table.finish()
        return None
    if task == "sequence":
        raise table.fail("file", "is for image models (this is a sequence model)")
    name, sha = _file_and_digest(table, "file")
    table.finish()
    path = folder / name
    return DomainFile(path=path, sha256=sha, domain=read_domain(path))


def verify_package(folder: Path) -> ModelSpec:
    """Validate ``model.toml`` and the weights' SHA-256, without loading the model.

    A MONAI bundle (:mod:`inference.bundle`) names no digest: its weights must exist.
    """
    spec = read_spec(folder)
    if spec.domain is not None and sha256_file(spec.domain.path) != spec.domain.sha256:
        raise ModelPackageError(
            f"{spec.domain.path}: SHA-256 does not match [domain] sha256 in model.toml "
            "(corrupt or replaced domain)"
        )
    if spec.format == "monai_bundle":
        return spec
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
