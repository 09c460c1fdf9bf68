"""Follow-up of incidental lung nodules by the Fleischner Society 2017 table (decision support).

The table is data (``guidelines/fleischner2017.toml``); this module measures
what the table asks for and looks the row up:

- **type** from the CT values inside the nodule: the share of its voxels at or
  above -300 HU (the solid component) — at least 0.8 solid, at most 0.2
  ground-glass, in between part-solid;
- **size** as the guideline measures it: the average of the long- and
  short-axis diameters on the axial slice where the nodule is largest,
  rounded to the nearest millimetre;
- **count**: one nodule, or several (then the largest guides management, with
  the table's rows for multiple nodules; several subsolid nodules use the
  "subsolid" rows);
- **risk**: the patient's risk as configured (``[pipelines.fleischner] risk``);
  when it is not known, the high-risk row is used — the one with as much or
  more follow-up — and the statement says so.

A nodule over 30 mm is a mass, outside the guideline; that too is said. The
result is a recommendation marked decision support, never a diagnosis.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial.distance import pdist, squareform

from dicomio.records import Lesion, Volume

__all__ = [
    "Guideline",
    "Nodule",
    "NoduleAdvice",
    "Rule",
    "advise",
    "guideline",
    "measure_nodule",
    "nodule_type",
]

#: A nodule's measurements: type, solid_share, long_axis_mm, short_axis_mm, size_mm.
Nodule = dict[str, float | str]

_TABLE = Path(__file__).with_name("guidelines") / "fleischner2017.toml"
TYPES = ("solid", "part-solid", "ground-glass")
SOLID_HU = -300.0
MASS_MM = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    type: str  # solid | part-solid | ground-glass | subsolid (several subsolid nodules)
    count: str  # single | multiple
    min_mm: int
    max_mm: int
    risk: str  # low | high | any
    code: str
    meaning: str
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Guideline:
    name: str
    citation: str
    applies: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class NoduleAdvice:
    """The recommendation for one patient's nodules, and the rule and inputs it came from."""

    code: tuple[str, str, str] | None  # (value, "99AINODE", meaning); None: no rule applies
    statement: str


@cache
def guideline(path: Path = _TABLE) -> Guideline:
    """Read and check the table: every row well formed, no gaps or overlaps per type/count/risk."""
    data = tomllib.loads(path.read_text())
    head = data["guideline"]
    rules = tuple(
        Rule(
            type=r["type"],
            count=r["count"],
            min_mm=int(r["min_mm"]),
            max_mm=int(r["max_mm"]),
            risk=r["risk"],
            code=r["code"],
            meaning=r["meaning"],
            text=r.get("text", r["meaning"]),
        )
        for r in data["rule"]
    )
    for rule in rules:
        if len(rule.code) > 16 or len(rule.meaning) > 64 or rule.min_mm > rule.max_mm:
            raise ValueError(f"{path}: rule {rule.code} is malformed")
    return Guideline(
        name=head["name"], citation=head["citation"], applies=head["applies"], rules=rules
    )


def nodule_type(hu: npt.NDArray[np.floating]) -> tuple[str, float]:
    """(type, solid share) of a nodule from the CT values of its voxels."""
    solid = float(np.count_nonzero(hu >= SOLID_HU)) / max(hu.size, 1)
    if solid >= 0.8:
        return "solid", solid
    if solid <= 0.2:
        return "ground-glass", solid
    return "part-solid", solid


def _axes_mm(points: npt.NDArray[np.float64], pixel: float) -> tuple[float, float]:
    """Long axis and the widest extent perpendicular to it, in mm.

    Spans of pixel centres plus half a pixel: the outermost centres lie between
    0 and 1 pixel inside the true edge, half a pixel on average.
    """
    if len(points) < 2:
        return pixel, pixel
    dist = squareform(pdist(points))
    i, j = np.unravel_index(int(dist.argmax()), dist.shape)
    direction = points[j] - points[i]
    perpendicular = np.array([-direction[1], direction[0]]) / float(np.hypot(*direction))
    across = points @ perpendicular
    return float(dist[i, j]) + pixel / 2, float(across.max() - across.min()) + pixel / 2


def measure_nodule(
    volume: Volume, labels: npt.NDArray[np.uint16], lesion: Lesion, n: int
) -> Nodule:
    """The guideline's inputs for lesion ``n`` of a label map: type, solid share, axes, size."""
    (k0, j0, i0), (k1, j1, i1) = lesion.bbox_kji
    box = (slice(k0, k1 + 1), slice(j0, j1 + 1), slice(i0, i1 + 1))
    mask = labels[box] == n
    hu = volume.array[box][mask]
    kind, solid = nodule_type(hu)
    areas = mask.sum(axis=(1, 2))
    k = int(areas.argmax())
    section = mask[k]
    rows, cols = np.nonzero(section & ~ndimage.binary_erosion(section))  # its outline
    sy, sx = volume.spacing[1], volume.spacing[2]
    points = np.stack([rows * sy, cols * sx], axis=1).astype(np.float64)
    long_mm, short_mm = _axes_mm(points, float(min(sy, sx)))
    return {
        "type": kind,
        "solid_share": round(solid, 3),
        "long_axis_mm": round(long_mm, 1),
        "short_axis_mm": round(short_mm, 1),
        # Rounded to the nearest millimetre, halves up (Python's round() would make 6.5 -> 6).
        "size_mm": float(math.floor((long_mm + short_mm) / 2 + 0.5)),
    }


def advise(nodules: Sequence[Nodule], risk: str, table: Guideline | None = None) -> NoduleAdvice:
    """The recommendation for a patient's nodules (each as :func:`measure_nodule` gave it).

    ``risk``: "low", "high" or "unknown" (then the high-risk row, said in the statement).
    """
    table = table or guideline()
    if not nodules:
        return NoduleAdvice(code=None, statement="no nodule measured")
    largest = max(nodules, key=lambda x: float(x["size_mm"]))
    size = int(float(largest["size_mm"]))
    kind = str(largest["type"])
    count = "single" if len(nodules) == 1 else "multiple"
    described = (
        f"{'one' if count == 'single' else len(nodules)} {kind} nodule"
        f"{'s, largest' if count == 'multiple' else ''} {size} mm "
        f"(mean of {largest['long_axis_mm']} x {largest['short_axis_mm']} mm axes)"
    )
    if size > MASS_MM:
        return NoduleAdvice(
            code=None,
            statement=f"{described}: over {MASS_MM} mm, a mass, outside {table.name}; "
            "not a nodule follow-up question",
        )
    # Several nodules led by a subsolid one: the table's rows for multiple subsolid nodules.
    row_type = "subsolid" if count == "multiple" and kind != "solid" else kind
    used_risk = "high" if risk == "unknown" else risk
    rule = next(
        r
        for r in table.rules
        if r.type == row_type
        and r.count == count
        and r.min_mm <= size <= r.max_mm
        and r.risk in (used_risk, "any")
    )
    risk_note = (
        "patient risk not configured: the high-risk row is used (as much or more follow-up)"
        if risk == "unknown" and rule.risk != "any"
        else f"patient risk {risk}"
        if rule.risk != "any"
        else "the same for low and high risk"
    )
    return NoduleAdvice(
        code=(rule.code, "99AINODE", rule.meaning),
        statement=f"{table.name}, {described}; {risk_note}: {rule.text}. {table.citation}. "
        f"Applies to {table.applies}.",
    )
