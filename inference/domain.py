"""The input a model was validated on, and whether a series lies within it.

A package may record its validated input domain in ``domain.json`` (named in
``model.toml`` ``[domain]`` with its SHA-256). ``training/domain.py`` builds
it from the scans the package was fitted and calibrated on:

- ``modality`` and ``body_part``: what the scans were (an empty body part
  list: not recorded, not checked; a series without Body Part Examined is
  not declined for it);
- ``spacing_mm``: the voxel spacing (slice, row, column) range seen, widened
  by 10 %;
- ``intensity``: per-scan statistics of the Hounsfield units — fractions of
  air/lung (< -500), fat (-200..-50) and bone/metal (>= 500), the 1st, 50th
  and 99th percentiles, the noise (robust SD of neighbouring-voxel
  differences) and, for a package that records it, the share of the body
  that is lung or gas (``lung_fraction``: what tells a chest from an abdomen
  when Body Part Examined is missing) — each the range seen, widened by 10 %
  of its width or a floor (fractions 0.01, HU 30, noise 3 HU), whichever is
  larger (the lung share's from its low end up to 1: more lung is a chest
  still); a statistic the file does not name is not checked;
- ``features``: the mean and precision (inverse covariance, shrunk) of the
  model's own features — the spatial mean of a named layer's output — over
  those scans, and a Mahalanobis distance threshold (the largest distance
  among them, times a margin recorded with it).

The worker checks modality, body part, spacing and intensity before the
forward pass, and the features after it: a series outside any of them gets
no findings; its outcome says ``outside the validated input of MODEL
(reason)``. No torch here (``serve`` and its listeners read packages without
it); the feature vector is taken by :mod:`inference.features`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dicomio.records import Volume
from inference.errors import ModelPackageError

__all__ = [
    "AXES",
    "BASE_STATISTICS",
    "STATISTICS",
    "Domain",
    "FeatureReference",
    "check_features",
    "check_series",
    "check_volume",
    "domain_json",
    "intensity_stats",
    "read_domain",
]

#: Per-scan intensity statistics: name -> (what it is, unit, tolerance floor).
STATISTICS: dict[str, tuple[str, str, float]] = {
    "air_fraction": ("share of voxels below -500 HU (air, lung)", "", 0.01),
    "fat_fraction": ("share of voxels in -200..-50 HU (fat)", "", 0.01),
    "bone_fraction": ("share of voxels at or above 500 HU (bone, metal)", "", 0.01),
    "hu_p01": ("1st percentile", " HU", 30.0),
    "hu_p50": ("median", " HU", 30.0),
    "hu_p99": ("99th percentile", " HU", 30.0),
    "noise_hu": ("noise (robust SD of neighbouring-voxel differences)", " HU", 3.0),
    "lung_fraction": ("share of the body below -500 HU (lungs, gas)", "", 0.01),
}
#: What a domain built before ``lung_fraction`` records (``training.domain.build_domain``'s
#: default, so those packages rebuild byte for byte).
BASE_STATISTICS = tuple(k for k in STATISTICS if k != "lung_fraction")
#: Checked before the others, so a declined abdomen is told so in those words.
FIRST = frozenset({"lung_fraction"})
#: Slices the body's outline is drawn on for ``lung_fraction`` (spread over the series).
_OUTLINE_SLICES = 16
AXES = ("slice", "row", "column")


@dataclass(frozen=True, slots=True)
class FeatureReference:
    layer: str
    mean: npt.NDArray[np.float64]
    precision: npt.NDArray[np.float64]
    threshold: float

    def distance(self, vector: npt.NDArray[np.float64]) -> float:
        d = vector - self.mean
        return float(math.sqrt(max(0.0, float(d @ self.precision @ d))))


@dataclass(frozen=True, slots=True, kw_only=True)
class Domain:
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    spacing_mm: tuple[tuple[float, float], ...]
    intensity: dict[str, tuple[float, float]]
    features: FeatureReference | None
    built_from: str


def _fail(path: Path, key: str, rule: str) -> ModelPackageError:
    return ModelPackageError(f"{path} {key}: {rule}")


def _pair(value: object, path: Path, key: str) -> tuple[float, float]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or value[0] > value[1]
    ):
        raise _fail(path, key, "must be [low, high] numbers with low <= high")
    return float(value[0]), float(value[1])


def read_domain(path: Path) -> Domain:
    """Read and validate ``domain.json``; errors name the file and the key."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelPackageError(f"{path}: not found ([domain] file names it)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelPackageError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelPackageError(f"{path}: must hold a JSON object")
    unknown = sorted(set(data) - {"modality", "body_part", "spacing_mm", "intensity", "features",
                                  "built_from"})  # fmt: skip
    if unknown:
        raise _fail(path, "", f"unknown key(s): {', '.join(unknown)}")
    modalities = data.get("modality", [])
    body_parts = data.get("body_part", [])
    for key, value in (("modality", modalities), ("body_part", body_parts)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _fail(path, key, "must be a list of strings")
    spacing = data.get("spacing_mm")
    if not isinstance(spacing, list) or len(spacing) != 3:
        raise _fail(path, "spacing_mm", "must be three [low, high] ranges (slice, row, column)")
    intensity = data.get("intensity", {})
    if not isinstance(intensity, dict) or set(intensity) - set(STATISTICS):
        raise _fail(path, "intensity", f"must map some of {', '.join(STATISTICS)} to ranges")
    return Domain(
        modalities=tuple(m.upper() for m in modalities),
        body_parts=tuple(b.upper() for b in body_parts),
        spacing_mm=tuple(_pair(s, path, f"spacing_mm[{i}]") for i, s in enumerate(spacing)),
        intensity={k: _pair(v, path, f"intensity.{k}") for k, v in intensity.items()},
        features=_features(data.get("features"), path),
        built_from=str(data.get("built_from", "")),
    )


def _features(raw: object, path: Path) -> FeatureReference | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"layer", "mean", "precision", "threshold"}:
        raise _fail(path, "features", "must hold layer, mean, precision and threshold")
    try:
        mean = np.asarray(raw["mean"], dtype=np.float64)
        precision = np.asarray(raw["precision"], dtype=np.float64)
        threshold = float(raw["threshold"])
    except (TypeError, ValueError):
        raise _fail(path, "features", "mean, precision and threshold must be numbers") from None
    n = mean.shape[0] if mean.ndim == 1 else -1
    if n < 1 or precision.shape != (n, n) or not threshold > 0:
        raise _fail(path, "features", "mean must be n numbers, precision n x n, threshold > 0")
    return FeatureReference(str(raw["layer"]), mean, precision, threshold)


def domain_json(domain: Domain) -> str:
    """The file's text: stable key order and rounding, so a rebuild is identical byte for byte."""

    def r(x: float) -> float:
        return float(f"{x:.6g}")

    data: dict[str, Any] = {
        "built_from": domain.built_from,
        "modality": list(domain.modalities),
        "body_part": list(domain.body_parts),
        "spacing_mm": [[r(lo), r(hi)] for lo, hi in domain.spacing_mm],
        "intensity": {k: [r(lo), r(hi)] for k, (lo, hi) in sorted(domain.intensity.items())},
    }
    if domain.features is not None:
        f = domain.features
        data["features"] = {
            "layer": f.layer,
            "mean": [r(v) for v in f.mean],
            "precision": [[r(v) for v in row] for row in f.precision],
            "threshold": r(f.threshold),
        }
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def intensity_stats(volume: Volume) -> dict[str, float]:
    """The :data:`STATISTICS` of a volume in HU (subsampled: a 512² CT takes well under 1 s)."""
    a = volume.array
    step = max(1, round((a.size / 2_000_000) ** (1 / 3)))
    sample = a[::step, ::step, ::step].astype(np.float32, copy=False).ravel()
    p01, p50, p99 = np.percentile(sample, [1, 50, 99])
    slices = a[:: max(1, a.shape[0] // 8)]
    diffs = np.diff(slices.astype(np.float32, copy=False), axis=2).ravel()
    mad = float(np.median(np.abs(diffs - np.median(diffs)))) if diffs.size else 0.0
    n = float(sample.size)
    return {
        "air_fraction": float(np.count_nonzero(sample < -500)) / n,
        "fat_fraction": float(np.count_nonzero((sample >= -200) & (sample < -50))) / n,
        "bone_fraction": float(np.count_nonzero(sample >= 500)) / n,
        "hu_p01": float(p01),
        "hu_p50": float(p50),
        "hu_p99": float(p99),
        "noise_hu": 1.4826 * mad / math.sqrt(2.0),
        "lung_fraction": lung_fraction(a, step),
    }


def lung_fraction(array: npt.NDArray[Any], step: int = 1) -> float:
    """The share of the body below -500 HU: on up to 16 slices spread over the series
    (every ``step``-th pixel), the body is what is -500 HU or more with its holes filled
    (the lungs, the bowel's gas), and the share is its part below -500 HU. A chest's lungs
    are about a fifth to two fifths of it; an abdomen's gas a few hundredths."""
    from scipy import ndimage  # here: serve reads domains without it

    picked = np.linspace(0, array.shape[0] - 1, min(_OUTLINE_SLICES, array.shape[0]))
    tissue = array[np.unique(picked.round().astype(int)), ::step, ::step] >= -500
    body = np.stack([ndimage.binary_fill_holes(t) for t in tissue])
    inside = int(np.count_nonzero(body))
    return float(np.count_nonzero(body & ~tissue)) / inside if inside else 0.0


def check_series(domain: Domain, modality: str, body_part: str) -> str | None:
    """Why a series' header puts it outside the domain, or None."""
    if domain.modalities and modality.upper() not in domain.modalities:
        return f"modality {modality or 'none'}; validated on {', '.join(domain.modalities)}"
    if domain.body_parts and body_part and body_part.upper() not in domain.body_parts:
        return f"body part {body_part}; validated on {', '.join(domain.body_parts)}"
    return None


def _fmt(value: float, unit: str) -> str:
    return f"{value:.3g}{unit}"


def check_volume(domain: Domain, volume: Volume) -> str | None:
    """Why a volume's spacing or intensities put it outside the domain, or None."""
    for axis, value, (lo, hi) in zip(AXES, volume.spacing, domain.spacing_mm, strict=True):
        if not lo <= value <= hi:
            return f"{axis} spacing {value:.3g} mm; validated {lo:.3g}-{hi:.3g} mm"
    stats = intensity_stats(volume)
    # What the body is before how it was scanned: the lung share's reason first.
    ordered = sorted(domain.intensity.items(), key=lambda item: item[0] not in FIRST)
    for key, (lo, hi) in ordered:
        what, unit, _floor = STATISTICS[key]
        if not lo <= stats[key] <= hi:
            return (
                f"{what} {_fmt(stats[key], unit)}; validated {_fmt(lo, unit)} to {_fmt(hi, unit)}"
            )
    return None


def check_features(domain: Domain, vector: npt.NDArray[np.float64] | None) -> str | None:
    """Why the model's own features put the series outside the domain, or None."""
    if domain.features is None or vector is None:
        return None
    distance = domain.features.distance(vector)
    if distance > domain.features.threshold:
        return (
            f"the model's features are unlike its training scans (Mahalanobis distance "
            f"{distance:.1f}; accepted up to {domain.features.threshold:.1f})"
        )
    return None
