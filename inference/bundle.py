"""MONAI Bundles a hospital already has, read as ainode model packages (no MONAI needed).

A bundle folder holds ``configs/metadata.json``, ``configs/inference.json``
and ``models/model.ts`` (TorchScript). Its pre-processing is accepted when
ainode can do the same itself:

=========================  =============================================
``LoadImaged``, ``EnsureChannelFirstd``, ``EnsureTyped``, ``ToTensord``,
``CastToTyped``            nothing to do (ainode loads DICOM, as float32)
``Orientationd``           ``axcodes`` (the volume is oriented so)
``Spacingd``               ``pixdim`` -> target spacing
``ScaleIntensityRanged``   ``a_min``, ``a_max`` -> window, with ``b_min`` 0,
                           ``b_max`` 1 and ``clip`` true
=========================  =============================================

an inferer ``SlidingWindowInferer`` (``roi_size`` -> patch), and
post-processing ``Activationsd`` (``sigmoid`` or ``softmax``), ``AsDiscreted``
(``argmax``: the labels' threshold then decides), ``Invertd``,
``SaveImaged`` (nothing to do). Anything else is refused with the
transform named, so a bundle never runs with pre-processing ainode silently
left out. Labels come from the output's ``channel_def`` (channel "0" or a
"background" channel is the softmax background).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from inference.errors import ModelPackageError
from inference.modelspec import InputSpec, LabelSpec, ModelSpec, sha256_file

__all__ = ["is_bundle", "read_bundle"]

_NOTHING_TO_DO = {
    "LoadImaged",
    "LoadImage",
    "EnsureChannelFirstd",
    "EnsureChannelFirst",
    "AddChanneld",
    "EnsureTyped",
    "EnsureType",
    "ToTensord",
    "ToTensor",
    "CastToTyped",
    "Invertd",
    "SaveImaged",
    "SaveImage",
    "AsDiscreted",
    "AsDiscrete",
}
#: Label codes for bundle channels: a coding scheme of ainode's own (the bundle names them only).
_SCHEME = "99AINODE"


def is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "metadata.json").is_file() and not (folder / "model.toml").exists()


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelPackageError(f"{path}: not found (a MONAI bundle needs it)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelPackageError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelPackageError(f"{path}: must hold a JSON object")
    return data


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _name(transform: object) -> str:
    target = transform.get("_target_", "?") if isinstance(transform, dict) else "?"
    return str(target).rsplit(".", 1)[-1]


def _transforms(section: object, where: str) -> list[dict[str, Any]]:
    if section is None:
        return []
    if isinstance(section, dict) and _name(section) == "Compose":
        section = section.get("transforms", [])
    if not isinstance(section, list) or not all(isinstance(t, dict) for t in section):
        raise ModelPackageError(f"{where}: must be a Compose or a list of transforms")
    return section


def _pre(transforms: list[dict[str, Any]], where: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for t in transforms:
        name = _name(t)
        if name in _NOTHING_TO_DO:
            continue
        if name == "Orientationd":
            found["axcodes"] = str(t.get("axcodes", ""))
        elif name == "Spacingd":
            pixdim = t.get("pixdim")
            if not isinstance(pixdim, list) or len(pixdim) != 3:
                raise ModelPackageError(f"{where}: Spacingd pixdim must be three numbers")
            found["pixdim"] = tuple(float(v) for v in pixdim)
        elif name == "ScaleIntensityRanged":
            if (t.get("b_min", 0.0), t.get("b_max", 1.0), t.get("clip", False)) != (0.0, 1.0, True):
                raise ModelPackageError(
                    f"{where}: ScaleIntensityRanged is supported with b_min 0, b_max 1, clip true"
                )
            found["window"] = (float(t["a_min"]), float(t["a_max"]))
        else:
            raise ModelPackageError(
                f"{where}: pre-processing transform {name} is not one ainode can apply "
                "(supported: Orientationd, Spacingd, ScaleIntensityRanged and loading/typing)"
            )
    return found


def _post(transforms: list[dict[str, Any]], where: str) -> str:
    activation = "sigmoid"
    for t in transforms:
        name = _name(t)
        if name in _NOTHING_TO_DO:
            continue
        if name == "Activationsd" and t.get("softmax"):
            activation = "softmax"
        elif name == "Activationsd" and t.get("sigmoid"):
            activation = "sigmoid"
        else:
            raise ModelPackageError(
                f"{where}: post-processing transform {name} is not one ainode can apply "
                "(supported: Activationsd, AsDiscreted, Invertd, SaveImaged)"
            )
    return activation


def read_bundle(folder: Path) -> ModelSpec:
    """A segmentation bundle as a :class:`ModelSpec` (format ``monai_bundle``)."""
    meta_path = folder / "configs" / "metadata.json"
    inference_path = folder / "configs" / "inference.json"
    meta, config = _json(meta_path), _json(inference_path)
    weights = folder / "models" / "model.ts"
    if not weights.is_file():
        raise ModelPackageError(f"{weights}: not found (ainode runs a bundle's TorchScript model)")
    inferer = config.get("inferer", {})
    if _name(inferer) != "SlidingWindowInferer":
        raise ModelPackageError(
            f"{inference_path}: inferer {_name(inferer)} is not supported "
            "(ainode runs segmentation bundles with a SlidingWindowInferer)"
        )
    roi = inferer.get("roi_size")
    if not isinstance(roi, list) or len(roi) != 3:
        raise ModelPackageError(f"{inference_path}: SlidingWindowInferer roi_size must be 3 sizes")
    pre = _pre(
        _transforms(config.get("preprocessing"), f"{inference_path} preprocessing"),
        str(inference_path),
    )
    activation = _post(
        _transforms(config.get("postprocessing"), f"{inference_path} postprocessing"),
        str(inference_path),
    )
    data_format = _mapping(meta.get("network_data_format"))
    outputs = _mapping(data_format.get("outputs"))
    first = _mapping(next(iter(outputs.values()), None))
    channel_def = _mapping(first.get("channel_def"))
    try:
        channels = {int(k): str(v) for k, v in channel_def.items()}
    except ValueError:
        channels = {}
    if not channels:
        raise ModelPackageError(
            f"{meta_path}: network_data_format outputs need a channel_def "
            '(channel number -> name, e.g. {"0": "background", "1": "lesion"})'
        )
    background = next(
        (k for k, v in channels.items() if v.lower() == "background"),
        0 if activation == "softmax" else None,
    )
    labels = tuple(
        LabelSpec(name=v, code=(v.replace(" ", "_")[:16], _SCHEME, v), threshold=0.5)
        for k, v in sorted(channels.items())
        if k != background
    )
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(meta.get("name", folder.name)))[:64]
    modalities = tuple(
        str(v["modality"]).upper()
        for v in _mapping(data_format.get("inputs")).values()
        if isinstance(v, dict) and v.get("modality")
    )
    return ModelSpec(
        folder=folder,
        name=name or "bundle",
        version=str(meta.get("version", "0")),
        task="segmentation",
        architecture="",
        format="monai_bundle",
        weights=weights,
        sha256=sha256_file(weights),
        parameters={},
        input=InputSpec(
            modalities=modalities,
            window=pre.get("window"),
            target_spacing=pre.get("pixdim"),
            patch=(int(roi[0]), int(roi[1]), int(roi[2])),
            axcodes=str(pre.get("axcodes", "")).upper(),
        ),
        labels=labels,
        provenance={"training_data": str(meta.get("description", "")), "metrics": {}},
        activation=activation,
        background_channel=background if activation == "softmax" else None,
    )
