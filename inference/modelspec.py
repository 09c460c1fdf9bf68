"""The records a model package is read into (:mod:`inference.spec`, :mod:`inference.bundle`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.domain import Domain
from inference.patches import DEFAULT_CHANNELS

__all__ = ["DomainFile", "InputSpec", "LabelSpec", "ModelSpec", "sha256_file"]


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
    # A foreign model's axis order (MONAI axcodes, e.g. "RAS"): the volume is
    # oriented so before the model; target_spacing and patch are then in that
    # (X, Y, Z) order. "": ainode's own (D, H, W) layout.
    axcodes: str = ""
    # Detection: blob candidates per scan (bright, dark, inside solid organs) and the
    # distance (mm) within which only the best-scored one is kept.
    candidates: tuple[int, int, int] = (0, 0, 0)
    # ... and faint blobs in the lungs with the vessels opened away (ground-glass nodules)
    ground_glass: int = 0
    # ... and blobs inside solid organs by their contrast to the organ's noise (each sign)
    organ_snr: int = 0
    # the views of each candidate the CNN sees (inference.patches.CHANNELS), in its order
    patch_channels: tuple[str, ...] = DEFAULT_CHANNELS
    # half-turns each patch is scored in, the mean logit (inference.detect.TURNS; 1: as cut)
    turns: int = 1
    suppress_mm: float = 5.0


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
    # Segmentation outputs: one sigmoid per label, or a softmax over the labels
    # and a background channel that is dropped.
    activation: str = "sigmoid"
    background_channel: int | None = None
    # The validated input domain (inference.domain); None: not recorded, not checked.
    domain: DomainFile | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DomainFile:
    path: Path
    sha256: str
    domain: Domain


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
