"""Record a package's validated input domain (``domain.json``) and measure who it accepts.

The domain is built from the scans a package was fitted and calibrated on
(training, validation and the shifted calibration set), never from the test
sets; it is then checked on held-out sets — the share accepted is the figure
that says whether the check turns away patients the model was made for. The
rules are :mod:`inference.domain`'s.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dicomio.records import Volume
from inference.domain import (
    AXES,
    BASE_STATISTICS,
    STATISTICS,
    Domain,
    FeatureReference,
    check_features,
    check_volume,
    domain_json,
    intensity_stats,
)
from inference.execute import classify, segment
from inference.features import feature_probe, features_of
from inference.package import LoadedModel
from inference.spec import sha256_file, verify_package

__all__ = [
    "FEATURE_LAYERS",
    "FeatureWatch",
    "acceptance",
    "build_domain",
    "card_section",
    "decisions",
    "domain_volumes",
    "reason_kind",
    "tally",
    "write_domain",
]

#: The layer whose spatial mean is a network's feature vector, per architecture.
FEATURE_LAYERS = {"unet3d": "bottom", "attention_cnn": "encoder", "cnn": "encoder"}
#: The feature threshold: the largest training distance times this.
FEATURE_MARGIN = 1.1
#: Spacing ranges: the range seen, widened by this share at each end.
SPACING_MARGIN = 0.1
#: Shrinkage of the feature covariance towards its mean variance (keeps it invertible).
SHRINKAGE = 0.05


def domain_volumes(cases: Iterable[object]) -> Iterable[Volume]:
    """The scans of training cases: a CT case's volume, a longitudinal case's own study."""
    for case in cases:
        volume = getattr(case, "volume", None)
        volumes = getattr(case, "volumes", None)
        if isinstance(volume, Volume):
            yield volume
        elif volumes:
            yield volumes[-1]


def _run(model: LoadedModel, volume: Volume) -> None:
    if model.spec.task == "segmentation":
        segment(model, volume, batch_size=4, amp=False)
    else:
        classify(model, volume, amp=False)


def _feature_layer(model: LoadedModel) -> str | None:
    """The layer whose features the domain check compares; None: the check has none."""
    if model.spec.task not in ("segmentation", "classification"):
        return None
    return FEATURE_LAYERS.get(model.spec.architecture)


def feature_vector(model: LoadedModel, volume: Volume) -> npt.NDArray[np.float64] | None:
    layer = _feature_layer(model)
    if layer is None:
        return None
    return features_of(model.module, layer, lambda: _run(model, volume))


class FeatureWatch:
    """Keeps each case's features from a forward pass run for something else.

    ``watch(i)`` around case ``i``'s pass (``training.evaluation.evaluate``'s
    hook); ``vectors`` then holds what :func:`feature_vector` would compute by
    running the network again — the same windows through the same layer.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.module = model.module
        self.layer = _feature_layer(model)
        self.vectors: dict[int, npt.NDArray[np.float64] | None] = {}

    @contextmanager
    def watch(self, i: int) -> Iterator[None]:
        # Without a layer the probe sees nothing and its vector is None.
        with feature_probe(self.module, self.layer) as probe:
            yield
        self.vectors[i] = probe.vector()


#: Statistics whose range is open above: the body's lung share tells a chest from an
#: abdomen by its low end; a chest with more lung than the training scans' is a chest still
#: (a thin patient, emphysema), and the air share and the features watch the rest.
AT_LEAST = frozenset({"lung_fraction"})


def _range(key: str, values: Sequence[float], floor: float) -> tuple[float, float]:
    lo, hi = float(min(values)), float(max(values))
    pad = max(0.1 * (hi - lo), floor)
    # A share or a noise level is never negative: the widened range stops at 0.
    least = 0.0 if key.endswith("_fraction") or key == "noise_hu" else -math.inf
    return max(lo - pad, least), 1.0 if key in AT_LEAST else hi + pad


def build_domain(
    model: LoadedModel,
    volumes: Iterable[Volume],
    *,
    body_parts: Sequence[str] = (),
    built_from: str,
    statistics: Sequence[str] = BASE_STATISTICS,
) -> Domain:
    """The domain of ``model`` over ``volumes`` (the scans it was fitted and calibrated on),
    recording the intensity ``statistics`` named (of :data:`inference.domain.STATISTICS`;
    the default leaves out ``lung_fraction``, which packages built before it lack)."""
    spacings: list[tuple[float, float, float]] = []
    stats: list[dict[str, float]] = []
    vectors: list[npt.NDArray[np.float64]] = []
    modalities: set[str] = set()
    for volume in volumes:
        spacings.append(volume.spacing)
        stats.append(intensity_stats(volume))
        modalities.add(volume.modality.upper() or "CT")
        vector = feature_vector(model, volume)
        if vector is not None:
            vectors.append(vector)
    if not spacings:
        raise ValueError("no scans to build a domain from")
    spacing = tuple(
        (min(s[a] for s in spacings) * (1 - SPACING_MARGIN),
         max(s[a] for s in spacings) * (1 + SPACING_MARGIN))
        for a in range(3)
    )  # fmt: skip
    intensity = {
        key: _range(key, [s[key] for s in stats], STATISTICS[key][2]) for key in statistics
    }
    features = None
    if vectors:
        layer = FEATURE_LAYERS[model.spec.architecture]
        features = _reference(layer, np.stack(vectors))
    return Domain(
        modalities=tuple(sorted(model.spec.input.modalities or modalities)),
        body_parts=tuple(b.upper() for b in body_parts),
        spacing_mm=spacing,
        intensity=intensity,
        features=features,
        built_from=f"{built_from}; {len(spacings)} scans",
    )


def _reference(layer: str, x: npt.NDArray[np.float64]) -> FeatureReference:
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])
    scale = float(np.trace(cov)) / cov.shape[0] or 1.0
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * scale * np.eye(cov.shape[0])
    precision = np.linalg.inv(cov).astype(np.float64)
    # Rounded as domain.json stores it, so the threshold fits what the worker reads.
    precision = np.array([[float(f"{v:.6g}") for v in row] for row in precision], dtype=np.float64)
    mean = np.array([float(f"{v:.6g}") for v in mean])
    reference = FeatureReference(layer, mean, precision, 1.0)
    largest = max(reference.distance(v) for v in x)
    return FeatureReference(layer, mean, precision, largest * FEATURE_MARGIN)


def write_domain(folder: Path, domain: Domain) -> Path:
    """Write ``domain.json`` and name it (with its SHA-256) in ``model.toml`` ``[domain]``."""
    path = folder / "domain.json"
    path.write_text(domain_json(domain))
    toml = folder / "model.toml"
    text = re.sub(r"\n\[domain\]\n(?:[^\[\n][^\n]*\n)*", "\n", toml.read_text())
    text = text.rstrip("\n") + f'\n[domain]\nfile = "domain.json"\nsha256 = "{sha256_file(path)}"\n'
    toml.write_text(text)
    verify_package(folder)
    return path


_NUMBER = re.compile(r"[-+]?\d[\d.]*(-[\d.]+)?")


def reason_kind(why: str) -> str:
    """What a decline is about: its words before the first number ("row spacing 1.87 mm;
    validated ..." -> "row spacing"; "99th percentile 774 HU; ..." -> "99th percentile")."""
    words = []
    for word in why.split():
        if _NUMBER.fullmatch(word.rstrip(";,")):
            break
        words.append(word)
    return " ".join(words).rstrip(";:,") or why


def decisions(
    model: LoadedModel,
    domain: Domain,
    volumes: Iterable[Volume],
    features: Mapping[int, npt.NDArray[np.float64] | None] | None = None,
) -> list[str | None]:
    """What the domain says of each of ``volumes``: None (accepted) or why it declines it.

    ``features``: volume ``i``'s features as its own forward pass already gave them
    (:class:`FeatureWatch`); else the network runs on each volume the rules accept.
    """
    out: list[str | None] = []
    for i, volume in enumerate(volumes):
        why = check_volume(domain, volume)
        if why is None:
            vector = features[i] if features is not None else feature_vector(model, volume)
            why = check_features(domain, vector)
        out.append(why)
    return out


def acceptance(
    model: LoadedModel,
    domain: Domain,
    volumes: Iterable[Volume],
    features: Mapping[int, npt.NDArray[np.float64] | None] | None = None,
) -> tuple[int, int, Counter[str]]:
    """How many of ``volumes`` the domain accepts: (accepted, total, reasons of the rest),
    as :func:`decisions` decides them."""
    return tally(decisions(model, domain, volumes, features))


def tally(decided: Sequence[str | None]) -> tuple[int, int, Counter[str]]:
    """Decisions counted: (accepted, total, the declines' reason kinds)."""
    reasons = Counter(reason_kind(why) for why in decided if why is not None)
    return sum(why is None for why in decided), len(decided), reasons


_CARD_HEADING = "## Validated input domain"


def card_section(
    folder: Path,
    domain: Domain,
    checks: Sequence[tuple[str, int, int]],
    *,
    command: str = "ainode train domain",
) -> None:
    """Write (or replace) the model card's domain section: what it accepts, and who it turned away.

    ``checks``: (held-out set, accepted, total) as :func:`acceptance` measured them.
    """
    card = folder / "MODEL_CARD.md"
    if not card.exists():
        return
    text = card.read_text().split(f"\n{_CARD_HEADING}\n")[0].rstrip("\n")
    ranges = zip(AXES, domain.spacing_mm, strict=True)
    spacing = ", ".join(f"{axis} {lo:.2f}-{hi:.2f} mm" for axis, (lo, hi) in ranges)
    lines = [
        "",
        _CARD_HEADING,
        "",
        "A series outside it is not analysed: the outcome says why and no findings are reported",
        f"(`domain.json`, built by `{command}` from {domain.built_from}).",
        "",
        f"- Modality {', '.join(domain.modalities)}; body part "
        f"{', '.join(domain.body_parts) or 'not recorded'}; spacing {spacing}.",
        "- Intensity: "
        + "; ".join(
            f"{key} {lo:.3g} to {hi:.3g}" for key, (lo, hi) in sorted(domain.intensity.items())
        )
        + ".",
    ]
    if domain.features is not None:
        lines.append(
            f"- Features of layer `{domain.features.layer}`: Mahalanobis distance up to "
            f"{domain.features.threshold:.2f} (the largest among the training scans x "
            f"{FEATURE_MARGIN})."
        )
    for name, accepted, total in checks:
        lines.append(f"- Held-out {name} set: {accepted} of {total} accepted.")
    card.write_text(text + "\n" + "\n".join(lines) + "\n")
