"""The shipped models' recipes as data: what each one trains, on what, with which settings.

The code that trains, calibrates, evaluates and exports them is in
:mod:`training.recipes`; this table holds no torch code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from training.synthetic import CHANGE_LABELS, CT_LABELS, ECG_LABELS, LEADS
from training.trainer import TrainConfig

__all__ = ["EVALUATED_ONLY", "LESION_TASKS", "RECIPES", "REPORT_FROM_MM", "Recipe"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipe:
    name: str
    task: str
    kind: str  # "ct", "ecg" or "longitudinal": which synthetic data and loader
    architecture: str
    parameters: dict[str, Any]
    input_spec: dict[str, Any]
    labels: list[dict[str, Any]]
    classes: tuple[str, ...]
    train: TrainConfig
    # Post-hoc calibration of a classifier: "temperature" (one parameter, the
    # predicted class never changes) or "vector" (a scale and a shift per class).
    calibration: str = "temperature"


#: Segmentation reports count lesions from this diameter (mm) separately (the targets' size).
REPORT_FROM_MM = 5.0

#: Tasks whose output is lesions (masks on the series' grid): evaluated on CT cases with
#: masks, reported as Dice, lesions found and false positives per scan.
LESION_TASKS = ("segmentation", "detection")

RECIPES = {
    r.name: r
    for r in (
        Recipe(
            name="lesion-seg",
            task="segmentation",
            kind="ct",
            architecture="unet3d",
            parameters={"base": 6, "depth": 2, "attention": True},
            input_spec={"modality": ["CT"], "window": [-100.0, 300.0], "patch": [32, 64, 64]},
            labels=[{"name": "lesion", "code": ["52988006", "SCT", "Lesion"], "threshold": 0.5}],
            classes=CT_LABELS,
            train=TrainConfig(epochs=16, batch_size=4, lr=3e-3, patience=6),
        ),
        Recipe(
            name="lesion-class",
            task="classification",
            kind="ct",
            architecture="attention_cnn",
            parameters={"num_classes": 3, "base": 8, "depth": 3},
            input_spec={"modality": ["CT"], "window": [-100.0, 300.0], "size": [32, 64, 64]},
            labels=[
                {"name": "normal", "code": ["17621005", "SCT", "Normal"], "threshold": 0.5},
                {
                    "name": "benign",
                    "code": ["3898006", "SCT", "Neoplasm, benign"],
                    "threshold": 0.5,
                },
                {
                    "name": "malignant",
                    "code": ["363346000", "SCT", "Malignant neoplastic disease"],
                    "threshold": 0.5,
                },
            ],
            classes=CT_LABELS,
            train=TrainConfig(epochs=40, batch_size=8, lr=5e-4, patience=15),
            calibration="vector",
        ),
        Recipe(
            name="ecg-rhythm",
            task="sequence",
            kind="ecg",
            architecture="sequence_rnn",
            parameters={
                "in_channels": 12,
                "num_classes": 3,
                "hidden": 32,
                "cell": "lstm",
                "downsample": 4,
            },
            input_spec={
                "modality": ["ECG"],
                "leads": [f"Lead {x}" for x in LEADS],
                "sampling_hz": 250.0,
                "samples": 2500,
            },
            labels=[
                {
                    "name": "normal",
                    "code": ["426783006", "SCT", "Normal sinus rhythm"],
                    "threshold": 0.5,
                },
                {
                    "name": "af",
                    "code": ["49436004", "SCT", "Atrial fibrillation"],
                    "threshold": 0.5,
                },
                {
                    "name": "st_elevation",
                    "code": ["164931005", "SCT", "ST segment elevation"],
                    "threshold": 0.5,
                },
            ],
            classes=ECG_LABELS,
            train=TrainConfig(epochs=30, batch_size=16, lr=3e-3, patience=8),
        ),
        Recipe(
            name="lesion-change",
            task="progression",
            kind="longitudinal",
            architecture="priors_fusion",
            parameters={"num_classes": 3, "levels": 8, "hidden": 32, "cell": "gru"},
            input_spec={
                "modality": ["CT"],
                "window": [-100.0, 300.0],
                "target_spacing": [3.0, 2.0, 2.0],
                "size": [32, 48, 48],
                "max_priors": 2,
            },
            labels=[
                {
                    "name": "decrease",
                    "code": ["19776001", "SCT", "Decrease in size"],
                    "threshold": 0.5,
                },
                {
                    "name": "stable",
                    "code": ["129723006", "SCT", "No significant changes in the finding"],
                    "threshold": 0.5,
                },
                {
                    "name": "increase",
                    "code": ["15454001", "SCT", "Increase in size"],
                    "threshold": 0.5,
                },
            ],
            classes=CHANGE_LABELS,
            train=TrainConfig(epochs=30, batch_size=8, lr=1e-3, patience=10),
            calibration="vector",
        ),
    )
}

#: Packages made outside the recipes that ``ainode train evaluate`` still reads: the
#: lesion detector is trained and packaged by ``scripts/candidate_probe.py``
#: (``training.detector_package``); this names the cases it is evaluated on (CT with masks)
#: and how its report reads (lesion figures, as for a segmentation model).
EVALUATED_ONLY = {
    "lesion-detect": Recipe(
        name="lesion-detect",
        task="detection",
        kind="ct",
        architecture="candidate_net",
        parameters={},
        input_spec={"modality": ["CT"]},
        labels=[{"name": "lesion", "code": ["52988006", "SCT", "Lesion"], "threshold": 0.5}],
        classes=CT_LABELS,
        train=TrainConfig(),
    )
}
