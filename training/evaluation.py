"""Held-out evaluation of a recipe's network through the worker's execution path.

Segmentation and detection: Dice and IoU per scan, lesions found and false positives per scan
(after the worker's own post-processing), the targets' terms (lesions from
``REPORT_FROM_MM``, lesion-free scans without a false positive); classification:
``training.metrics.classification_report``. Size and CPU time per case beside them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from inference.detect import voxel_probabilities
from inference.package import LoadedModel
from inference.postprocess import label_lesions
from training.catalog import LESION_TASKS, REPORT_FROM_MM, Recipe
from training.data import CtCase
from training.metrics import classification_report, detected_lesions, dice, iou
from training.recipes import Case, predict_probs

__all__ = ["evaluate", "lesion_figures"]


def _case(pred: np.ndarray, mask: np.ndarray, voxel_mm3: float) -> dict[str, Any]:
    """One scan's counts: its Dice and IoU (None where neither truth nor prediction has a
    voxel), lesions and those found (all, and from ``REPORT_FROM_MM``), false positives."""
    diameters, found, n_fp = detected_lesions(pred, mask, voxel_mm3=voxel_mm3)
    sized = diameters >= REPORT_FROM_MM
    scored = bool(mask.any() or pred.any())
    return {
        "dice": dice(pred, mask) if scored else None,
        "iou": iou(pred, mask) if scored else None,
        "lesions": len(found),
        "found": int(found.sum()),
        "sized": int(sized.sum()),
        "sized_found": int((found & sized).sum()),
        "false_positives": int(n_fp),
        "lesion_free": not bool(mask.any()),
    }


def lesion_figures(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The lesion figures of scans' counts (:func:`evaluate`'s ``per_case``): over all of
    them, or over those a domain accepts (``ainode train evaluate``'s ``accepted_only``)."""
    dices = [r["dice"] for r in rows if r["dice"] is not None]
    ious = [r["iou"] for r in rows if r["iou"] is not None]
    truth_n = sum(r["lesions"] for r in rows)
    sized_n = sum(r["sized"] for r in rows)
    free = sum(1 for r in rows if r["lesion_free"])
    clean = sum(1 for r in rows if r["lesion_free"] and r["false_positives"] == 0)
    return {
        "dice_mean": float(np.mean(dices)) if dices else None,
        "dice_sd": float(np.std(dices)) if dices else None,
        "dice_all": [round(d, 4) for d in dices],
        "iou_mean": float(np.mean(ious)) if ious else None,
        "lesion_sensitivity": sum(r["found"] for r in rows) / max(1, truth_n),
        "false_positives_per_scan": sum(r["false_positives"] for r in rows) / max(1, len(rows)),
        "lesions": truth_n,
        # The targets' terms: lesions from 5 mm (diameter of a sphere of their
        # volume), and lesion-free scans without a single false positive.
        f"lesion_sensitivity_from_{REPORT_FROM_MM:g}mm": (
            sum(r["sized_found"] for r in rows) / sized_n if sized_n else None
        ),
        f"lesions_from_{REPORT_FROM_MM:g}mm": sized_n,
        "lesion_free_scans": free,
        "lesion_free_scans_clean": clean / free if free else None,
    }


def evaluate(
    recipe: Recipe,
    model: LoadedModel,
    cases: Sequence[Case],
    watch: Callable[[int], AbstractContextManager[object]] = lambda _i: nullcontext(),
) -> dict[str, Any]:
    """Held-out metrics of ``model`` through the worker's execution path, plus size and cost.

    ``model``: a package as the worker loads it, or a network in training as
    :func:`training.recipes.as_worker_model` wraps it with its recipe's spec.

    ``watch(i)`` is entered around case ``i``'s forward pass: what else needs that
    pass (the domain check's features, :mod:`training.folders`) takes it from there
    instead of running the network again.
    """
    params = sum(p.numel() for p in model.module.parameters())
    report: dict[str, Any] = {
        "n": len(cases),
        "parameters": params,
        "size_mb": round(params * 4 / 1e6, 3),
    }
    started = time.perf_counter()
    if recipe.task in LESION_TASKS:
        rows = []
        for i, c in enumerate(cases):
            assert isinstance(c, CtCase) and c.mask is not None
            # The worker's post-processing (threshold, lesion volume floor), not a second one.
            with watch(i):
                prob = voxel_probabilities(model, c.volume, batch_size=4, amp=False)[0]
            pred = label_lesions(prob, c.volume, model.spec.labels[0])[1] > 0
            rows.append(_case(pred, c.mask, c.volume.voxel_volume_mm3))
        report.update(lesion_figures(rows))
        report["per_case"] = rows
    else:
        predicted = []
        for i, c in enumerate(cases):
            with watch(i):
                predicted.append(predict_probs(recipe, model, c))
        probs = np.stack(predicted)
        report.update(classification_report([c.label for c in cases], probs, list(recipe.classes)))
        report["probabilities"] = probs.round(4).tolist()
        report["labels"] = [c.label for c in cases]
    report["ms_per_case_cpu"] = round(1000 * (time.perf_counter() - started) / len(cases), 1)
    return report
