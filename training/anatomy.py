"""Anatomy-like synthetic CT: chest and upper-abdomen slabs with lesions where they occur.

Each scan is a slab of a patient (40-70 mm along the body axis) built from
shapes in millimetres and sampled with partial volume on the scan's own grid:

- a body outline of varied width, depth and squareness with skin, subcutaneous
  fat and muscle, lying on a curved table;
- chest: two lungs with branching vessel trees and airways (the classic
  source of false nodules: vessels seen end-on), heart, ascending and
  descending aorta, spine with its canal, ribs running obliquely through the
  slab;
- upper abdomen: liver, spleen, kidneys, aorta, spine and pockets of bowel gas;
- a contrast phase (none, arterial, portal venous) that enhances vessels and
  organs or not;
- the acquisition: in-plane pixel spacing, slice thickness and interval,
  field of view, a reconstruction kernel whose noise is correlated (soft,
  standard, sharp), noise level, optional streaks from dense structures.

Lesions: solid, part-solid and ground-glass lung nodules (3-30 mm) in the
lungs, hypo- and hyperdense liver lesions in the liver; round and smooth
(benign-like) or lobulated and spiculated (malignant-like). Scan labels
follow ``CT_LABELS`` as in :mod:`training.synthetic`: ``normal`` (no lesion),
``benign`` (only smooth, round lesions), ``malignant`` (at least one
lobulated or part-solid lesion). Ground truth: ``masks/<series uid>.npy``,
the voxels at least half inside a lesion.

``shift=True`` draws a test set from ranges never used in training: larger
and smaller bodies, thinner and thicker slices, coarser or finer pixels, the
sharp kernel and more noise, and another seed range.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from training.synthetic import write_case, write_labels

__all__ = [
    "Acquisition",
    "Body",
    "Grid",
    "LesionTruth",
    "Scan",
    "acquire",
    "draw_acquisition",
    "draw_body",
    "generate_anatomical_ct",
    "indexed_scan",
    "make_scan",
    "paint_lesion",
    "place_lesion",
    "render_anatomy",
]

Array = npt.NDArray[np.float64]

#: Noise texture of a reconstruction kernel: Gaussian smoothing of white noise
#: (pixels) and the image's own sharpening (unsharp amount; negative blurs).
_KERNELS = {"soft": (1.2, -0.6), "standard": (0.8, 0.0), "sharp": (0.45, 0.6)}


@dataclass(frozen=True, slots=True)
class Acquisition:
    pixel_mm: float
    thickness_mm: float
    interval_mm: float  # slice spacing; <= thickness (overlapping) or equal
    slices: int
    matrix: int
    kernel: str
    noise_hu: float
    phase: str  # "none", "arterial", "portal"
    streaks: bool


@dataclass(frozen=True, slots=True)
class LesionTruth:
    kind: str  # "solid", "part-solid", "ground-glass", "liver-hypo", "liver-hyper"
    diameter_mm: float
    malignant: bool


@dataclass(frozen=True, slots=True)
class Scan:
    hu: npt.NDArray[np.float32]  # (z, y, x)
    mask: npt.NDArray[np.bool_]
    spacing: tuple[float, float, float]  # slice interval, row, column (mm)
    thickness_mm: float
    section: str  # "chest" or "abdomen"
    lesions: tuple[LesionTruth, ...]
    label: str


class Grid:
    """The scan's voxel centres in mm: x left-right, y anterior-posterior, z along the body."""

    def __init__(self, acq: Acquisition) -> None:
        self.h = acq.pixel_mm
        half = (acq.matrix - 1) / 2 * acq.pixel_mm
        zs = (np.arange(acq.slices) - (acq.slices - 1) / 2) * acq.interval_mm
        xs = np.linspace(-half, half, acq.matrix)
        self.z = zs[:, None, None]
        self.y = xs[None, :, None]
        self.x = xs[None, None, :]
        self.zs, self.xs = zs, xs
        self.shape = (acq.slices, acq.matrix, acq.matrix)

    def soft(self, distance: Array) -> Array:
        """Partial-volume occupancy from a signed distance (mm, negative inside)."""
        return np.clip(0.5 - distance / self.h, 0.0, 1.0)

    def ellipse(self, cx: float, cy: float, a: float, b: float, power: float = 2.0) -> Array:
        """Occupancy of an elliptic (power 2) or squarer cylinder along z."""
        r = (np.abs((self.x - cx) / a) ** power + np.abs((self.y - cy) / b) ** power) ** (1 / power)
        return np.broadcast_to(self.soft((r - 1) * min(a, b)), self.shape)

    def ellipsoid(self, centre: Array, radii: Array) -> Array:
        r = np.sqrt(
            ((self.z - centre[0]) / radii[0]) ** 2
            + ((self.y - centre[1]) / radii[1]) ** 2
            + ((self.x - centre[2]) / radii[2]) ** 2
        )
        return self.soft((r - 1) * float(radii.min()))

    def box(self, centre: Array, half: float) -> tuple[slice, slice, slice]:
        """Index ranges of the voxels within ``half`` mm of ``centre`` (z, y, x)."""
        out = []
        for axis, c in zip((self.zs, self.xs, self.xs), centre, strict=True):
            lo = int(np.searchsorted(axis, c - half))
            hi = int(np.searchsorted(axis, c + half, side="right"))
            out.append(slice(lo, max(lo, hi)))
        return out[0], out[1], out[2]


def _paint(hu: Array, occupancy: Array, value: Array | float) -> None:
    """Blend ``value`` into ``hu`` in proportion to the occupancy (partial volume)."""
    hu += occupancy * (value - hu)


def _tubes(grid: Grid, segments: list[tuple[Array, Array, float]]) -> Array:
    """Occupancy of a union of capsules (p0, p1, radius) in mm (z, y, x)."""
    out = np.zeros(grid.shape)
    for p0, p1, radius in segments:
        lo, hi = np.minimum(p0, p1) - radius - grid.h, np.maximum(p0, p1) + radius + grid.h
        centre, half = (lo + hi) / 2, float(np.max(hi - lo) / 2)
        box = grid.box(centre, half)
        if any(s.stop <= s.start for s in box):
            continue
        z, y, x = np.meshgrid(grid.zs[box[0]], grid.xs[box[1]], grid.xs[box[2]], indexing="ij")
        d = p1 - p0
        length2 = float(d @ d) or 1e-9
        t = np.clip(((z - p0[0]) * d[0] + (y - p0[1]) * d[1] + (x - p0[2]) * d[2]) / length2, 0, 1)
        dist = np.sqrt(
            (z - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (x - p0[2] - t * d[2]) ** 2
        )
        out[box] = np.maximum(out[box], grid.soft(dist - radius))
    return out


def _tree(
    rng: np.random.Generator,
    start: Array,
    direction: Array,
    radius: float,
    inside: Array,
    grid: Grid,
    *,
    min_radius: float,
) -> Iterator[tuple[Array, Array, float]]:
    """A branching tree of capsules from ``start``, kept inside the ``inside`` occupancy."""
    stack = [(start, direction / np.linalg.norm(direction), radius, 0)]
    while stack:
        p0, d, r, depth = stack.pop()
        length = r * rng.uniform(4.0, 7.0) + 4.0
        p1 = p0 + d * length
        idx = tuple(
            int(np.clip(np.searchsorted(axis, v), 0, len(axis) - 1))
            for axis, v in zip((grid.zs, grid.xs, grid.xs), p1, strict=True)
        )
        if depth > 0 and inside[idx] < 0.5:
            continue
        yield p0, p1, r
        if r * 0.72 < min_radius or depth > 9:
            continue
        for sign in (-1.0, 1.0):
            turn = rng.normal(0, 1, 3)
            turn -= turn @ d * d
            turn /= np.linalg.norm(turn) or 1.0
            angle = math.radians(rng.uniform(20, 40))
            nd = d * math.cos(angle) + sign * turn * math.sin(angle)
            stack.append((p1, nd / np.linalg.norm(nd), r * rng.uniform(0.66, 0.8), depth + 1))


@dataclass(frozen=True, slots=True)
class Body:
    a: float  # half width (mm)
    b: float  # half depth
    power: float
    fat: float  # subcutaneous fat thickness
    muscle: float


def draw_body(rng: np.random.Generator, shift: bool) -> Body:
    if shift:  # bodies smaller or larger than any in training
        a = float(rng.choice([rng.uniform(115, 130), rng.uniform(185, 200)]))
    else:
        a = float(rng.uniform(130, 185))
    return Body(
        a=a,
        b=a * float(rng.uniform(0.62, 0.78)),
        power=float(rng.uniform(2.0, 2.8)),
        fat=float(rng.uniform(4, 12) if a < 150 else rng.uniform(8, 35)),
        muscle=float(rng.uniform(8, 18)),
    )


def draw_acquisition(rng: np.random.Generator, body: Body, shift: bool) -> Acquisition:
    fov = 2 * body.a + 2 * rng.uniform(15, 40)
    if shift:
        pixel = float(rng.choice([rng.uniform(0.9, 1.2), rng.uniform(2.3, 2.7)]))
        thickness = float(rng.choice([0.6, 0.8, 1.0, 3.5, 4.0, 5.0]))
        kernel = str(rng.choice(["sharp", "standard", "soft"], p=[0.5, 0.25, 0.25]))
        noise = float(rng.uniform(20, 35))
    else:
        pixel = float(rng.uniform(1.3, 2.2))
        thickness = float(rng.choice([1.25, 1.5, 2.0, 2.5, 3.0]))
        kernel = str(rng.choice(["soft", "standard"]))
        noise = float(rng.uniform(6, 22))
    # Thin slices: every other one; thick ones (3.5-5 mm) overlap, at most 3 mm apart.
    interval = min(thickness if thickness >= 1.25 else thickness * 2, 3.0)
    extent = float(rng.uniform(40, 70))
    return Acquisition(
        pixel_mm=pixel,
        thickness_mm=thickness,
        interval_mm=interval,
        slices=max(12, round(extent / interval)),
        matrix=math.ceil(fov / pixel),
        kernel=kernel,
        noise_hu=noise,
        phase=str(rng.choice(["none", "arterial", "portal"])),
        streaks=bool(rng.random() < 0.3),
    )


def _lung_outline(side: float, body: Body) -> tuple[float, float, float, float]:
    inner_a, inner_b = body.a - body.fat - body.muscle, body.b - body.fat - body.muscle
    cx = side * inner_a * 0.5
    return cx, inner_b * 0.05, inner_a * 0.42, inner_b * 0.82


def _enhance(phase: str, artery: float, organ: float) -> tuple[float, float]:
    """HU of arterial blood and of an enhancing organ in a phase (unenhanced: 40, ``organ``)."""
    if phase == "arterial":
        return artery, organ + 25
    if phase == "portal":
        return artery * 0.55, organ + 55
    return 40.0, organ


def _trunk(grid: Grid, body: Body, rng: np.random.Generator, hu: Array) -> Array:
    """Air, table, skin, fat and muscle; returns the occupancy inside the muscle wall."""
    top = body.b + rng.uniform(8, 25)  # table below the patient's back (posterior = +y)
    table = grid.soft(np.abs(grid.y - top - 0.004 * grid.x**2) - 4.0)
    _paint(hu, np.broadcast_to(table, grid.shape), float(rng.uniform(150, 350)))
    pad = grid.soft(np.abs(grid.y - top + 4 - 0.004 * grid.x**2) - 3.0)
    _paint(hu, np.broadcast_to(pad, grid.shape), -450.0)
    _paint(hu, grid.ellipse(0, 0, body.a, body.b, body.power), 30.0)  # skin
    a, b = body.a - 2, body.b - 2
    _paint(hu, grid.ellipse(0, 0, a, b, body.power), float(rng.uniform(-115, -85)))  # fat
    a, b = a - body.fat, b - body.fat
    _paint(hu, grid.ellipse(0, 0, a, b, body.power), float(rng.uniform(45, 60)))  # muscle
    a, b = a - body.muscle, b - body.muscle
    inner = grid.ellipse(0, 0, a, b, body.power)
    _paint(hu, inner, float(rng.uniform(-60, 10)))  # mediastinal / visceral fat and tissue
    return inner


def _spine(grid: Grid, body: Body, rng: np.random.Generator, hu: Array) -> None:
    inner_b = body.b - body.fat - body.muscle
    cy = inner_b * 0.82
    r = float(rng.uniform(15, 21))
    _paint(hu, grid.ellipse(0, cy, r * 1.15, r), float(rng.uniform(750, 950)))  # cortex
    _paint(hu, grid.ellipse(0, cy, r * 1.15 - 2, r - 2), float(rng.uniform(180, 320)))
    _paint(hu, grid.ellipse(0, cy + r + 7, 7, 6), 15.0)  # canal
    _paint(hu, grid.ellipse(0, cy + r + 7, 10, 9) - grid.ellipse(0, cy + r + 7, 7, 6), 700.0)


def _ribs(grid: Grid, body: Body, rng: np.random.Generator, hu: Array, count: int) -> None:
    a = body.a - body.fat - body.muscle * 0.4
    b = body.b - body.fat - body.muscle * 0.4
    segments = []
    z_top = grid.zs[0] - rng.uniform(0, 30)
    for k in range(count):
        z0 = z_top + k * rng.uniform(20, 28)
        for side in (-1.0, 1.0):
            angles = np.linspace(math.radians(80), math.radians(-70), 9)  # back to front
            points = [
                np.array(
                    [
                        z0 + (math.radians(80) - t) * 35,
                        b * math.sin(t),
                        side * a * math.cos(t) * 0.98,
                    ]
                )
                for t in angles
            ]
            radius = float(rng.uniform(3.5, 5.5))
            segments += [(p, q, radius) for p, q in itertools.pairwise(points)]
    _paint(hu, _tubes(grid, segments), float(rng.uniform(600, 900)))


def _lungs(
    grid: Grid,
    body: Body,
    rng: np.random.Generator,
    hu: Array,
    acq: Acquisition,
    mediastinum: Array,
) -> Array:
    """Lungs with vessels and airways; returns the lung occupancy (for nodules)."""
    lungs = np.zeros(grid.shape)
    for side in (-1.0, 1.0):
        cx, cy, a, b = _lung_outline(side, body)
        a *= float(rng.uniform(0.9, 1.05))
        lungs = np.maximum(lungs, grid.ellipse(cx, cy, a, b, 2.2))
    lungs = lungs * (1 - mediastinum)
    parenchyma = -860 + 25 * ndimage.gaussian_filter(rng.normal(0, 1, grid.shape), 2.0)
    _paint(hu, lungs, parenchyma)
    artery, _organ = _enhance(acq.phase, float(rng.uniform(250, 400)), 40)
    for side in (-1.0, 1.0):
        cx, cy, a, _b = _lung_outline(side, body)
        vessels: list[tuple[Array, Array, float]] = []
        airways: list[tuple[Array, Array, float]] = []
        # Trunks from hila above, within and below the slab: most branches cross it obliquely
        # or along the body axis and are seen end-on, as round dots like nodules.
        for _ in range(int(rng.integers(12, 19))):
            hilum = np.array([rng.uniform(-70, 70), cy, cx - side * a * 0.6])
            d = np.array(
                [-np.sign(hilum[0]) * rng.uniform(0.3, 1.5), rng.normal(0, 0.6), side * 1.0]
            )
            vessels += _tree(
                rng, hilum, d, float(rng.uniform(2.5, 4.5)), lungs, grid, min_radius=0.5
            )
        for _ in range(2):
            hilum = np.array([rng.uniform(-30, 30), cy - 10, cx - side * a * 0.6])
            d = np.array([rng.normal(0, 0.8), rng.normal(0, 0.5), side * 1.0])
            airways += _tree(
                rng, hilum, d, float(rng.uniform(4.0, 5.5)), lungs, grid, min_radius=1.2
            )
        _paint(hu, _tubes(grid, [(p, q, r * 1.25) for p, q, r in airways]) * lungs, 20.0)  # walls
        _paint(hu, _tubes(grid, airways) * lungs, -980.0)
        _paint(hu, _tubes(grid, vessels) * lungs, artery * 0.9)
    return lungs


def _mediastinum(grid: Grid, body: Body, rng: np.random.Generator, hu: Array, phase: str) -> Array:
    """Heart, aortas and the mediastinum between the lungs; returns their occupancy."""
    inner_b = body.b - body.fat - body.muscle
    artery, _organ = _enhance(phase, float(rng.uniform(250, 400)), 40)
    heart_a = float(rng.uniform(45, 60))
    heart = grid.ellipse(12, -inner_b * 0.25, heart_a, heart_a * 0.8)
    _paint(hu, heart, 40.0)  # myocardium
    _paint(hu, grid.ellipse(12, -inner_b * 0.25, heart_a - 8, heart_a * 0.8 - 8), artery)
    ascending = grid.ellipse(-14, -inner_b * 0.45, 14, 14)
    _paint(hu, ascending, artery)
    descending = grid.ellipse(24, inner_b * 0.55, 12, 12)
    _paint(hu, descending, artery)
    centre = grid.ellipse(0, inner_b * 0.1, inner_b * 0.28, inner_b * 0.9)  # mediastinal fat
    occupancy: Array = np.maximum.reduce([heart, ascending, descending, centre])
    return occupancy


def _abdomen(grid: Grid, body: Body, rng: np.random.Generator, hu: Array, phase: str) -> Array:
    """Liver, spleen, kidneys, aorta and bowel gas; returns the liver occupancy."""
    inner_a, inner_b = body.a - body.fat - body.muscle, body.b - body.fat - body.muscle
    artery, liver_hu = _enhance(phase, float(rng.uniform(250, 400)), float(rng.uniform(50, 65)))
    liver = grid.ellipse(-inner_a * 0.38, -inner_b * 0.05, inner_a * 0.55, inner_b * 0.8, 2.3)
    _paint(hu, liver, liver_hu + 8 * ndimage.gaussian_filter(rng.normal(0, 1, grid.shape), 1.5))
    _paint(
        hu,
        grid.ellipse(inner_a * 0.6, inner_b * 0.35, inner_a * 0.22, inner_b * 0.35),
        liver_hu - 5,
    )
    for side in (-1.0, 1.0):
        kidney = grid.ellipse(side * inner_a * 0.35, inner_b * 0.55, 28, 22)
        _paint(hu, kidney, {"none": 30.0, "arterial": 180.0, "portal": 150.0}[phase])
    _paint(hu, grid.ellipse(12, inner_b * 0.55, 11, 11), artery)  # aorta
    for _ in range(int(rng.integers(3, 9))):  # bowel gas
        centre = np.array(
            [
                rng.uniform(grid.zs[0], grid.zs[-1]),
                rng.uniform(-inner_b * 0.7, 0),
                rng.uniform(0, inner_a * 0.7),
            ]
        )
        gas = grid.ellipsoid(centre, rng.uniform(6, 18, 3)) * (1 - liver)
        _paint(hu, gas, -990.0)
    return liver


def _nodule(
    grid: Grid, rng: np.random.Generator, centre: Array, radius: float, malignant: bool
) -> Array:
    """Occupancy of a round (benign-like) or lobulated and spiculated (malignant-like) lesion."""
    box = grid.box(centre, radius * 1.6 + 3 * grid.h)
    out = np.zeros(grid.shape)
    if any(s.stop <= s.start for s in box):
        return out
    z, y, x = np.meshgrid(grid.zs[box[0]], grid.xs[box[1]], grid.xs[box[2]], indexing="ij")
    dz, dy, dx = z - centre[0], y - centre[1], x - centre[2]
    r = np.sqrt(dz**2 + dy**2 + dx**2)
    edge = radius
    if malignant:
        theta, phi = np.arctan2(dy, dx), np.arctan2(dz, np.hypot(dx, dy))
        lobes = 0.22 * np.sin(int(rng.integers(3, 7)) * theta + rng.uniform(0, 6)) * np.cos(2 * phi)
        spikes = 0.25 * np.maximum(0, np.sin(11 * theta + rng.uniform(0, 6)) * np.cos(5 * phi)) ** 6
        edge = radius * (1 + lobes + spikes)
    out[box] = grid.soft(r - edge)
    return out


def place_lesion(
    rng: np.random.Generator,
    grid: Grid,
    organ: Array,
    radius: float,
    taken: Array,
    allowed: npt.NDArray[np.bool_] | None = None,
) -> Array | None:
    """A centre deep enough inside ``organ`` and away from ``taken`` (among the ``allowed``
    voxels, if given), or None."""
    candidates = (organ > 0.99) & (taken < 0.5)
    inside = np.argwhere(candidates if allowed is None else candidates & allowed)
    if inside.size == 0:
        return None
    for _ in range(30):
        k, j, i = inside[int(rng.integers(len(inside)))]
        centre = np.array([grid.zs[k], grid.xs[j], grid.xs[i]])
        box = grid.box(centre, radius * 0.8)
        if organ[box].min() > 0.9 and taken[box].max() < 0.5:
            return centre
    return None


def paint_lesion(
    rng: np.random.Generator,
    grid: Grid,
    hu: Array,
    centre: Array,
    diameter: float,
    malignant: bool,
    section: str,
) -> tuple[Array, LesionTruth]:
    """Paint one lesion of ``diameter`` mm at ``centre`` into ``hu``: its kind (drawn for the
    section: lung nodule types, liver hypo/hyper) and densities come from ``rng``, so the
    same generator state paints the same lesion at another size (a patient's follow-up)."""
    shape = _nodule(grid, rng, centre, diameter / 2, malignant)
    if section == "chest":
        kind = str(
            rng.choice(["solid", "part-solid", "ground-glass"], p=[0.6, 0.2, 0.2])
            if malignant
            else rng.choice(["solid", "ground-glass"], p=[0.85, 0.15])
        )
        if kind == "ground-glass":
            _paint(hu, shape, float(rng.uniform(-650, -350)))
        elif kind == "part-solid":
            _paint(hu, shape, float(rng.uniform(-600, -400)))
            core = _nodule(grid, rng, centre, diameter * rng.uniform(0.15, 0.3), malignant)
            _paint(hu, core, float(rng.uniform(10, 50)))
        else:
            _paint(hu, shape, float(rng.uniform(10, 60)))
        malignant = malignant or kind == "part-solid"
    else:
        kind = str(rng.choice(["liver-hypo", "liver-hyper"], p=[0.7, 0.3]))
        local = float(np.median(hu[shape > 0.5])) if (shape > 0.5).any() else 60.0
        delta = -rng.uniform(25, 55) if kind == "liver-hypo" else rng.uniform(30, 80)
        _paint(hu, shape, local + delta)
    return shape, LesionTruth(kind=kind, diameter_mm=diameter, malignant=malignant)


def _lesions(
    rng: np.random.Generator,
    grid: Grid,
    hu: Array,
    organ: Array,
    section: str,
    count: int | None,
) -> tuple[Array, list[LesionTruth]]:
    occupancy = np.zeros(grid.shape)
    truths: list[LesionTruth] = []
    drawn = int(rng.choice([0, 1, 2, 3], p=[0.35, 0.35, 0.2, 0.1]))
    count = drawn if count is None else count
    malignant_scan = count > 0 and rng.random() < 0.5
    for i in range(count):
        malignant = malignant_scan and (i == 0 or rng.random() < 0.5)
        diameter = float(np.exp(rng.uniform(math.log(3.0), math.log(30.0))))
        centre = place_lesion(rng, grid, organ, diameter / 2, occupancy)
        if centre is None:
            continue
        shape, truth = paint_lesion(rng, grid, hu, centre, diameter, malignant, section)
        occupancy = np.maximum(occupancy, shape)
        truths.append(truth)
    return occupancy, truths


def acquire(hu: Array, acq: Acquisition, rng: np.random.Generator, grid: Grid) -> Array:
    """Slice profile, kernel sharpness, correlated noise and streaks."""
    if acq.thickness_mm > acq.interval_mm * 1.01 or acq.thickness_mm > acq.pixel_mm:
        sigma_z = max(acq.thickness_mm / acq.interval_mm, 1.0) / 2.355
        hu = ndimage.gaussian_filter1d(hu, sigma_z, axis=0)
    sigma, amount = _KERNELS[acq.kernel]
    blurred = ndimage.gaussian_filter(hu, (0, 1.0, 1.0))
    hu = hu + amount * (hu - blurred) if amount > 0 else hu + (-amount) * (blurred - hu)
    white = rng.normal(0, 1, grid.shape)
    texture = ndimage.gaussian_filter(white, (0, sigma, sigma))
    if acq.kernel == "sharp":
        texture = texture - ndimage.gaussian_filter(white, (0, 2.5, 2.5))
    hu = hu + texture * (acq.noise_hu / (texture.std() or 1.0))
    if acq.streaks:
        angle = rng.uniform(0, math.pi, 6)
        for a in angle:
            line = np.abs(grid.x * math.sin(a) - grid.y * math.cos(a))
            hu = hu + rng.uniform(-60, 60) * np.exp(-line / (2 * grid.h))
    return hu


def render_anatomy(
    rng: np.random.Generator, body: Body, acq: Acquisition, grid: Grid, section: str
) -> tuple[Array, Array]:
    """The tissues of a ``section`` ("chest" or "abdomen") on ``grid``, before lesions and the
    acquisition's blur and noise, and the occupancy of the organ lesions grow in (lungs, liver)."""
    hu = np.full(grid.shape, -1000.0)
    inner = _trunk(grid, body, rng, hu)
    _spine(grid, body, rng, hu)
    if section == "chest":
        mediastinum = _mediastinum(grid, body, rng, hu, acq.phase)
        organ = _lungs(grid, body, rng, hu, acq, mediastinum)
        _ribs(grid, body, rng, hu, count=4)
    else:
        organ = _abdomen(grid, body, rng, hu, acq.phase) * inner
        _ribs(grid, body, rng, hu, count=2)
    return hu, organ


def make_scan(
    rng: np.random.Generator,
    *,
    shift: bool = False,
    section: str | None = None,
    lesion_count: int | None = None,
) -> Scan:
    """One anatomical scan with its ground truth (``section``, ``lesion_count``: drawn if None)."""
    body = draw_body(rng, shift)
    acq = draw_acquisition(rng, body, shift)
    grid = Grid(acq)
    section = section or str(rng.choice(["chest", "abdomen"], p=[0.75, 0.25]))
    hu, organ = render_anatomy(rng, body, acq, grid, section)
    lesions, truths = _lesions(rng, grid, hu, organ, section, lesion_count)
    hu = acquire(hu, acq, rng, grid)
    label = "normal"
    if truths:
        label = "malignant" if any(t.malignant for t in truths) else "benign"
    return Scan(
        hu=np.clip(hu, -1024, 3071).astype(np.float32),
        mask=lesions >= 0.5,
        spacing=(acq.interval_mm, acq.pixel_mm, acq.pixel_mm),
        thickness_mm=acq.thickness_mm,
        section=section,
        lesions=tuple(truths),
        label=label,
    )


def indexed_scan(seed: int, index: int, *, shift: bool = False) -> Scan:
    """Scan ``index`` of the stream ``seed``, made from its own generator: any scan can be
    made alone, in any order or process (training sets too large to write as DICOM)."""
    return make_scan(np.random.default_rng([seed, index]), shift=shift)


def generate_anatomical_ct(
    out: Path,
    n: int,
    seed: int,
    *,
    shift: bool = False,
    section: str | None = None,
    lesion_count: int | None = None,
) -> Path:
    """Write ``n`` anatomical CT scans with ground truth into ``out``; return ``out/labels.csv``."""
    rng = np.random.default_rng(seed)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        scan = make_scan(rng, shift=shift, section=section, lesion_count=lesion_count)
        body_part = "CHEST" if scan.section == "chest" else "ABDOMEN"
        rows.append(
            write_case(
                out,
                "anat",
                seed,
                i,
                scan.hu,
                scan.mask,
                scan.label,
                scan.spacing,
                thickness=scan.thickness_mm,
                body_part=body_part,
            )
        )
    return write_labels(out, rows)
