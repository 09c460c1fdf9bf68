"""The detector package's record of how it was trained: the command that remakes it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from inference.patches import DEFAULT_CHANNELS
from training.detector_package import (
    HELD_OUT_SEEDS,
    _command,
    _rounds,
    _rule,
    _start_sha256,
    _streams,
    _turns_text,
    _validation_scans,
    _view_text,
    held_out_seeds,
    run_turns,
    run_views,
)

_RUN = {"train": "300", "steps": "2000", "rounds": "3", "keep": "900", "organ": "150"}


def test_the_command_names_the_optional_streams_a_run_used_and_only_those() -> None:
    older = dict(_RUN)  # a run from before the optional streams: no keys for them
    assert _streams(older) == {}
    assert "--ground-glass" not in _command(older) and "--organ-snr" not in _command(older)
    newer = dict(_RUN, ground_glass="100", organ_snr="300")
    assert _streams(newer) == {"ground_glass": 100, "organ_snr": 300}
    assert _command(newer) == (
        "--out OUT --train 300 --steps 2000 --rounds 3 --keep 900 --organ 150 "
        "--ground-glass 100 --organ-snr 300 --test --package DIR"
    )
    assert _streams(dict(_RUN, ground_glass="0", organ_snr="300")) == {"organ_snr": 300}
    assert "--small" not in _command(dict(_RUN, small="0"))
    assert "--organ 150 --small 40 --test" in _command(dict(_RUN, small="40"))


def test_a_run_that_went_on_from_earlier_weights_says_so(tmp_path: Path) -> None:
    weights = tmp_path / "start.pt"
    weights.write_bytes(b"earlier weights")
    went_on = dict(_RUN, start=str(weights), rounds="1")
    assert _command(went_on).endswith("--start PREVIOUS/weights.pt --test --package DIR")
    assert _start_sha256(went_on) == hashlib.sha256(b"earlier weights").hexdigest()
    assert _rounds(went_on) == (
        "1 round of 2000 steps, each after mining the false positives of the weights so far"
    )
    fresh = dict(_RUN, start="None")
    assert _start_sha256(fresh) is None and "--start" not in _command(fresh)
    assert _rounds(fresh).startswith("3 rounds of 2000 steps, the false positives of each")


def test_the_command_and_card_name_the_views_a_run_trained_with_if_not_the_default() -> None:
    assert run_views(_RUN) == DEFAULT_CHANNELS and "--channels" not in _command(_RUN)
    views = "lung,soft_tissue,lung_coarse,organ_smooth"
    wider = dict(_RUN, channels=views)
    assert run_views(wider) == tuple(views.split(","))
    assert f"--organ 150 --channels {views} --test" in _command(wider)
    assert _view_text(run_views(wider)) == (
        "lung window, soft-tissue window, lung window at twice the voxel size, "
        "smoothed organ window"
    )


def test_a_package_for_one_section_is_remade_by_a_command_that_names_it() -> None:
    assert _command(_RUN, "chest").endswith("--organ 150 --test --section chest --package DIR")
    assert "--section" not in _command(_RUN)


def test_other_validation_sizes_and_held_out_streams_are_named_in_the_command() -> None:
    assert held_out_seeds(_RUN) == HELD_OUT_SEEDS == (2201, 2202)  # older runs: no keys
    assert "--val" not in _command(_RUN) and "--test-seeds" not in _command(_RUN)
    fresh = dict(_RUN, val="96", test_seeds="2401,2402")
    assert held_out_seeds(fresh) == (2401, 2402)
    assert _command(fresh, "chest").endswith(
        "--organ 150 --val 96 --test-seeds 2401,2402 --test --section chest --package DIR"
    )
    assert "--test-seeds" not in _command(dict(_RUN, val="32", test_seeds="2201,2202"))


def test_the_card_names_the_threshold_rule_the_run_used() -> None:
    budget = {"fp_target": 0.25, "threshold": 0.94, "fp_per_scan": 0.25}
    old = {"fp_target": 0.25, "threshold": 0.96, "fp_per_scan": 0.12, "lesion_free_clean": 0.8}
    whole = dict(old, threshold=0.97, fp_per_scan=0.07, lesion_free_clean=0.91, clean_target=0.9)

    def run(chosen: dict[str, float]) -> dict[str, object]:
        return {"validation": {"chosen": chosen, "froc": [budget]}}

    assert _rule(run(budget)) == "0.25 false positives per scan on validation"
    assert _rule(run(old)).startswith("the highest that finds what validation's best at <= 0.25")
    assert _rule(run(whole)) == (
        "the highest that finds validation's best within <= 0.25 false positives per scan "
        "and >= 90% of lesion-free scans clean: 0.07 per scan, 91% clean there"
    )


def test_the_command_and_card_name_the_turns_a_run_scored_with_if_not_one() -> None:
    assert run_turns(_RUN) == 1 and "--turns" not in _command(_RUN)
    assert _turns_text(1) == "" and "--turns" not in _command(dict(_RUN, turns="1"))
    turned = dict(_RUN, val="96", turns="4")
    assert run_turns(turned) == 4
    assert "--val 96 --turns 4 --test" in _command(turned)
    assert _turns_text(4) == (
        ", the mean logit of each patch as cut and turned half a turn about 3 axes "
        "(`[input] turns = 4`)"
    )
    assert "about 1 axis" in _turns_text(2)


def test_the_card_counts_the_validation_scans_the_run_scored() -> None:
    by = {"validation": {"by_section": {"chest": {"scans": 150}}}}
    assert (
        _validation_scans({"args": _RUN, **by, "section": "chest"}) == "the 150 chest scans of 64"
    )
    wide = {"args": dict(_RUN, val="96"), **by, "section": "chest"}
    assert _validation_scans(wide) == "the 150 chest scans of 192"
    assert _validation_scans({"args": dict(_RUN, val="96")}) == "192 scans"
