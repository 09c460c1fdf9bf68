"""Evaluation metrics, written out so each can be checked by hand.

Classification: accuracy, per-class and macro precision / recall / F1, one-vs-rest
AUROC (Mann-Whitney U, ties counted half), confusion matrix, expected calibration
error with its reliability curve. Segmentation: Dice, IoU, and lesion-level
sensitivity and false positives per scan (a lesion is found when a predicted
component overlaps it). Folds: k-fold splits grouped by patient.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = [
    "Reliability",
    "auroc",
    "classification_report",
    "confusion_matrix",
    "detected_lesions",
    "dice",
    "expected_calibration_error",
    "grouped_kfold",
    "iou",
    "lesion_detection",
    "precision_recall_f1",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> IntArray:
    """Rows: true class; columns: predicted class."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        m[t, p] += 1
    return m


def precision_recall_f1(cm: IntArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-class precision, recall and F1 from a confusion matrix (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def auroc(y_true: Sequence[int], score: npt.ArrayLike) -> float:
    """Area under the ROC curve for binary labels: P(score_pos > score_neg), ties half."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs at least one positive and one negative case")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


@dataclass(frozen=True, slots=True)
class Reliability:
    """Per confidence bin: mean confidence, accuracy, and how many cases fell in it."""

    confidence: FloatArray
    accuracy: FloatArray
    count: IntArray


def expected_calibration_error(
    probabilities: npt.ArrayLike, y_true: Sequence[int], bins: int = 10
) -> tuple[float, Reliability]:
    """ECE over equal-width bins of the top-class confidence (Guo et al. 2017)."""
    p = np.asarray(probabilities, dtype=np.float64)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    conf = np.zeros(bins)
    acc = np.zeros(bins)
    count = np.bincount(index, minlength=bins).astype(np.int64)
    for b in range(bins):
        if count[b]:
            conf[b] = confidence[index == b].mean()
            acc[b] = correct[index == b].mean()
    ece = float(np.sum(count / len(confidence) * np.abs(acc - conf)))
    return ece, Reliability(confidence=conf, accuracy=acc, count=count)


def classification_report(
    y_true: Sequence[int], probabilities: npt.ArrayLike, labels: Sequence[str]
) -> dict[str, object]:
    """Everything a model card quotes for a classifier, as plain JSON data."""
    p = np.asarray(probabilities, dtype=np.float64)
    y_pred = p.argmax(axis=1).tolist()
    cm = confusion_matrix(y_true, y_pred, len(labels))
    precision, recall, f1 = precision_recall_f1(cm)
    per_class_auroc = {}
    for c, name in enumerate(labels):
        binary = [int(t == c) for t in y_true]
        if 0 < sum(binary) < len(binary):
            per_class_auroc[name] = auroc(binary, p[:, c])
    ece, reliability = expected_calibration_error(p, y_true)
    return {
        "n": len(y_true),
        "accuracy": float(np.trace(cm) / max(1, cm.sum())),
        "precision": dict(zip(labels, precision.tolist(), strict=True)),
        "recall": dict(zip(labels, recall.tolist(), strict=True)),
        "f1": dict(zip(labels, f1.tolist(), strict=True)),
        "macro_f1": float(f1.mean()),
        "auroc": per_class_auroc,
        "macro_auroc": float(np.mean(list(per_class_auroc.values()))) if per_class_auroc else None,
        "confusion_matrix": cm.tolist(),
        "ece": ece,
        "reliability": {
            "confidence": reliability.confidence.tolist(),
            "accuracy": reliability.accuracy.tolist(),
            "count": reliability.count.tolist(),
        },
    }


def dice(pred: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """2 |A and B| / (|A| + |B|); 1.0 when both are empty."""
    a, b = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def iou(pred: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """|A and B| / |A or B|; 1.0 when both are empty."""
    a, b = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def labelled_lesions(
    truth: npt.ArrayLike, *, voxel_mm3: float = 1.0
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float64]]:
    """The lesions of a mask as labels 1..n (voxels touching at faces, edges or corners
    are one lesion) and each one's diameter (mm, of the sphere of its volume)."""
    structure = np.ones((3,) * np.asarray(truth).ndim, dtype=bool)
    labels, n = ndimage.label(np.asarray(truth, dtype=bool), structure=structure)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:] * voxel_mm3
    return labels, np.cbrt(6 * sizes / np.pi)


def detected_lesions(
    pred: npt.ArrayLike, truth: npt.ArrayLike, *, voxel_mm3: float = 1.0
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], int]:
    """Each true lesion's diameter (mm, of the sphere of its volume) and whether the
    prediction touches it, and the number of predicted components touching none."""
    truth_lab, diameters = labelled_lesions(truth, voxel_mm3=voxel_mm3)
    structure = np.ones((3,) * np.asarray(truth).ndim, dtype=bool)
    pred_lab, n_pred = ndimage.label(np.asarray(pred, dtype=bool), structure=structure)
    found = np.array(
        [(pred_lab[truth_lab == t] > 0).any() for t in range(1, len(diameters) + 1)], bool
    )
    false_pos = sum(1 for q in range(1, n_pred + 1) if not (truth_lab[pred_lab == q] > 0).any())
    return diameters, found, int(false_pos)


def lesion_detection(
    pred: npt.ArrayLike,
    truth: npt.ArrayLike,
    *,
    voxel_mm3: float = 1.0,
    min_diameter_mm: float = 0.0,
) -> tuple[int, int, int]:
    """(true lesions, true lesions found, false-positive components) for one scan.

    With ``min_diameter_mm``, only true lesions at least that large (diameter of
    the sphere of their volume) are counted; a prediction touching a smaller
    true lesion is not a false positive either.
    """
    diameters, found, false_pos = detected_lesions(pred, truth, voxel_mm3=voxel_mm3)
    counted = diameters >= min_diameter_mm
    return int(counted.sum()), int((found & counted).sum()), false_pos


def grouped_kfold(
    groups: Sequence[Hashable], k: int, seed: int = 0
) -> list[tuple[list[int], list[int]]]:
    """k (train, test) index splits in which no group (patient) is on both sides."""
    unique = sorted(set(groups), key=str)
    if k < 2 or k > len(unique):
        raise ValueError(f"k must be between 2 and the number of groups ({len(unique)}), got {k}")
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[g]: i % k for i, g in enumerate(order)}
    splits = []
    for fold in range(k):
        test = [i for i, g in enumerate(groups) if fold_of[g] == fold]
        train = [i for i, g in enumerate(groups) if fold_of[g] != fold]
        splits.append((train, test))
    return splits
