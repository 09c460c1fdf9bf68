"""Training the recipes (``training.catalog``): data, loss, validation, calibration
and export (held-out evaluation: ``training.evaluation``).

Each recipe trains on cases read by the node's loaders and validates through
the worker's own execution path (``inference.execute``), so a model is judged
exactly as it will run.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn
from torch.nn import functional as F

from inference.architectures import PriorsFusion, build
from inference.execute import classify, predict_change, predict_sequence, segment
from inference.package import LoadedModel
from inference.preprocess import prepare_history, prepare_waveform, window
from inference.spec import read_spec
from training.calibration import Calibration, fit_temperature, fit_vector, fold_into_last_layer
from training.catalog import RECIPES, Recipe
from training.data import CtCase, EcgCase, HistoryCase
from training.export import export_package
from training.metrics import classification_report, dice
from training.trainer import TrainConfig, fit

__all__ = [
    "RECIPES",
    "Calibration",
    "Case",
    "Recipe",
    "as_worker_model",
    "calibrate",
    "predict_probs",
    "train_recipe",
    "with_lesion_floor",
]


Case = CtCase | EcgCase | HistoryCase


def as_worker_model(recipe: Recipe, module: nn.Module, folder: Path | None = None) -> LoadedModel:
    """Wrap a module in training as the worker would see it (spec from the recipe)."""
    from inference.spec import InputSpec, LabelSpec, ModelSpec

    spec_in = recipe.input_spec
    spec = ModelSpec(
        folder=folder or Path("."),
        name=recipe.name,
        version="training",
        task=recipe.task,
        architecture=recipe.architecture,
        format="state_dict",
        weights=Path("-"),
        sha256="0" * 64,
        parameters=recipe.parameters,
        input=InputSpec(
            modalities=tuple(spec_in.get("modality", ())),
            window=tuple(spec_in["window"]) if "window" in spec_in else None,
            target_spacing=tuple(spec_in["target_spacing"])
            if "target_spacing" in spec_in
            else None,
            size=tuple(spec_in["size"]) if "size" in spec_in else None,
            patch=tuple(spec_in["patch"]) if "patch" in spec_in else None,
            leads=tuple(spec_in.get("leads", ())),
            sampling_hz=spec_in.get("sampling_hz"),
            samples=spec_in.get("samples"),
            max_priors=spec_in.get("max_priors", 0),
        ),
        labels=tuple(
            LabelSpec(
                name=x["name"],
                code=tuple(x["code"]),
                threshold=x["threshold"],
                min_volume_mm3=x.get("min_volume_mm3", 0.0),
            )
            for x in recipe.labels
        ),
    )
    device = next(module.parameters()).device
    return LoadedModel(spec=spec, module=module, device=device)


def _ct_input(recipe: Recipe, case: CtCase) -> Tensor:
    x = window(case.volume.array, tuple(recipe.input_spec["window"]))
    if "size" in recipe.input_spec:
        x = F.interpolate(x, size=recipe.input_spec["size"], mode="trilinear")
    return x[0]


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Intensity augmentation for windowed CT in [0, 1]: weaker contrast, more noise.

    Contrast around soft tissue (40 HU, 0.35 in the window) is scaled by 0.5-1.1
    and Gaussian noise of up to 15 HU is added, so the models see the range of
    scanners and protocols the shifted test set stands for.
    """
    n = x.shape[0]
    scale = torch.empty(n, *([1] * (x.ndim - 1))).uniform_(0.5, 1.1, generator=generator)
    sd = torch.empty(n, *([1] * (x.ndim - 1))).uniform_(0.0, 15 / 400, generator=generator)
    noise = torch.randn(x.shape, generator=generator) * sd
    return (0.35 + (x - 0.35) * scale + noise).clamp(0, 1)


def _soft_dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3, 4))
    total = p.sum(dim=(1, 2, 3, 4)) + target.sum(dim=(1, 2, 3, 4))
    return (1 - (2 * inter + 1) / (total + 1)).mean()


def predict_probs(recipe: Recipe, model: LoadedModel, case: Case) -> np.ndarray:
    if isinstance(case, HistoryCase):
        return predict_change(model, case.volumes, case.days_before, amp=False)
    if isinstance(case, EcgCase):
        return predict_sequence(model, case.waveform, amp=False)
    return classify(model, case.volume, amp=False)[0]


def train_recipe(
    recipe: Recipe,
    train: Sequence[Case],
    val: Sequence[Case],
    *,
    seed: int,
    device: str = "cpu",
    epochs: int | None = None,
    checkpoint: Path | None = None,
    progress: bool = True,
    calibration: Sequence[Case] | None = None,
    init: nn.Module | None = None,
) -> tuple[nn.Module, float]:
    """Train a recipe's model; return it (best validated weights) and its validation score.

    Classifiers are then calibrated on ``calibration`` (default: ``val``), see
    :func:`calibrate`. A validation set the model separates perfectly makes a
    fitted temperature degenerate (any T <= 1 fits), so ``rebuild-models``
    passes a calibration set of its own with shifted acquisitions, made with
    seeds used nowhere else. ``init``: a model of the same recipe whose weights
    training starts from (fine-tuning a shipped package on a hospital's data).
    """
    torch.manual_seed(seed)
    module = build(recipe.architecture, recipe.parameters)
    if init is not None:  # fine-tuning: start from a package's weights
        module.load_state_dict(init.state_dict())
    cfg = TrainConfig(
        epochs=epochs or recipe.train.epochs,
        batch_size=recipe.train.batch_size,
        lr=recipe.train.lr,
        patience=recipe.train.patience,
        seed=seed,
        device=device,
        checkpoint=checkpoint,
        progress=progress,
    )
    generator = torch.Generator().manual_seed(seed)
    loss_fn: Callable[[nn.Module, list[Any], torch.device], Tensor]
    validate: Callable[[nn.Module], float]
    if recipe.task == "segmentation":
        items: list[tuple[Any, Any]] = [
            (_ct_input(recipe, c), torch.from_numpy(c.mask[None].astype(np.float32)))
            for c in train
            if isinstance(c, CtCase) and c.mask is not None
        ]

        def loss_fn(m: nn.Module, batch: list[Any], dev: torch.device) -> Tensor:
            x = _augment(torch.stack([b[0] for b in batch]), generator).to(dev)
            y = torch.stack([b[1] for b in batch]).to(dev)
            logits = m(x)
            return F.binary_cross_entropy_with_logits(logits, y) + _soft_dice_loss(logits, y)

        def validate(m: nn.Module) -> float:
            model = as_worker_model(recipe, m)
            scores = [
                dice(segment(model, c.volume, batch_size=4, amp=False)[0] >= 0.5, c.mask)  # type: ignore[arg-type]
                for c in val
                if isinstance(c, CtCase)
            ]
            return float(np.mean(scores))
    else:
        spec = as_worker_model(recipe, module).spec.input
        if recipe.kind == "ecg":
            items = [
                (prepare_waveform(c.waveform, spec)[0], c.label)
                for c in train
                if isinstance(c, EcgCase)
            ]
        elif recipe.kind == "longitudinal":
            items = []
            for c in train:
                if isinstance(c, HistoryCase):
                    x, years = prepare_history(c.volumes, c.days_before, spec)
                    items.append(((x[0], years[0]), c.label))
        else:
            items = [(_ct_input(recipe, c), c.label) for c in train if isinstance(c, CtCase)]

        def loss_fn(m: nn.Module, batch: list[Any], dev: torch.device) -> Tensor:
            y = torch.tensor([b[1] for b in batch], device=dev)
            if recipe.kind == "longitudinal":  # histories of 2..1+max_priors studies
                assert isinstance(m, PriorsFusion)
                sizes = [b[0][0].shape[0] for b in batch]
                # One intensity shift per history: a protocol, not each study, differs.
                studies = torch.cat([_augment(b[0][0][None], generator)[0] for b in batch])
                studies = studies.to(dev)
                features = torch.split(m.features(studies), sizes)
                logits = torch.cat(
                    [
                        m.fuse(f[None], b[0][1][None].to(dev))
                        for f, b in zip(features, batch, strict=True)
                    ]
                )
                return F.cross_entropy(logits, y)
            x = torch.stack([b[0] for b in batch])
            if recipe.kind == "ct":
                x = _augment(x, generator)
            x = x.to(dev)
            logits, _ = m(x)
            return F.cross_entropy(logits, y)

        def validate(m: nn.Module) -> float:
            model = as_worker_model(recipe, m)
            probs = np.stack([predict_probs(recipe, model, c) for c in val])
            report = classification_report([c.label for c in val], probs, list(recipe.classes))
            key = "macro_f1" if recipe.kind != "ct" else "macro_auroc"
            value = report[key]
            return float(value) if isinstance(value, (int, float)) else 0.0

    result = fit(module, items, loss_fn=loss_fn, validate=validate, cfg=cfg)
    if recipe.task != "segmentation":
        fitted = calibrate(recipe, module, calibration or val)
        if progress:
            print(f"  calibration: {fitted.describe()}", file=sys.stderr)
    return module, result.best_metric


def _logits(recipe: Recipe, module: nn.Module, case: Case) -> Tensor:
    device = next(module.parameters()).device
    inputs: tuple[Tensor, ...]
    if isinstance(case, HistoryCase):
        inputs = prepare_history(
            case.volumes, case.days_before, as_worker_model(recipe, module).spec.input
        )
    elif isinstance(case, EcgCase):
        inputs = (prepare_waveform(case.waveform, as_worker_model(recipe, module).spec.input),)
    else:
        inputs = (_ct_input(recipe, case)[None],)
    with torch.inference_mode():
        logits, _ = module(*(x.to(device) for x in inputs))
    row: Tensor = logits[0].float().cpu()
    return row


def calibrate(recipe: Recipe, module: nn.Module, cases: Sequence[Case]) -> Calibration:
    """Post-hoc calibration (Guo et al. 2017) fitted on ``cases``, folded into the model.

    ``temperature``: the T minimising the NLL; logits / T never change the
    predicted class. ``vector``: a scale and a shift per class minimising the
    NLL; it can move decision boundaries, so ``rebuild-models`` fits it on the
    validation and the shifted calibration set together (both acquisition
    ranges, neither traded for the other). Either is folded into the final
    linear layer (W' = diag(a) W, b' = a b + c), which is exactly softmax(a z + c):
    the package stays a plain state dict and the worker needs no extra step.
    """
    logits = torch.stack([_logits(recipe, module, c) for c in cases])
    labels = torch.tensor([c.label for c in cases])
    if recipe.calibration == "vector":
        scale, shift = fit_vector(logits, labels)
    elif recipe.calibration == "temperature":
        scale, shift = fit_temperature(logits, labels)
    else:
        raise ValueError(f"{recipe.name}: calibration must be temperature or vector")
    fold_into_last_layer(module, scale, shift)
    return Calibration(
        method=recipe.calibration,
        scale=tuple(float(v) for v in scale),
        shift=tuple(float(v) for v in shift),
        cases=len(cases),
    )


def with_lesion_floor(recipe: Recipe, train: Sequence[Case]) -> Recipe:
    """The segmentation recipe with ``min_volume_mm3`` learnt from the training masks.

    Half the smallest training lesion: a component below that is a speck the
    model should not report (the lesion-free scans' false positives), while any
    lesion like those it was trained on stays well above it.
    """
    volumes: list[float] = []
    for c in train:
        if isinstance(c, CtCase) and c.mask is not None and c.mask.any():
            labelled, _count = ndimage.label(c.mask, structure=np.ones((3, 3, 3), dtype=bool))
            sizes = np.bincount(labelled.ravel())[1:]
            volumes.extend(float(v) for v in sizes * c.volume.voxel_volume_mm3)
    if not volumes:
        return recipe
    floor = round(0.5 * float(min(volumes)), 1)
    labels = [{**x, "min_volume_mm3": floor} for x in recipe.labels]
    return dataclasses.replace(recipe, labels=labels)


def export(
    recipe: Recipe,
    module: nn.Module,
    folder: Path,
    *,
    metrics: dict[str, float],
    training_data: str,
    card: str,
) -> Path:
    path = export_package(
        module,
        folder,
        name=recipe.name,
        version="1.0.0",
        task=recipe.task,
        architecture=recipe.architecture,
        parameters=recipe.parameters,
        input_spec=recipe.input_spec,
        labels=recipe.labels,
        training_data=training_data,
        metrics=metrics,
        card=card,
    )
    read_spec(path)
    return path
