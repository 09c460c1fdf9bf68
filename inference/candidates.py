"""Lesion candidates and their outlines: the first and last stage of the detector.

The U-Net of ``training.patch_seg`` needs a GPU (a step of 8 patches of 32 x 96 x 96 takes
8-10 s on two CPU cores) and, after its first lease, still missed every nodule under 7 mm.
This is the classical alternative for small nodules (the LUNA16 pipeline): a blob filter
proposes a few hundred places per scan, and a small 3-D CNN looks at each one and tells
lesion from vessel seen end-on, airway wall or rib tip (``inference.architectures.CandidateNet``,
trained by ``training.candidate_net``, run by ``inference.detect``). Numpy and scipy only:
training and the worker find the same candidates (their patches: ``inference.patches``).

- ``regrid``: the scan on an isotropic grid of ``ISO_MM``.
- ``find_candidates``: local maxima of the scale-normalised Laplacian of Gaussian
  (``-σ² ∇²G``, maximum over scales matched to lesions of 3-30 mm): bright blobs anywhere
  in the body (nodules, hyperdense liver lesions) and dark blobs in soft tissue (hypodense
  liver lesions), the strongest ``bright_keep`` and ``dark_keep`` of each; with
  ``organ_keep``, also the strongest blobs of the volume clipped to solid-organ values,
  inside solid organs (faint liver lesions, which every fat, air and bone edge outranks);
  with ``ground_glass_keep``, faint blobs in the lungs once the vessels are opened away;
  with ``organ_snr_keep``, blobs inside solid organs ranked by their contrast against the
  organ's own noise, the organ's surroundings filled in so its borders give none.
- ``suppress``: one detection per place (non-maximum suppression by distance).
- ``outline``: a detection's voxels: the part of its blob brighter (darker) than halfway
  between its inside and its surroundings, connected to its centre, within 1.5 times the
  blob's radius.
- ``lesion_outline``: a detection outlined at its lesion's scale: where its own outline
  runs into its bound, of it and the outlines of the larger candidates of the same sign
  that hold it, the one with the steepest border.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = [
    "ISO_MM",
    "Candidates",
    "find_candidates",
    "lesion_outline",
    "outline",
    "regrid",
    "suppress",
]

#: Voxel size (mm) of the grid candidates are found and cut on.
ISO_MM = 1.25
#: Gaussian scales (mm): a sphere of diameter d answers most at sigma = d / (2 sqrt 3): 3-30 mm.
SCALES_MM = (1.0, 1.5, 2.2, 3.2, 4.6, 6.5, 9.0)
#: HU range of solid organs (liver, spleen, kidneys, with or without contrast).
ORGAN = (-20.0, 250.0)
#: HU range of ground glass over lung: what the ground-glass stream sees.
GROUND_GLASS = (-850.0, -400.0)
#: Radius (voxels) of the ball that opens the vessels away before it (5 mm across).
_OPEN_RADIUS = 2
#: Scales (mm) of the organ contrast stream: the smaller ones answer to noise more than to
#: a faint lesion (its smallest lesions, 5 mm, still answer at 3.2 mm).
_ORGAN_SNR_SCALES = SCALES_MM[3:]
#: Gaussian (voxels) that fills an organ's surroundings with its local mean (7.5 mm).
_FILL_SIGMA = 6.0
#: Holes in an organ up to this many pixels of a slice are organ (a 30 mm lesion darker
#: than ``ORGAN`` is 450); larger ones (the abdomen inside its muscle wall) are not.
_HOLE_PX = 600
#: ``Candidates.family`` codes of blobs brighter than around them.
BRIGHT_FAMILIES = (0, 2, 4, 5)
#: Larger blobs ``lesion_outline`` tries, largest first.
_LARGER = 6
#: How far (blob radii) an ``outline`` may reach from its centre.
_OUTLINE_REACH = 1.5


@dataclass(frozen=True, slots=True)
class Candidates:
    """Candidate places on the ``regrid`` grid, strongest first within each family."""

    points: npt.NDArray[np.int64]  # (n, 3) voxel indices (z, y, x)
    # (n,) blob response (HU-like; families 5 and 6: a ratio to the organ's noise)
    response: npt.NDArray[np.float32]
    # (n,) 0 bright, 1 dark, 2 bright in an organ, 3 dark in one, 4 ground glass in a lung,
    # 5 bright and 6 dark in an organ against its noise
    family: npt.NDArray[np.uint8]
    diameter_mm: npt.NDArray[np.float32]  # (n,) the sphere the strongest scale matches

    def __len__(self) -> int:
        return len(self.points)

    @property
    def bright(self) -> npt.NDArray[np.bool_]:
        """True where the blob is brighter than around it."""
        return np.isin(self.family, BRIGHT_FAMILIES)


def regrid(
    volume: npt.NDArray[np.number[Any]], spacing: Sequence[float], *, order: int = 1
) -> npt.NDArray[np.float32]:
    """``volume`` with voxels of ``spacing`` (z, y, x mm) resampled to ``ISO_MM`` cubes
    (``order=0``: nearest voxel, for labels)."""
    factors = [float(s) / ISO_MM for s in spacing]
    return np.asarray(ndimage.zoom(volume.astype(np.float32), factors, order=order), np.float32)


@dataclass(frozen=True, slots=True)
class _Response:
    """Strongest scale-normalised LoG response over ``SCALES_MM`` and the scale that gave it."""

    value: npt.NDArray[np.float32]
    scale: npt.NDArray[np.int8]  # index into SCALES_MM


def _responses(
    hu: npt.NDArray[np.floating],
    *,
    scales: Sequence[float] = SCALES_MM,
    noise_in: npt.NDArray[np.bool_] | None = None,
) -> tuple[_Response, _Response]:
    """Bright and dark blob responses of ``hu`` over ``scales`` (of ``SCALES_MM``); with
    ``noise_in``, each scale's response in units of its own robust spread there (median
    absolute deviation): a ratio to noise, comparable across scales."""
    bright = _Response(np.full(hu.shape, -np.inf, np.float32), np.zeros(hu.shape, np.int8))
    dark = _Response(np.full(hu.shape, -np.inf, np.float32), np.zeros(hu.shape, np.int8))
    for k, scale in enumerate(SCALES_MM):
        if scale not in scales:
            continue
        sigma = scale / ISO_MM
        r = np.asarray(-(sigma**2) * ndimage.gaussian_laplace(hu, sigma), np.float32)
        if noise_in is not None and noise_in.any():
            within = r[noise_in]
            spread = 1.4826 * float(np.median(np.abs(within - np.median(within))))
            r /= max(spread, 1e-3)
        for out, signed in ((bright, r), (dark, -r)):
            stronger = signed > out.value
            out.value[stronger] = signed[stronger]
            out.scale[stronger] = k
    return bright, dark


def _peaks(
    response: npt.NDArray[np.float32], allowed: npt.NDArray[np.bool_], keep: int
) -> npt.NDArray[np.int64]:
    peaks = (response == ndimage.maximum_filter(response, size=3)) & allowed & (response > 0)
    points = np.argwhere(peaks)
    order = np.argsort(-response[peaks], kind="stable")[:keep]
    return points[order].astype(np.int64)


def find_candidates(
    hu: npt.NDArray[np.float32],
    *,
    bright_keep: int = 600,
    dark_keep: int = 200,
    organ_keep: int = 0,
    ground_glass_keep: int = 0,
    organ_snr_keep: int = 0,
) -> Candidates:
    """Blob candidates of an isotropic HU volume (``regrid``): bright ones anywhere but the
    air around the body, dark ones in soft tissue only (-300 HU and up around them), and,
    with ``organ_keep``, the strongest bright and dark blobs of the volume clipped to
    ``ORGAN`` inside solid organs: there a liver lesion 20-50 HU off its liver is not
    outranked by every edge between fat, air and bone; with ``ground_glass_keep``, the
    strongest blobs of the lungs clipped to ``GROUND_GLASS`` after a grey opening with a
    5 mm ball: there a ground-glass nodule (-650 to -350 HU) is not outranked by every
    vessel, which the opening removes (thinner than the ball) and the clipping flattens;
    with ``organ_snr_keep``, the strongest bright and dark blobs inside solid organs by their
    ratio to the organ's noise (``_organ_snr``): there a liver lesion 15-40 HU off its liver
    in 20 HU of noise is not outranked by the noise's own small blobs."""
    bright, dark = _responses(hu)
    in_body = hu > -990
    soft = ndimage.uniform_filter(hu, 5) > -300
    # (family code, response, points): the codes of ``Candidates.family``
    families = [(0, bright, _peaks(bright.value, in_body, bright_keep))]
    families.append((1, dark, _peaks(dark.value, in_body & soft, dark_keep)))
    if organ_keep:
        clipped = np.clip(hu, *ORGAN)
        o_bright, o_dark = _responses(clipped)
        # no air, fat or bone within a voxel: the peaks of the edges around them stay out
        solid = (ndimage.minimum_filter(hu, 3) > ORGAN[0]) & (
            ndimage.maximum_filter(hu, 3) < ORGAN[1]
        )
        families.append((2, o_bright, _peaks(o_bright.value, solid, organ_keep)))
        families.append((3, o_dark, _peaks(o_dark.value, solid, organ_keep)))
    if ground_glass_keep:
        families.extend(_ground_glass(hu, ground_glass_keep))
    if organ_snr_keep:
        families.extend(_organ_snr(hu, organ_snr_keep))
    points = np.concatenate([p for _, _, p in families]).reshape(-1, 3)
    response = np.concatenate([r.value[tuple(p.T)] for _, r, p in families]).astype(np.float32)
    family = np.concatenate([np.full(len(p), k, np.uint8) for k, _, p in families])
    scale = np.concatenate([r.scale[tuple(p.T)] for _, r, p in families]).astype(np.intp)
    # a sphere of diameter d answers most at sigma = d / (2 sqrt 3)
    diameter = (2 * np.sqrt(3) * np.asarray(SCALES_MM, np.float32))[scale]
    return Candidates(
        points=points, response=response, family=family, diameter_mm=diameter.astype(np.float32)
    )


def _ground_glass(
    hu: npt.NDArray[np.float32], keep: int
) -> list[tuple[int, _Response, npt.NDArray[np.int64]]]:
    """Family 4, ground glass: bright blobs of the opened, clipped lungs."""
    z, y, x = np.ogrid[tuple(slice(-_OPEN_RADIUS, _OPEN_RADIUS + 1) for _ in range(3))]
    ball = z**2 + y**2 + x**2 <= _OPEN_RADIUS**2
    opened = ndimage.grey_opening(np.clip(hu, *GROUND_GLASS), footprint=ball)
    response, _ = _responses(opened)
    lung = ndimage.uniform_filter(hu, 9) < -500
    return [(4, response, _peaks(response.value, lung, keep))]


def _organ_snr(
    hu: npt.NDArray[np.float32], keep: int
) -> list[tuple[int, _Response, npt.NDArray[np.int64]]]:
    """Families 5 and 6: blobs of solid organs at ``_ORGAN_SNR_SCALES``, each scale's response
    over its spread inside the organs. Outside the organs the volume is filled with the
    organs' local mean (a normalised convolution), so an organ's border is no edge; a hole
    of a slice up to ``_HOLE_PX`` pixels (a lesion darker than ``ORGAN``) counts as organ."""
    smooth = ndimage.gaussian_filter(hu, 1.0)
    organ = ndimage.binary_opening((smooth > ORGAN[0]) & (smooth < ORGAN[1]), iterations=2)
    organ = _with_small_holes(organ)
    weight = ndimage.gaussian_filter(organ.astype(np.float32), _FILL_SIGMA)
    local = ndimage.gaussian_filter(np.where(organ, hu, 0.0).astype(np.float32), _FILL_SIGMA)
    local /= np.maximum(weight, 1e-3)
    filled = np.where(organ, np.clip(hu, ORGAN[0] - 80.0, ORGAN[1]), local).astype(np.float32)
    inner = ndimage.binary_erosion(organ, iterations=2)
    bright, dark = _responses(filled, scales=_ORGAN_SNR_SCALES, noise_in=inner)
    return [
        (5, bright, _peaks(bright.value, inner, keep)),
        (6, dark, _peaks(dark.value, inner, keep)),
    ]


def _with_small_holes(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """``mask`` with the holes of each slice up to ``_HOLE_PX`` pixels filled."""
    out = mask.copy()
    for z, plane in enumerate(mask):
        labels, n = ndimage.label(ndimage.binary_fill_holes(plane) & ~plane)
        if n:
            small = np.bincount(labels.ravel()) <= _HOLE_PX
            small[0] = False
            out[z] |= small[labels]
    return out


def suppress(
    points: npt.NDArray[np.int64], scores: npt.NDArray[np.floating], radius: float
) -> npt.NDArray[np.int64]:
    """Indices of the points kept, best score first: each drops every weaker point within
    ``radius`` voxels of it."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    kept = np.empty((len(order), 3), np.int64)
    index: list[int] = []
    for i in order:
        if index and (np.sum((kept[: len(index)] - points[i]) ** 2, axis=1) <= radius**2).any():
            continue
        kept[len(index)] = points[i]
        index.append(int(i))
    return np.asarray(index, np.int64)


def outline(
    hu: npt.NDArray[np.float32],
    centre: npt.NDArray[np.int64],
    diameter_mm: float,
    *,
    bright: bool,
) -> tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]]:
    """A detection's voxels on the ``regrid`` grid, as (where, mask): the lightly smoothed
    volume thresholded halfway between the blob's inside and the median of a shell at 1.5-2
    radii around it, the part connected to the centre, within 1.5 radii (``diameter_mm``:
    the blob's, ``Candidates.diameter_mm``). The inside is the fainter of its centre (mean
    of 3³) and the median within 0.8 radii: a part-solid nodule's threshold then falls
    below its ground glass, not between its solid core and the lung (on 95 one-nodule chest
    scans, seeds 9000-9119: outline Dice of the 11 part-solid nodules found 0.46 -> 0.58,
    the 58 solid 0.84 either way). A centre that falls outside its own threshold (noise)
    gets the sphere of the blob's diameter."""
    r = _radius(diameter_mm)
    reach = int(np.ceil(2 * r)) + 2
    where = tuple(
        slice(max(0, int(p) - reach), min(n, int(p) + reach + 1))
        for p, n in zip(centre, hu.shape, strict=True)
    )
    sub = ndimage.gaussian_filter(hu[where].astype(np.float32), 0.7)
    at = _local(centre, where)
    zz, yy, xx = np.ogrid[tuple(slice(-a, n - a) for a, n in zip(at, sub.shape, strict=True))]
    dist = np.sqrt(zz**2 + yy**2 + xx**2)
    core = sub[tuple(slice(max(0, a - 1), a + 2) for a in at)].mean()
    shell = (dist >= 1.5 * r) & (dist <= 2 * r + 1)
    around = float(np.median(sub[shell])) if shell.any() else -1000.0
    inner = float(np.median(sub[dist <= 0.8 * r]))
    level = ((min(core, inner) if bright else max(core, inner)) + around) / 2
    region = ((sub > level) if bright else (sub < level)) & (dist <= _OUTLINE_REACH * r)
    labels, _ = ndimage.label(region)
    mine = labels[at]
    mask = labels == mine if mine else dist <= r
    return (where[0], where[1], where[2]), np.asarray(mask, np.bool_)


def lesion_outline(
    hu: npt.NDArray[np.float32], found: Candidates, i: int
) -> tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]]:
    """Detection ``i`` of ``found`` outlined at its lesion's scale, as ``outline`` returns it.

    The best-scored candidate of a large lesion is often a small blob inside it (the noise
    or texture of an 18 mm liver lesion answers at 5 mm), and ``outline`` at that blob's
    scale keeps a sliver: its region runs into the 1.5 radii it may take. Where it does,
    the larger candidates of the same sign whose sphere holds the detection's centre are
    outlined, largest first (up to ``_LARGER``); of those whose own outline holds that
    centre too and the detection's own, the one with the steepest border (``_edge``) is
    the outline: a larger scale's threshold can lie on the slope around a lesion whose own
    outline was right. An outline that closes within its bound is a whole object (a
    nodule beside a vessel or the heart) and stays as it is. On the 64 validation scans
    (seeds 1202 and 1203) the outline Dice of the 31 lesions >= 5 mm that
    ``models/lesion-detect`` finds went 0.813 -> 0.851 (0.849 with the first larger outline
    taken; held out 0.741 -> 0.797 shifted, 0.826 -> 0.841 ordinary); no other rule tried
    did as well (docs/lesion-seg-anatomy.md)."""
    centre = found.points[i]
    bright = bool(found.bright[i])
    diameter = float(found.diameter_mm[i])
    where, mask = outline(hu, centre, diameter, bright=bright)
    if not _reaches_bound(where, mask, centre, _radius(diameter)):
        return where, mask
    reach = np.linalg.norm((found.points - centre) * ISO_MM, axis=1)
    larger = np.flatnonzero(
        (found.bright == bright)
        & (found.diameter_mm > diameter * 1.01)
        & (reach <= found.diameter_mm / 2)
    )
    options = [(where, mask)]
    for j in larger[np.argsort(-found.diameter_mm[larger], kind="stable")][:_LARGER]:
        big_where, big = outline(hu, found.points[j], float(found.diameter_mm[j]), bright=bright)
        at = _local(centre, big_where)
        if all(0 <= a < n for a, n in zip(at, big.shape, strict=True)) and big[at]:
            options.append((big_where, big))
    return max(options, key=lambda o: _edge(hu, *o))  # of equals the first: its own


def _edge(
    hu: npt.NDArray[np.float32], where: tuple[slice, slice, slice], mask: npt.NDArray[np.bool_]
) -> float:
    """Mean gradient magnitude (Gaussian, 1 voxel) on an outline's border voxels: a lesion's
    own edge is steeper than the soft tissue or noise an outline at the wrong scale cuts."""
    border = mask & ~ndimage.binary_erosion(mask)
    if not border.any():
        return 0.0
    gradient = ndimage.gaussian_gradient_magnitude(hu[where].astype(np.float32), 1.0)
    return float(gradient[border].mean())


def _reaches_bound(
    where: tuple[slice, slice, slice],
    mask: npt.NDArray[np.bool_],
    centre: npt.NDArray[np.int64],
    radius: float,
) -> bool:
    """Whether an ``outline`` of a blob of ``radius`` voxels comes within half a voxel of
    the ``_OUTLINE_REACH`` radii it may take: the region goes on beyond it."""
    at = _local(centre, where)
    zz, yy, xx = np.ogrid[tuple(slice(-a, n - a) for a, n in zip(at, mask.shape, strict=True))]
    rim = np.sqrt(zz**2 + yy**2 + xx**2) >= _OUTLINE_REACH * radius - 0.5
    return bool((mask & rim).any())


def _radius(diameter_mm: float) -> float:
    """A blob's radius in voxels of ``ISO_MM``, at least one: what ``outline`` works in."""
    return max(diameter_mm / 2 / ISO_MM, 1.0)


def _local(point: npt.NDArray[np.int64], where: tuple[slice, ...]) -> tuple[int, int, int]:
    """``point`` of the whole grid as an index into the block ``where`` (may lie outside)."""
    k, j, i = (int(p) - w.start for p, w in zip(point, where, strict=True))
    return k, j, i
