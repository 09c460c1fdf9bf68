"""``scripts/candidate_probe.py``'s figures from scored scans: a package for one section
takes its threshold from that section's validation scans alone and reports that section's
figures, the other's beside them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
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


def test_the_threshold_keeps_the_lesion_free_scans_clean_as_the_budget_asks(
    probe: ModuleType,
) -> None:
    """The budget is two limits: <= 0.25 false positives per scan and >= 90 % of the
    lesion-free scans clean. A threshold within the first that breaks the second is not
    chosen; where none meets both, the false-positive limit's choice stays."""
    lesions = [_scan("chest", [0.9], [1], [8.0]) for _ in range(4)]
    lesions.append(_scan("chest", [0.8], [1], [8.0]))
    free = [_scan("chest", [0.85], [0], []), _scan("chest", [0.82], [0], [])]
    free += [_scan("chest", [0.1], [0], []) for _ in range(3)]
    scans = lesions + free
    budget = next(r for r in probe.froc(scans) if r["fp_target"] == 0.25)
    # 0.8 finds all 5 at 0.2 false positives per scan, but leaves 3 of 5 free scans clean
    assert probe.highest_at(scans, budget)["threshold"] == 0.8
    chosen = probe.within_budget(scans, budget)
    assert (chosen["threshold"], chosen["sensitivity_5mm"]) == (0.9, 0.8)
    assert (chosen["fp_per_scan"], chosen["lesion_free_clean"]) == (0.0, 1.0)
    assert chosen["clean_target"] == 0.9

    dirty = lesions + [_scan("chest", [0.95], [0], []) for _ in range(2)]
    dirty += [_scan("chest", [0.1], [0], []) for _ in range(3)]
    budget = next(r for r in probe.froc(dirty) if r["fp_target"] == 0.25)
    # every threshold among the scores lets a 0.95 through: 3 of 5 clean at best
    assert probe.within_budget(dirty, budget) == probe.highest_at(dirty, budget)


def test_a_section_the_run_did_not_record_is_refused(probe: ModuleType) -> None:
    older = _sets()
    for sc in older["validation"]["scans"]:
        del sc["section"]
    with pytest.raises(SystemExit, match="do not record it"):
        probe.summarise(older, "chest")


def test_a_shipped_threshold_scores_the_held_out_sets_without_validation(
    probe: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``--threshold`` (a shipped package on fresh streams): each held-out set scored at
    that threshold, on the streams ``--test-seeds`` names; no validation is made or kept."""
    asked: list[list[tuple[int, int, bool]]] = []

    def scored(pool: object, weights: Path, sets: list[tuple[int, int, bool]]) -> Any:
        asked.append(sets)
        return _sets()["shifted"]["scans"]

    monkeypatch.setattr(probe, "evaluate", scored)
    result: dict[str, Any] = {"args": {}, "validation": {"scans": []}}
    saves: list[int] = []
    a = probe.argparse.Namespace(threshold=0.85, section="chest", test_seeds="2401,2402")
    probe._score_at(None, tmp_path / "w.pt", result, a, lambda: saves.append(1))
    assert asked == [[(2401, 100, True)], [(2402, 60, False)]]
    assert "validation" not in result and result["fixed_threshold"] == 0.85
    at = result["shifted"]["at_chosen"]  # 0.85 keeps the chest's 0.9 lesions, drops its 0.8
    assert (at["sensitivity_5mm"], at["fp_per_scan"], at["lesions_5mm"]) == (1.0, 0.0, 4)
    assert result["ordinary"]["by_section"]["abdomen"]["fp_per_scan"] == 1.0
    assert len(saves) == 2  # written as each set finishes


def test_a_run_is_tested_at_its_own_validation_threshold_without_scoring_it_again(
    probe: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``--from-run --test``: the held-out streams ``--test-seeds`` names are scored at the
    threshold the run's validation scans choose; validation is read, never scored again."""
    asked: list[list[tuple[int, int, bool]]] = []
    tested = _sets()["shifted"]["scans"]

    def scored(pool: object, weights: Path, sets: list[tuple[int, int, bool]]) -> Any:
        asked.append(sets)
        return tested

    monkeypatch.setattr(probe, "evaluate", scored)
    run = {
        "args": {"keep": "900", "organ": "150", "channels": "lung,soft_tissue,lung_coarse"},
        "validation": {"scans": _sets()["validation"]["scans"]},
    }
    (tmp_path / "probe.json").write_text(probe.json.dumps(run))
    a = probe.argparse.Namespace(
        out=tmp_path, section="chest", test_seeds="2501,2502", workers=1, package=None
    )
    probe._test_from_run(probe.json.loads((tmp_path / "probe.json").read_text()), a)
    assert asked == [[(2501, 100, True)], [(2502, 60, False)]]  # the held-out sets only
    kept = probe.json.loads((tmp_path / "probe.json").read_text())
    assert kept["args"]["test_seeds"] == "2501,2502"
    assert kept["validation"]["chosen"]["threshold"] == 0.9  # the chest validation's choice
    at = kept["ordinary"]["at_chosen"]  # at 0.9, the chest's 0.8 false positive drops
    assert (at["sensitivity_5mm"], at["fp_per_scan"], at["lesions_5mm"]) == (1.0, 0.0, 4)

    with pytest.raises(SystemExit, match="holds no validation scans"):
        probe._test_from_run({"args": run["args"]}, a)


@pytest.mark.parametrize(
    "extra",
    [
        ["--threshold", "0.98"],  # nothing to score: no --from-run
        ["--from-run", "--reevaluate", "--test", "--threshold", "0.98", "--package", "P"],
    ],
)
def test_a_fixed_threshold_outside_a_reevaluation_is_refused(
    probe: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    extra: list[str],
) -> None:
    monkeypatch.setattr(probe.sys, "argv", ["candidate_probe", "--out", str(tmp_path), *extra])
    with pytest.raises(SystemExit) as stop:
        probe.main()
    assert stop.value.code == 2
    assert "--threshold goes with --from-run --reevaluate --test" in capsys.readouterr().err


def test_small_lesions_get_more_positives_and_older_runs_the_same(probe: ModuleType) -> None:
    """``--small N``: N more positives from the whole of each lesion under 10 mm, none more
    for a larger one; with 0 the points (and the generator's draws) are those of before."""
    lab = np.zeros((40, 40, 40), np.int32)
    lab[5:9, 5:9, 5:9] = 1  # a small lesion (64 voxels)
    lab[15:35, 15:35, 15:35] = 2  # a large one
    diameters = [6.2, 31.0]
    before = probe.lesion_points(lab, diameters, 6, 0, np.random.default_rng(3))
    assert [len(x) for x in before] == [6, 6]
    more = probe.lesion_points(lab, diameters, 6, 40, np.random.default_rng(3))
    assert [len(x) for x in more] == [6, 40, 6]
    assert all(lab[tuple(p)] == 1 for p in more[1])  # inside the small lesion
    assert np.array_equal(more[0], before[0])
    again = probe.lesion_points(lab, diameters, 6, 0, np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(before, again, strict=True))


def test_a_run_taken_up_again_with_nothing_to_do_is_refused(
    probe: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(
        probe.sys, "argv", ["candidate_probe", "--out", str(tmp_path), "--from-run"]
    )
    with pytest.raises(SystemExit) as stop:
        probe.main()
    assert stop.value.code == 2
    assert "--from-run needs --package DIR, --reevaluate or --test" in capsys.readouterr().err


def test_the_turns_a_run_was_scored_with_are_kept_and_used_again(
    probe: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """``--turns``: recorded with a reevaluation, sent with every scan to score, read back by
    a later ``--from-run``; asking a run scored otherwise for other turns without
    ``--reevaluate`` is refused (its stored scores would not be what was asked)."""

    sent: list[Any] = []

    class Pool:
        def map(self, fn: Any, jobs: list[Any]) -> list[Any]:
            sent[:] = jobs
            return []

    run = {"args": {"keep": "900", "organ": "150", "channels": "lung,soft_tissue,lung_coarse"}}
    a = probe.argparse.Namespace(out=tmp_path)
    probe._resume(probe.json.loads(probe.json.dumps(run)), a, turns="4")
    probe.evaluate(Pool(), tmp_path / "w.pt", [(1202, 2, False)])
    assert [job[-1] for job in sent] == [4, 4]
    probe._resume(probe.json.loads(probe.json.dumps(run)), a)  # a run before --turns
    probe.evaluate(Pool(), tmp_path / "w.pt", [(1202, 1, False)])
    assert [job[-1] for job in sent] == [1]

    (tmp_path / "probe.json").write_text(probe.json.dumps(run))
    argv = ["candidate_probe", "--out", str(tmp_path), "--from-run", "--test", "--turns", "1"]
    monkeypatch.setattr(probe.sys, "argv", argv)  # the run's own: asked for, no refusal
    with pytest.raises(SystemExit, match="holds no validation scans"):
        probe.main()
    argv = ["candidate_probe", "--out", str(tmp_path), "--from-run", "--test", "--turns", "4"]
    monkeypatch.setattr(probe.sys, "argv", argv)
    with pytest.raises(SystemExit) as stop:
        probe.main()
    assert stop.value.code == 2
    assert "--turns 4: the run was scored with 1; add --reevaluate" in capsys.readouterr().err
