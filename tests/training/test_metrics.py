"""Metrics against values computed by hand on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import (
    auroc,
    classification_report,
    confusion_matrix,
    dice,
    expected_calibration_error,
    grouped_kfold,
    iou,
    labelled_lesions,
    lesion_detection,
    precision_recall_f1,
)


def test_confusion_precision_recall_f1_by_hand() -> None:
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 1, 0, 1, 2, 2]
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    precision, recall, f1 = precision_recall_f1(cm)
    # class 0: tp 2, predicted 2, actual 3 -> P 1, R 2/3, F1 0.8
    # class 1: tp 1, predicted 2, actual 2 -> P 1/2, R 1/2, F1 1/2
    # class 2: tp 1, predicted 2, actual 1 -> P 1/2, R 1, F1 2/3
    assert precision == pytest.approx([1.0, 0.5, 0.5])
    assert recall == pytest.approx([2 / 3, 0.5, 1.0])
    assert f1 == pytest.approx([0.8, 0.5, 2 / 3])


def test_auroc_by_hand() -> None:
    # positives 0.9, 0.4; negatives 0.5, 0.4, 0.1: pairs (0.9 beats 3), (0.4: beats 0.1,
    # ties 0.4, loses to 0.5) -> (3 + 1 + 0.5) / 6
    assert auroc([1, 1, 0, 0, 0], [0.9, 0.4, 0.5, 0.4, 0.1]) == pytest.approx(4.5 / 6)
    assert auroc([0, 1], [0.2, 0.8]) == 1.0
    with pytest.raises(ValueError, match="one positive and one negative"):
        auroc([1, 1], [0.1, 0.2])


def test_ece_by_hand() -> None:
    # Two cases at confidence 0.9 (one right), one at 0.6 (right), bins of 0.1:
    # bin (0.8, 0.9]: |0.5 - 0.9| * 2/3 ; bin (0.5, 0.6]: |1 - 0.6| * 1/3
    p = [[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]]
    ece, rel = expected_calibration_error(p, [0, 0, 0])
    assert ece == pytest.approx(0.4 * 2 / 3 + 0.4 * 1 / 3)
    assert rel.count.sum() == 3


def test_report_is_consistent() -> None:
    probs = [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]]
    report = classification_report([0, 1, 1, 1], probs, ["a", "b"])
    assert report["accuracy"] == 0.75
    assert report["auroc"]["b"] == pytest.approx(1.0)
    assert report["confusion_matrix"] == [[1, 0], [1, 2]]


def test_dice_iou_and_lesion_detection_by_hand() -> None:
    truth = np.zeros((1, 6, 6), bool)
    truth[0, 0:2, 0:2] = True  # lesion A, 4 voxels
    truth[0, 4:6, 4:6] = True  # lesion B, 4 voxels
    pred = np.zeros_like(truth)
    pred[0, 0:2, 0:3] = True  # covers A plus 2 extra voxels
    pred[0, 4, 0] = True  # a false positive away from any lesion
    # |A∩B| = 4, |pred| = 7, |truth| = 8
    assert dice(pred, truth) == pytest.approx(8 / 15)
    assert iou(pred, truth) == pytest.approx(4 / 11)
    assert lesion_detection(pred, truth) == (2, 1, 1)
    assert dice(np.zeros(3), np.zeros(3)) == 1.0


def test_grouped_folds_never_share_a_patient() -> None:
    patients = ["p1", "p1", "p2", "p3", "p3", "p3", "p4", "p5", "p6", "p6"]
    splits = grouped_kfold(patients, k=3, seed=1)
    seen_test = []
    for train, test in splits:
        assert not {patients[i] for i in train} & {patients[i] for i in test}
        assert sorted(train + test) == list(range(len(patients)))
        seen_test += test
    assert sorted(seen_test) == list(range(len(patients)))  # each case tested once
    with pytest.raises(ValueError, match="k must be between 2"):
        grouped_kfold(patients, k=7)


def test_lesion_floor_is_half_the_smallest_training_lesion() -> None:
    from tests.inference.test_models import _volume
    from training.data import CtCase
    from training.recipes import RECIPES, with_lesion_floor

    mask = np.zeros((10, 20, 20), dtype=bool)
    mask[1:5, 1:5, 1:5] = True  # 64 voxels
    mask[7:9, 10:12, 10:12] = True  # 8 voxels: the smallest lesion
    volume = _volume(mask, spacing=(2.0, 1.0, 1.0))  # 2 mm3 voxels
    case = CtCase(patient_id="p", label=1, volume=volume, mask=mask)
    recipe = with_lesion_floor(RECIPES["lesion-seg"], [case])
    assert recipe.labels[0]["min_volume_mm3"] == 8.0  # half of 8 voxels x 2 mm3
    assert "min_volume_mm3" not in RECIPES["lesion-seg"].labels[0]  # the recipe is not changed


def test_lesion_detection_counts_only_lesions_from_a_size() -> None:
    truth = np.zeros((8, 8, 8), bool)
    truth[0:4, 0:4, 0:4] = True  # 64 voxels of 1 mm3: a 4.96 mm sphere's volume
    truth[6, 6, 6] = True  # 1 mm3: too small to count
    pred = np.zeros_like(truth)
    pred[6, 6, 6] = True  # finds only the small one: not a false positive either
    assert lesion_detection(pred, truth) == (2, 1, 0)
    assert lesion_detection(pred, truth, voxel_mm3=1.0, min_diameter_mm=4.9) == (1, 0, 0)
    assert lesion_detection(pred, truth, voxel_mm3=1.0, min_diameter_mm=5.0) == (0, 0, 0)
    assert lesion_detection(pred, truth, voxel_mm3=8.0, min_diameter_mm=5.0) == (1, 0, 0)


def test_labelled_lesions_join_corners_and_measure_by_volume() -> None:
    truth = np.zeros((10, 10, 10), bool)
    truth[1:3, 1:3, 1:3] = True  # 8 voxels
    truth[3, 3, 3] = True  # touches the first at a corner only: the same lesion
    truth[7:9, 7:9, 7] = True  # 4 voxels, apart
    labels, diameters = labelled_lesions(truth, voxel_mm3=2.0)
    assert labels.max() == 2 and labels[3, 3, 3] == labels[1, 1, 1]
    np.testing.assert_allclose(diameters, np.cbrt(6 * np.array([18.0, 8.0]) / np.pi))
