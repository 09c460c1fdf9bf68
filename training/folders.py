"""The folders ``ainode train`` works on: generating them, reading their cases, and what
a report's headline is; the validated input domain built from them."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.domain import BASE_STATISTICS, Domain
from inference.package import LoadedModel
from training.anatomy import generate_anatomical_ct
from training.anatomy_followup import generate_anatomical_longitudinal
from training.catalog import LESION_TASKS
from training.data import load_ct_cases, load_ecg_cases, load_history_cases
from training.domain import (
    acceptance,
    build_domain,
    card_section,
    decisions,
    domain_volumes,
    tally,
    write_domain,
)
from training.recipes import Case, Recipe
from training.synthetic import (
    generate_ct,
    generate_ct_site_b,
    generate_ecg,
    generate_longitudinal,
)

__all__ = [
    "GENERATORS",
    "accepted_summary",
    "generate",
    "headline",
    "load_cases",
    "record_domain",
    "worker_decisions",
]

GENERATORS = {
    "ct": generate_ct,
    "ct-site-b": generate_ct_site_b,
    "anatomy": generate_anatomical_ct,
    "anatomy-longitudinal": generate_anatomical_longitudinal,
    "ecg": generate_ecg,
    "longitudinal": generate_longitudinal,
}


def generate(kind: str, out: Path, n: int, seed: int, shift: bool) -> Path:
    return GENERATORS[kind](out, n, seed, shift=shift)


def load_cases(recipe: Recipe, folder: Path, split: str | None = None) -> list[Case]:
    """The recipe's cases in ``folder`` (only those of ``split`` when given); skips on stderr."""
    labels = folder / "labels.csv"
    cases: list[Case]
    if recipe.kind == "ecg":
        ecg, report = load_ecg_cases(
            folder, labels, recipe.classes, tuple(recipe.input_spec["leads"]), split=split
        )
        cases = list(ecg)
    elif recipe.kind == "longitudinal":
        history, report = load_history_cases(
            folder,
            labels,
            recipe.classes,
            max_priors=int(recipe.input_spec["max_priors"]),
            split=split,
        )
        cases = list(history)
    else:
        ct, report = load_ct_cases(
            folder, labels, recipe.classes, masks=recipe.task in LESION_TASKS, split=split
        )
        cases = list(ct)
    for what, why in report.skipped:
        print(f"  skipped {what}: {why}", file=sys.stderr)
    where = f"{folder} ({split})" if split else str(folder)
    print(f"  {report.used} case(s) from {where}, {len(report.skipped)} skipped", file=sys.stderr)
    return cases


def headline(recipe: Recipe, report: dict[str, Any]) -> dict[str, float]:
    if recipe.task in LESION_TASKS:
        keys = ["dice_mean", "iou_mean", "lesion_sensitivity", "false_positives_per_scan"]
    else:
        keys = ["accuracy", "macro_f1", "macro_auroc", "ece"]
    return {k: round(float(report[k]), 4) for k in keys if report.get(k) is not None}


def accepted_summary(decided: Sequence[str | None] | None) -> dict[str, Any]:
    """What the worker does with cases before any metric counts, from
    :func:`worker_decisions`: how many the package's validated input domain accepts, and
    why it declines the rest (the reason's first words); {} for a package without a
    domain (``decided`` None)."""
    if decided is None:
        return {}
    accepted, total, reasons = tally(decided)
    return {
        "domain_accepted": accepted,
        "domain_checked": total,
        "domain_declined": dict(reasons.most_common()),
    }


def worker_decisions(
    loaded: LoadedModel,
    cases: Sequence[object],
    features: Mapping[int, npt.NDArray[np.float64] | None] | None = None,
) -> list[str | None] | None:
    """Per case, None where the package's domain accepts it, else why it declines it (a
    longitudinal case: its own study); None for a package without a domain."""
    if loaded.spec.domain is None:
        return None
    indexed = [(i, v) for i, case in enumerate(cases) for v in domain_volumes([case])]
    decided = decisions(
        loaded,
        loaded.spec.domain.domain,
        [v for _, v in indexed],
        None if features is None else {k: features[i] for k, (i, _) in enumerate(indexed)},
    )
    out: list[str | None] = [None] * len(cases)
    for (i, _), why in zip(indexed, decided, strict=True):
        out[i] = why
    return out


def record_domain(
    loaded: LoadedModel,
    recipe: Recipe,
    package: Path,
    data: Sequence[Path],
    check: Sequence[Path],
    body_parts: Sequence[str],
    splits: tuple[str | None, str | None] = (None, None),
    statistics: Sequence[str] = BASE_STATISTICS,
) -> tuple[Domain, list[tuple[Path, int, int, Counter[str]]]]:
    """Build the domain from ``data``, write it and the model card's section; measure ``check``.

    ``splits``: only this split of the ``data`` and of the ``check`` folders (an export's
    ``train`` and ``test``), None for all their cases; ``statistics``: the intensity
    statistics recorded (``--lung-share`` adds the body's lung share).
    """
    data_split, check_split = splits
    held_out = [  # read first: a folder that cannot be read leaves the package unchanged
        (folder, list(domain_volumes(load_cases(recipe, folder, check_split)))) for folder in check
    ]
    domain = build_domain(
        loaded,
        (v for folder in data for v in domain_volumes(load_cases(recipe, folder, data_split))),
        body_parts=body_parts,
        statistics=statistics,
        built_from=", ".join(
            folder.name + (f" ({data_split})" if data_split else "") for folder in data
        ),
    )
    write_domain(package, domain)
    checks = [(folder, *acceptance(loaded, domain, volumes)) for folder, volumes in held_out]
    card_section(package, domain, [(f.name, accepted, total) for f, accepted, total, _ in checks])
    return domain, checks
