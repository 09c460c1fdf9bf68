"""``scripts/candidate_probe.py``'s figures from scored scans: a package for one section
takes its threshold from that section's validation scans alone and reports that section's
figures, the other's beside them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "candidate_probe", ROOT / "scripts/candidate_probe.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scan(
    section: str, scores: list[float], lesion: list[int], diameters: list[float]
) -> dict[str, Any]:
    n = len(scores)
    return {
        "section": section,
        "diameters": diameters,
        "scores": scores,
        "lesion": lesion,
        "outline_dice": [0.9 if k else -1.0 for k in lesion],
        "blob_outline_dice": [0.8 if k else -1.0 for k in lesion],
        "candidates": 10 * n,
        "best_in_lesion": [
            max((s for s, k in zip(scores, lesion, strict=True) if k == i + 1), default=0.0)
            for i in range(len(diameters))
        ],
    }


def _sets() -> dict[str, Any]:
    # 4 chest scans: a lesion at 0.9, a false positive at 0.8 (one in 4 scans);
    # 4 abdominal ones: a false positive at 0.95 each, a lesion at 0.5
    chest = [_scan("chest", [0.9, 0.8], [1, 0], [10.0])] + [
        _scan("chest", [0.9], [1], [8.0]) for _ in range(3)
    ]
    abdomen = [_scan("abdomen", [0.95, 0.5], [0, 1], [12.0]) for _ in range(4)]
    return {"validation": {"scans": chest + abdomen}, "shifted": {"scans": chest + abdomen}}


def test_a_section_sets_the_threshold_on_its_own_validation_scans(probe: ModuleType) -> None:
    everywhere = _sets()
    probe.summarise(everywhere, None)
    # over all 8 scans, 0.25 false positives per scan allows 2: the abdomen's 0.95 scores
    # keep the threshold above them, so no lesion is found at all
    assert everywhere["validation"]["chosen"]["threshold"] > 0.95
    assert everywhere["validation"]["chosen"]["sensitivity_5mm"] == 0.0

    chest = _sets()
    probe.summarise(chest, "chest")
    assert chest["section"] == "chest"
    point = chest["validation"]["chosen"]
    # 0.8 would be within the budget (0.25 per scan) but find nothing more: the threshold
    # is the highest that finds what the budget allows, and lets no false positive through
    budget = next(r for r in chest["validation"]["froc"] if r["fp_target"] == 0.25)
    assert (budget["threshold"], budget["fp_per_scan"]) == (0.8, 0.25)
    assert point["threshold"] == 0.9 and point["sensitivity_5mm"] == 1.0
    assert point["fp_per_scan"] == 0.0 and point["lesions_5mm"] == 4
    at = chest["shifted"]["at_chosen"]  # the test set's chest scans only
    assert (at["sensitivity_5mm"], at["fp_per_scan"], at["lesions_5mm"]) == (1.0, 0.0, 4)
    beside = chest["shifted"]["by_section"]["abdomen"]  # the abdomen at the same threshold
    assert (beside["scans"], beside["fp_per_scan"], beside["sensitivity_5mm"]) == (4, 1.0, 0.0)


def test_a_section_the_run_did_not_record_is_refused(probe: ModuleType) -> None:
    older = _sets()
    for sc in older["validation"]["scans"]:
        del sc["section"]
    with pytest.raises(SystemExit, match="do not record it"):
        probe.summarise(older, "chest")
