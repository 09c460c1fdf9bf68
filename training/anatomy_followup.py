"""Longitudinal patients on the same anatomy: 3-4 anatomical CT studies each, lesions that change.

A patient's anatomy (body, lungs with their vessel trees and airways, heart,
spine, ribs; or liver, spleen, kidneys, bowel gas) is rendered once, in
millimetres, on a fine reference grid (1 mm or the finest visit's spacing),
with the patient's lesions painted into it at each visit's size. Each visit is
then a new acquisition of that same patient, as :mod:`training.anatomy` draws
one: its own pixel spacing, slice thickness and interval, field of view,
kernel, noise and streaks, the patient lying up to 4 mm differently. The
reference is blurred to the visit's voxel size and sampled on the visit's grid
(partial volume), then the visit's slice profile, kernel and correlated noise
are applied (:func:`training.anatomy.acquire`). The contrast phase is the
patient's protocol, the same at every visit.

Lesions: one or two lung nodules (or liver lesions) of a kind, shape and
density that stay what they are; all of a patient's lesions change alike
between consecutive studies, each with its own fixed size factor (0.9-1.1).
A study's label is the change since the previous study, as in
:func:`training.synthetic.generate_longitudinal` — ``decrease``: radius
x0.55-0.75, ``stable``: x0.93-1.07, ``increase``: x1.3-1.6 — and a patient's
first study has none (nor has any study of a patient in whom no lesion could be placed:
rare; such studies are priors only). Studies are 2-8 months apart. ``masks/<series uid>.npy``
holds each study's lesion voxels (at least half inside a lesion).

``shift=True``: bodies and acquisitions from the ranges :mod:`training.anatomy`
never uses in training. Same seed, same bytes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from training.anatomy import (
    Acquisition,
    Grid,
    acquire,
    draw_acquisition,
    draw_body,
    paint_lesion,
    place_lesion,
    render_anatomy,
)
from training.synthetic import follow_up_classes, make_uid, write_ct, write_labels

__all__ = ["FollowUpStudy", "generate_anatomical_longitudinal", "make_patient"]

Array = npt.NDArray[np.float64]

_REFERENCE_MM = 1.0  # the reference grid's spacing at most
_OFFSET_MM = 4.0  # how differently the patient lies at each visit, at most, per axis
_MARGIN_MM = 6.0


@dataclass(frozen=True, slots=True)
class FollowUpStudy:
    hu: npt.NDArray[np.float32]  # (z, y, x)
    mask: npt.NDArray[np.bool_]
    spacing: tuple[float, float, float]
    thickness_mm: float
    day: int  # days after the patient's first study
    section: str  # "chest" or "abdomen"
    offset_mm: tuple[float, float, float]  # where the patient lay (z, y, x) against the grid
    label: str  # change since the previous study; "" for the first


@dataclass(frozen=True, slots=True)
class _Plan:
    centre: Array  # mm, on the reference grid's axes (z, y, x)
    malignant: bool
    radii: list[float]  # per visit


def _reference(visits: list[Acquisition], extent_mm: float) -> Acquisition:
    """A grid finer than every visit's, covering each one wherever the patient lies."""
    pixel = min(_REFERENCE_MM, *(a.pixel_mm for a in visits))
    interval = min(_REFERENCE_MM, *(a.interval_mm for a in visits))
    half = max((a.matrix - 1) / 2 * a.pixel_mm for a in visits) + _OFFSET_MM + _MARGIN_MM
    slices = math.ceil((extent_mm + 2 * (_OFFSET_MM + _MARGIN_MM)) / interval)
    return dataclasses.replace(
        visits[0],
        pixel_mm=pixel,
        interval_mm=interval,
        slices=slices,
        matrix=math.ceil(2 * half / pixel) + 1,
    )


def _sample(
    references: Sequence[Array],
    ref: Grid,
    ref_acq: Acquisition,
    acq: Acquisition,
    grid: Grid,
    offset: Array,
) -> list[Array]:
    """``references`` as a visit's voxels (``acq`` on its ``grid``) see them: blurred to
    their size, sampled at their centres (the patient moved by ``offset`` mm), linear
    between reference voxels; the coordinates computed once for all of them."""
    steps = (ref_acq.interval_mm, ref_acq.pixel_mm, ref_acq.pixel_mm)
    sizes = (acq.interval_mm, acq.pixel_mm, acq.pixel_mm)
    sigma = [
        math.sqrt(max(v * v - r * r, 0.0)) / 2.355 / r for v, r in zip(sizes, steps, strict=True)
    ]
    axes = [
        (mine + shift - theirs[0]) / step
        for mine, theirs, shift, step in zip(
            (grid.zs, grid.xs, grid.xs), (ref.zs, ref.xs, ref.xs), offset, steps, strict=True
        )
    ]
    coords = np.meshgrid(*axes, indexing="ij")
    return [
        ndimage.map_coordinates(
            ndimage.gaussian_filter(reference, sigma), coords, order=1, mode="nearest"
        )
        for reference in references
    ]


def make_patient(seed: int, index: int, *, shift: bool = False) -> list[FollowUpStudy]:
    """Patient ``index`` of the stream ``seed``: its studies in time order."""

    def rng(*stream: int) -> np.random.Generator:
        return np.random.default_rng([seed, index, *stream])

    patient = rng(0)
    body = draw_body(patient, shift)
    section = str(patient.choice(["chest", "abdomen"], p=[0.75, 0.25]))
    count = int(patient.choice([3, 4]))
    phase = str(patient.choice(["none", "arterial", "portal"]))
    classes, radii = follow_up_classes(patient, float(patient.uniform(3.5, 9.0)), count - 1)
    # A slab deep enough to hold the largest lesion at every visit, wherever the patient lies.
    extent = max(float(patient.uniform(40, 70)), 2 * (max(radii) * 1.1 + _OFFSET_MM) + 10)
    visits = []
    for t in range(count):
        acq = draw_acquisition(rng(1, t), body, shift)
        visits.append(
            dataclasses.replace(acq, phase=phase, slices=max(12, round(extent / acq.interval_mm)))
        )
    ref_acq = _reference(visits, extent)
    ref = Grid(ref_acq)
    anatomy, organ = render_anatomy(rng(2), body, ref_acq, ref, section)
    plans: list[_Plan] = []
    taken = np.zeros(ref.shape)
    # Lesions lie within every visit's slab, wherever the patient lies.
    band = np.broadcast_to(np.abs(ref.z) <= extent / 2 - _OFFSET_MM - max(radii) * 1.1, ref.shape)
    for j in range(int(patient.choice([1, 2]))):
        spread = float(patient.uniform(0.9, 1.1))
        sizes = [r * spread for r in radii]
        centre = place_lesion(patient, ref, organ, max(sizes), taken, band)
        if centre is None:
            continue
        plans.append(_Plan(centre=centre, malignant=j == 0 and patient.random() < 0.5, radii=sizes))
        taken = np.maximum(taken, ref.ellipsoid(centre, np.full(3, max(sizes) * 1.5)))
    studies = []
    day = 0
    for t, acq in enumerate(visits):
        if t:
            day += int(rng(3, t).integers(60, 240))
        hu = anatomy.copy()
        occupancy = np.zeros(ref.shape)
        for j, plan in enumerate(plans):
            # The same generator state each visit: the same kind, shape and density.
            shape, _truth = paint_lesion(
                rng(4, j), ref, hu, plan.centre, 2 * plan.radii[t], plan.malignant, section
            )
            occupancy = np.maximum(occupancy, shape)
        offset = rng(5, t).uniform(-_OFFSET_MM, _OFFSET_MM, 3)
        grid = Grid(acq)
        seen, lesions = _sample([hu, occupancy], ref, ref_acq, acq, grid, offset)
        pixels = acquire(seen, acq, rng(6, t), grid)
        studies.append(
            FollowUpStudy(
                hu=np.clip(pixels, -1024, 3071).astype(np.float32),
                mask=lesions >= 0.5,
                spacing=(acq.interval_mm, acq.pixel_mm, acq.pixel_mm),
                thickness_mm=acq.thickness_mm,
                day=day,
                section=section,
                offset_mm=(float(offset[0]), float(offset[1]), float(offset[2])),
                label=classes[t - 1] if t and plans else "",
            )
        )
    return studies


def generate_anatomical_longitudinal(out: Path, n: int, seed: int, *, shift: bool = False) -> Path:
    """Write ``n`` patients' studies with their masks into ``out``; return ``out/labels.csv``
    (one row per study; a patient's first study has no label)."""
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        patient = f"SYN-ANATLONG-{seed}-{i:04d}"
        first = np.datetime64("2023-01-01") + int(
            np.random.default_rng([seed, i, 7]).integers(0, 365)
        )
        studies = make_patient(seed, i, shift=shift)
        body_part = "CHEST" if studies[0].section == "chest" else "ABDOMEN"
        for t, study in enumerate(studies):
            study_uid = make_uid("anat-long", seed, i, t)
            series_uid = make_uid("anat-long-series", seed, i, t)
            write_ct(
                out / "studies" / f"{i:04d}" / f"{t}",
                study.hu,
                study.spacing,
                0.0,
                patient=patient,
                study=study_uid,
                series=series_uid,
                date=str(first + study.day).replace("-", ""),
                thickness=study.thickness_mm,
                body_part=body_part,
            )
            np.save(out / "masks" / f"{series_uid}.npy", study.mask)
            rows.append(
                {
                    "patient_id": patient,
                    "study_uid": study_uid,
                    "series_uid": series_uid,
                    "label": study.label,
                }
            )
    return write_labels(out, rows)
