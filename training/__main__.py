"""``python -m training`` (also ``ainode train``): generate, train, evaluate, cross-validate,
export, and ``rebuild-models``, which rebuilds every shipped model from scratch."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from inference.domain import BASE_STATISTICS, STATISTICS
from inference.package import LoadedModel
from training.catalog import EVALUATED_ONLY
from training.domain import FeatureWatch
from training.evaluation import evaluate, lesion_figures
from training.folders import (
    GENERATORS,
    accepted_summary,
    generate,
    headline,
    load_cases,
    record_domain,
    worker_decisions,
)
from training.metrics import grouped_kfold
from training.rebuild import rebuild
from training.recipes import (
    RECIPES,
    Case,
    Recipe,
    export,
    train_recipe,
    with_lesion_floor,
)
from training.report import write_report

__all__ = ["main"]


def _package_and_recipe(package: Path, command: str) -> tuple[LoadedModel, Recipe] | None:
    """Load and try a package on the CPU, with the recipe of its name; None: said why on stderr."""
    import torch

    from inference.errors import ModelPackageError
    from inference.trial import load_and_try

    try:
        loaded = load_and_try(package, torch.device("cpu"))
    except ModelPackageError as exc:
        print(f"ainode train {command}: {exc}", file=sys.stderr)
        return None
    recipe = RECIPES.get(loaded.spec.name)
    if recipe is None and command == "evaluate":
        recipe = EVALUATED_ONLY.get(loaded.spec.name)
    if recipe is None:
        print(f"no recipe named {loaded.spec.name!r}", file=sys.stderr)
        return None
    return loaded, recipe


def _domain(
    package: Path,
    data: list[Path],
    check: list[Path],
    body_parts: list[str],
    splits: tuple[str | None, str | None],
    lung_share: bool = False,
) -> int:
    """``ainode train domain``: build, write, and measure the share of held-out scans accepted."""
    found = _package_and_recipe(package, "domain")
    if found is None:
        return 2
    loaded, recipe = found
    try:
        statistics = tuple(STATISTICS) if lung_share else BASE_STATISTICS
        domain, checks = record_domain(
            loaded, recipe, package, data, check, body_parts, splits, statistics
        )
    except ValueError as exc:  # a split asked of a folder without a split column
        print(f"ainode train domain: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {package / 'domain.json'} ({domain.built_from})")
    for folder, accepted, total, reasons in checks:
        print(f"{folder}: accepted {accepted}/{total} ({accepted / max(total, 1):.1%})")
        for why, n in reasons.most_common():
            print(f"  declined {n}: {why}")
    return 0


def _labels_source(folder: Path) -> str:
    """What an export says its labels are (ground truth or silver); "" for other folders."""
    manifest = folder / "export.json"
    return str(json.loads(manifest.read_text()).get("labels", "")) if manifest.exists() else ""


def _train(a: argparse.Namespace) -> int:
    """``ainode train train``: train (or, with ``--init``, fine-tune) and export a package."""
    recipe = RECIPES[a.recipe]
    init, origin = None, ""
    if a.init is not None:
        found = _package_and_recipe(a.init, "train --init")
        if found is None:
            return 2
        loaded, init_recipe = found
        if init_recipe.name != recipe.name:
            print(f"--init {a.init}: is {init_recipe.name}, not {recipe.name}", file=sys.stderr)
            return 2
        init = loaded.module
        origin = f"Fine-tuned from {loaded.spec.name} {loaded.spec.version} ({a.init}). "
    # Without --val: the data's own splits (an export's labels.csv has them).
    train_split, val_split = (None, None) if a.val is not None else ("train", "val")
    try:
        train_cases = load_cases(recipe, a.data, train_split)
        val_cases = load_cases(recipe, a.val or a.data, val_split)
    except ValueError as exc:  # no split column and no --val
        print(f"ainode train train: {exc} (or give --val)", file=sys.stderr)
        return 2
    if recipe.task == "segmentation":
        recipe = with_lesion_floor(recipe, train_cases)
    module, score = train_recipe(
        recipe,
        train_cases,
        val_cases,
        seed=a.seed,
        device=a.device,
        epochs=a.epochs,
        checkpoint=a.checkpoint,
        init=init,
    )
    labels = _labels_source(a.data)
    where = f"{a.data}" + (" (split train; validated on its split val)" if train_split else "")
    export(
        recipe,
        module,
        a.out,
        metrics={"validation": round(score, 4)},
        card=(
            f"# {recipe.name}\n\n{origin}Trained on {where}; validation score {score:.4f}.\n"
            + (f"\nLabels: {labels}.\n" if labels else "")
        ),
        training_data=str(a.data) + (f"; labels {labels}" if labels else ""),
    )
    print(a.out)
    return 0


def _evaluate(
    package: Path, data: Path, report_dir: Path, split: str | None, baseline: Path | None
) -> int:
    """``ainode train evaluate``: held-out figures of a package (and a baseline beside them)."""
    figures = {}
    cases: dict[str, list[Case]] = {}  # read once per recipe, not once per package
    for role, path in (("model", package), ("baseline", baseline)):
        if path is None:
            continue
        found = _package_and_recipe(path, "evaluate")
        if found is None:
            return 2
        loaded, recipe = found
        if recipe.name not in cases:
            cases[recipe.name] = load_cases(recipe, data, split)
        # The domain check's features come from the evaluation's own forward passes.
        seen = FeatureWatch(loaded)
        report = evaluate(recipe, loaded, cases[recipe.name], seen.watch)
        # The metrics count every case (as if the worker analysed them all); beside
        # them, how many the worker would analyse at all, why it declines the rest, and
        # the lesion figures of the cases it analyses (what its SRs would say).
        decided = worker_decisions(loaded, cases[recipe.name], seen.vectors)
        accepts = accepted_summary(decided)
        report.update(accepts)
        if decided is not None and "per_case" in report:
            rows = report["per_case"]
            for row, why in zip(rows, decided, strict=True):
                row["declined"] = why
            analysed = lesion_figures([r for r in rows if r["declined"] is None])
            report["accepted_only"] = {k: v for k, v in analysed.items() if k != "dice_all"} | {
                "n": accepts["domain_accepted"]
            }
        folder = report_dir if role == "model" else report_dir / "baseline"
        write_report(folder, recipe.name, report, list(recipe.classes))
        figures[f"{role}: {path}"] = {
            "n": report["n"],
            **headline(recipe, report),
            **{k: v for k, v in accepts.items() if k != "domain_declined"},
        }
    if baseline is None:
        print(json.dumps(next(iter(figures.values())), indent=2))
        return 0
    (model, base) = figures.values()
    print(f"{'':24} {'baseline':>10} {'model':>10} {'change':>10}")
    for key in [k for k in model if k in base]:
        change = model[key] - base[key]
        print(f"{key:24} {base[key]:>10.4g} {model[key]:>10.4g} {change:>+10.4g}")
    print(json.dumps(figures, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ainode train", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write a synthetic data set as DICOM")
    g.add_argument("kind", choices=sorted(GENERATORS))
    g.add_argument("--out", type=Path, required=True)
    g.add_argument(
        "--n", type=int, default=50, help="studies (longitudinal, anatomy-longitudinal: patients)"
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--shift", action="store_true", help="harder, shifted test data")
    t = sub.add_parser("train", help="train a recipe on a folder and export a package")
    t.add_argument("recipe", choices=sorted(RECIPES))
    t.add_argument("--data", type=Path, required=True)
    t.add_argument(
        "--val", type=Path, help="validation folder (default: the data's own 'val' split)"
    )
    t.add_argument("--init", type=Path, help="fine-tune: start from this package's weights")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--epochs", type=int)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--checkpoint", type=Path, help="resume from / save to this file")
    e = sub.add_parser("evaluate", help="held-out metrics and plots of a recipe's package")
    e.add_argument("package", type=Path)
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--report", type=Path, required=True)
    e.add_argument("--split", help="only this split of the data (labels.csv column split)")
    e.add_argument("--baseline", type=Path, help="a second package, reported side by side")
    cv = sub.add_parser("cross-validate", help="k-fold CV grouped by patient: mean and sd")
    cv.add_argument("recipe", choices=sorted(RECIPES))
    cv.add_argument("--data", type=Path, required=True)
    cv.add_argument("--k", type=int, default=3)
    cv.add_argument("--epochs", type=int)
    d = sub.add_parser(
        "domain", help="record a package's validated input domain; report the share it accepts"
    )
    d.add_argument("package", type=Path)
    d.add_argument(
        "--data", type=Path, nargs="+", required=True, help="what it was fitted/calibrated on"
    )
    d.add_argument("--check", type=Path, nargs="*", default=[], help="held-out folders")
    d.add_argument("--body-part", nargs="*", default=[], help="Body Part Examined values")
    d.add_argument("--split", help="only this split of the --data folders (e.g. an export's train)")
    d.add_argument("--check-split", help="only this split of the --check folders (e.g. test)")
    d.add_argument(
        "--lung-share",
        action="store_true",
        help="also record the body's lung share from its low end (a chest model: declines an "
        "abdomen that does not say its body part)",
    )
    r = sub.add_parser("rebuild-models", help="rebuild every shipped model from scratch")
    r.add_argument("--out", type=Path, default=Path("models"))
    r.add_argument("--work", type=Path, help="where generated data goes (default: a temp dir)")
    r.add_argument("--only", nargs="*", choices=sorted(RECIPES), default=sorted(RECIPES))
    a = ap.parse_args(argv)

    if a.command == "generate":
        print(generate(a.kind, a.out, a.n, a.seed, a.shift))
        return 0
    if a.command == "train":
        return _train(a)
    if a.command == "evaluate":
        return _evaluate(a.package, a.data, a.report, a.split, a.baseline)
    if a.command == "domain":
        return _domain(
            a.package, a.data, a.check, a.body_part, (a.split, a.check_split), a.lung_share
        )
    if a.command == "cross-validate":
        recipe = RECIPES[a.recipe]
        cases = load_cases(recipe, a.data)
        scores = []
        for fold, (train_idx, test_idx) in enumerate(
            grouped_kfold([c.patient_id for c in cases], a.k, seed=0)
        ):
            train = [cases[i] for i in train_idx]
            test = [cases[i] for i in test_idx]
            _, score = train_recipe(
                recipe,
                train,
                test,
                seed=fold,
                epochs=a.epochs,
                progress=False,
            )
            print(f"  fold {fold + 1}/{a.k}: {score:.4f}", file=sys.stderr)
            scores.append(score)
        print(
            json.dumps(
                {
                    "recipe": recipe.name,
                    "k": a.k,
                    "scores": scores,
                    "mean": float(np.mean(scores)),
                    "sd": float(np.std(scores)),
                }
            )
        )
        return 0
    work = a.work or Path(tempfile.mkdtemp(prefix="ainode-train-"))
    return rebuild(a.out, work, a.only)


if __name__ == "__main__":
    sys.exit(main())
