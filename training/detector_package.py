"""The candidate detector as a model package the worker runs (``task = "detection"``).

``scripts/candidate_probe.py --package DIR`` calls :func:`package_detector` with the weights
it trained and the figures it measured (``probe.json``): the package gets those weights,
the threshold chosen on validation, the held-out figures in ``[provenance.metrics]`` and
the model card, and a validated input domain built from anatomy scans it was trained and
calibrated on (``inference.domain``), with how many held-out scans and plain-noise CTs the
domain accepts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dicomio.records import Volume, axial_volume
from inference.architectures import CandidateNet
from inference.candidates import ISO_MM
from inference.domain import BASE_STATISTICS, STATISTICS
from inference.package import load_package
from inference.patches import CHANNELS, DEFAULT_CHANNELS, PATCH
from training.anatomy import indexed_scan
from training.domain import acceptance, build_domain, card_section, write_domain
from training.export import export_package

__all__ = ["package_detector", "run_views", "section_volumes"]

LESION = ["52988006", "SCT", "Lesion"]
#: 0.1.0: candidates [900, 300, 150]; 0.1.1: the same weights, each detection outlined at
#: its lesion's scale (``inference.candidates.lesion_outline``); 0.1.2: the same weights, of
#: the outlines at several scales the one with the steepest border; 0.2.0: the same
#: weights for chest CT only (``--section chest``: threshold chosen on the chest validation
#: scans, domain built from chest scans, the abdomen declined); 0.3.0: the same weights,
#: each patch scored with four turns (``[input] turns``). New weights or candidate
#: streams: 0.4.0.
VERSION = "0.3.0"
#: What a package for a section declines the other by: its body part, and the body's lung
#: share for a series that does not say (``inference.domain.lung_fraction``).
BODY_PARTS = {"chest": ("CHEST",), "abdomen": ("ABDOMEN",), None: ("CHEST", "ABDOMEN")}
#: Training scans (seed 1201; and half as many shifted validation scans, 1203) the domain
#: is built from: 120 from 0.2.0 (40 before; of chest scans alone, 40 + 20 turned away 1 in
#: 30 held-out chest scans by ranges too narrow, 120 + 60 none).
DOMAIN_SCANS = 120


def section_volumes(
    seed: int, count: int, section: str | None, *, shift: bool = False, other: bool = False
) -> Iterator[Volume]:
    """The first ``count`` anatomy scans of stream ``seed`` of ``section`` (None: any;
    ``other``: of any section but it), as volumes (axial, identity geometry)."""
    found = 0
    for index in range(50 * count):
        if found == count:
            return
        scan = indexed_scan(seed, index, shift=shift)
        if section is None or (scan.section == section) != other:
            found += 1
            yield axial_volume(scan.hu, scan.spacing, f"2.25.{seed}{index:05d}", modality="CT")


def _noise_cts(n: int) -> Iterator[Volume]:
    for k in range(n):
        rng = np.random.default_rng([77, k])
        hu = rng.uniform(-1024, 976, (60, 256, 256)).astype(np.float32)
        yield axial_volume(hu, (2.5, 0.8, 0.8), f"2.25.77{k:05d}", modality="CT")


def _metrics(probe: dict[str, Any]) -> dict[str, float]:
    out = {"validation_sensitivity_5mm": probe["validation"]["chosen"]["sensitivity_5mm"]}
    out["validation_fp_per_scan"] = probe["validation"]["chosen"]["fp_per_scan"]
    for name in ("shifted", "ordinary"):
        chosen = probe[name]["at_chosen"]
        out[f"{name}_outline_dice"] = probe[name]["outline_dice"]["mean_dice"]
        out[f"{name}_sensitivity_5mm"] = chosen["sensitivity_5mm"]
        out[f"{name}_fp_per_scan"] = chosen["fp_per_scan"]
        out[f"{name}_lesion_free_clean"] = chosen["lesion_free_clean"]
    section = probe.get("section")
    for name in ("shifted", "ordinary"):
        for other, figures in probe[name].get("by_section", {}).items():
            if section is not None and other != section:  # what it would report, were it let
                out[f"{name}_{other}_fp_per_scan"] = figures["fp_per_scan"]
                out[f"{name}_{other}_sensitivity_5mm"] = figures["sensitivity_5mm"]
    return {k: round(float(v), 4) for k, v in out.items()}


#: The optional candidate streams: ``[input]`` key, ``candidate_probe.py`` option, card text.
_STREAMS = (
    ("ground_glass", "--ground-glass", "ground glass in the lungs"),
    ("organ_snr", "--organ-snr", "of each sign inside solid organs against their noise"),
)


def _streams(args: dict[str, str]) -> dict[str, int]:
    """The optional streams a probe run used (absent or 0 in older runs: not used)."""
    return {key: int(args[key]) for key, *_ in _STREAMS if int(args.get(key, 0))}


#: The held-out streams of runs that name none (``--test-seeds``): shifted, ordinary.
HELD_OUT_SEEDS = (2201, 2202)
#: Scans of each validation stream in runs that name none (``--val``).
VALIDATION_SCANS = 32


def held_out_seeds(args: dict[str, str]) -> tuple[int, int]:
    """The seeds of a probe run's held-out streams, shifted and ordinary (``--test-seeds``;
    older runs: :data:`HELD_OUT_SEEDS`)."""
    if "test_seeds" not in args:
        return HELD_OUT_SEEDS
    shifted, ordinary = (int(x) for x in args["test_seeds"].split(","))
    return shifted, ordinary


def _start(args: dict[str, str]) -> Path | None:
    """The weights a probe run went on from (``--start``); None for a run from scratch
    (``args`` holds ``str(None)`` then, or no key in older runs)."""
    start = args.get("start", "None")
    return None if start == "None" else Path(start)


def _rounds(args: dict[str, str]) -> str:
    rounds, steps = int(args["rounds"]), int(args["steps"])
    text = f"{rounds} round{'s' if rounds > 1 else ''} of {steps} steps"
    if _start(args) is not None:
        return text + ", each after mining the false positives of the weights so far"
    return (
        text
        + ", the false positives of each round mined on the training scans and added to the next"
    )


def _start_sha256(args: dict[str, str]) -> str | None:
    """The SHA-256 of the weights a run went on from (``--start``), None for a run from
    scratch; an error if they are no longer where the run read them."""
    start = _start(args)
    return None if start is None else hashlib.sha256(start.read_bytes()).hexdigest()


def _blob_dice(figures: dict[str, Any]) -> str:
    """The same lesions' Dice with each outline at its own blob's scale, where a run has it."""
    blob = figures.get("blob_outline_dice")
    return "" if blob is None else f"; at the detection's own blob's scale {blob['mean_dice']:.2f}"


def _card(
    probe: dict[str, Any], keep: tuple[int, int, int], threshold: float, start: str | None
) -> str:
    args, training = probe["args"], probe["training"]
    streams = _streams(args)
    went_on = (
        []
        if start is None
        else [
            f"- Went on from weights with SHA-256 {start} (`--start`; the earlier package "
            "whose `model.toml` gives that `sha256` is in git history, with the command that "
            "trained it from scratch in its card): they "
            f"mined {int(args['mined'])} false positives per training scan with the new "
            "candidates, then trained on at a learning rate of "
            f"{float(args['finetune_lr']):g}.",
        ]
    )
    section = probe.get("section")
    shifted_seed, ordinary_seed = held_out_seeds(args)
    rows = []
    for name, what in (
        (
            "shifted",
            f"100 shifted scans (seed {shifted_seed}: sharp kernel, more noise, other spacing)",
        ),
        ("ordinary", f"60 ordinary scans (seed {ordinary_seed})"),
    ):
        if section is not None:
            n = probe[name]["by_section"][section]["scans"]
            what = f"the {n} {section} scans of {what}"
        c = probe[name]["at_chosen"]
        sizes = ", ".join(f"{k}: {v}" for k, v in probe[name]["by_size"].items())
        rows.append(
            f"| {what} | {c['sensitivity_5mm']:.2f} ({c['lesions_5mm']} lesions) | "
            f"{c['fp_per_scan']:.2f} | {c['lesion_free_clean']:.2f} | {sizes} |"
        )
    v = probe["validation"]["chosen"]
    return "\n".join(
        [
            "# lesion-detect — model card",
            "",
            "Research use only; trained on generated anatomy CT (`training/anatomy.py`), never on",
            "patient data. NOT for clinical use.",
            "",
            "- Task: detection (`inference.detect`): blob candidates on a 1.25 mm grid "
            f"({keep[0]} bright, {keep[1]} dark, {keep[2]} inside solid organs"
            + "".join(f", {streams[k]} {text}" for k, _, text in _STREAMS if k in streams)
            + " per scan), each "
            f"scored by `candidate_net` ({len(run_views(args))} channels of {PATCH}³ voxels of "
            f"{ISO_MM} mm: {_view_text(run_views(args))}){_turns_text(run_turns(args))}, "
            "one detection within 5 mm,",
            f"  threshold {threshold:.4f} ({_rule(probe)}); each",
            "  detection outlined by a half-way threshold within 1.5 radii of its blob or,",
            "  where that outline runs into its bound, of the blob of its sign that holds it",
            "  whose outline has the steepest border (`inference.candidates.lesion_outline`).",
            f"- Trained by `python scripts/candidate_probe.py {_command(args, section)}` on "
            f"{training['scans']} anatomy scans (seed 1201; {training['lesions']} lesions; "
            f"{training['positives']} lesion and {training['negatives']} other patches), "
            f"{_rounds(args)}.",
            *went_on,
            f"- Validation ({_validation_scans(probe)}, seeds 1202 ordinary, 1203 shifted): "
            f"sensitivity {v['sensitivity_5mm']:.2f} for lesions >= 5 mm at "
            f"{v['fp_per_scan']:.2f} false positives per scan.",
            *_section_lines(section),
            "",
            "## Held-out figures (scans never seen in training or validation)",
            "",
            "Sensitivity: lesions >= 5 mm (diameter of the sphere of their volume) with a",
            "detection inside; a false positive is a detection inside no lesion; clean: the share",
            "of lesion-free scans without one.",
            "",
            "| set | sensitivity >= 5 mm | false positives / scan | lesion-free clean | "
            "found by size |",
            "|---|---|---|---|---|",
            *rows,
            *_elsewhere(probe),
            "",
            "Outlines come from a threshold half-way between the blob's inside and its",
            "surroundings, not from a segmentation network; mean Dice of the outline of each",
            "lesion >= 5 mm found:",
            *(
                f"- {name}: {probe[name]['outline_dice']['mean_dice']:.2f} "
                f"({probe[name]['outline_dice']['lesions']} lesions)" + _blob_dice(probe[name])
                for name in ("shifted", "ordinary")
            ),
            "",
            "So volumes and diameters in the SR are approximate (the target for a segmentation",
            "model, Dice >= 0.85, is not met).",
            "",
        ]
    )


def _rule(probe: dict[str, Any]) -> str:
    """How the run chose its threshold on validation."""
    chosen = probe["validation"]["chosen"]
    budget = next(r for r in probe["validation"]["froc"] if r["fp_target"] == 0.25)
    if "clean_target" in chosen:
        return (
            f"the highest that finds validation's best within <= 0.25 false positives per "
            f"scan and >= {chosen['clean_target']:.0%} of lesion-free scans clean: "
            f"{chosen['fp_per_scan']:.2f} per scan, {chosen['lesion_free_clean']:.0%} clean there"
        )
    if chosen["threshold"] == budget["threshold"]:
        return "0.25 false positives per scan on validation"
    return (
        f"the highest that finds what validation's best at <= 0.25 false positives per scan "
        f"finds: {chosen['fp_per_scan']:.2f} per scan there"
    )


def _validation_scans(probe: dict[str, Any]) -> str:
    every = 2 * int(probe["args"].get("val", VALIDATION_SCANS))  # two streams of --val
    section = probe.get("section")
    if section is None:
        return f"{every} scans"
    n = probe["validation"]["by_section"][section]["scans"]
    return f"the {n} {section} scans of {every}"


def _section_lines(section: str | None) -> list[str]:
    """What a package for one section says of the others (nothing for one for all)."""
    if section is None:
        return []
    parts = ", ".join(BODY_PARTS[section])
    return [
        f"- **For {section} CT only.** Its domain records body part {parts} and the share of",
        f"  the body that is lung or gas, both from its {section} training and validation scans: a",
        "  series of another body part, or without Body Part Examined whose lung share is not",
        f"  a {section}'s, is declined with the reason; the threshold is chosen on the "
        f"validation's {section}",
        "  scans. The figures below are its section's; what it would report elsewhere were it",
        "  let through is printed after them.",
    ]


def _elsewhere(probe: dict[str, Any]) -> list[str]:
    """The other sections' figures at the same threshold, for a package for one section."""
    section = probe.get("section")
    if section is None:
        return []
    lines = []
    for name in ("shifted", "ordinary"):
        for other, f in sorted(probe[name]["by_section"].items()):
            if other == section:
                continue
            lines.append(
                f"- {other}, the {f['scans']} {other} scans of the {name} set: sensitivity "
                f"{f['sensitivity_5mm']:.2f} ({f['lesions_5mm']} lesions >= 5 mm), "
                f"{f['fp_per_scan']:.2f} false positives per scan, lesion-free clean "
                f"{f['lesion_free_clean']:.2f}"
            )
    if not lines:
        return []
    return [
        "",
        "What it would report where its domain declines the series, at the same threshold:",
        *lines,
    ]


def run_turns(args: dict[str, str]) -> int:
    """The half-turns a run scored each patch in (``--turns``; older runs: 1, as cut)."""
    return int(args.get("turns", 1))


def _turns_text(turns: int) -> str:
    if turns == 1:
        return ""
    return (
        f", the mean logit of each patch as cut and turned half a turn about "
        f"{turns - 1} ax{'i' if turns == 2 else 'e'}s (`[input] turns = {turns}`)"
    )


def run_views(args: dict[str, str]) -> tuple[str, ...]:
    """The patch views a run trained with (``--channels``; older runs: the default)."""
    return tuple(args.get("channels", ",".join(DEFAULT_CHANNELS)).split(","))


def _view_text(views: tuple[str, ...]) -> str:
    return ", ".join(CHANNELS[v].said for v in views)


def _command(args: dict[str, str], section: str | None = None) -> str:
    streams = _streams(args)
    views = run_views(args)
    seeds = held_out_seeds(args)
    val = int(args.get("val", VALIDATION_SCANS))
    return (
        f"--out OUT --train {args['train']} --steps {args['steps']} --rounds {args['rounds']} "
        f"--keep {args['keep']} --organ {args['organ']} "
        + "".join(f"{option} {streams[k]} " for k, option, _ in _STREAMS if k in streams)
        + ("" if not int(args.get("small", 0)) else f"--small {args['small']} ")
        + ("" if views == DEFAULT_CHANNELS else f"--channels {','.join(views)} ")
        + ("" if _start(args) is None else "--start PREVIOUS/weights.pt ")
        + ("" if val == VALIDATION_SCANS else f"--val {val} ")
        + ("" if run_turns(args) == 1 else f"--turns {run_turns(args)} ")
        + ("" if seeds == HELD_OUT_SEEDS else "--test-seeds {},{} ".format(*seeds))
        + "--test "
        + ("" if section is None else f"--section {section} ")
        + "--package DIR"
    )


def package_detector(
    weights: Path,
    probe: dict[str, Any],
    folder: Path,
    *,
    section: str | None = None,
    domain_scans: int = DOMAIN_SCANS,
    check_scans: int = 30,
) -> Path:
    """Write the detector package into ``folder`` from a probe run's weights and figures;
    its domain from ``domain_scans`` training and half as many shifted validation scans
    (of ``section`` only, where one is given: then it also records the body's lung share),
    checked on ``check_scans`` of each held-out set (of the section; a third as many of
    the other section beside) and 5 plain-noise CTs."""
    args = probe["args"]
    if probe.get("section") != section:
        raise ValueError(f"the run's figures are for section {probe.get('section')}, not {section}")
    keep = (int(args["keep"]), int(args["keep"]) // 3, int(args["organ"]))
    threshold = float(probe["validation"]["chosen"]["threshold"])
    views = run_views(args)
    net = CandidateNet(channels=len(views))
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    kind = "anatomy" if section is None else f"anatomy {section}"
    export_package(
        net,
        folder,
        name="lesion-detect",
        version=VERSION,
        task="detection",
        architecture="candidate_net",
        parameters={"channels": len(views), "base": 16},
        input_spec={
            "modality": ["CT"],
            "candidates": list(keep),
            # absent when 0: a package without the streams reads as before
            **_streams(args),
            # absent when the default: a package of 0.1 reads as before
            **({} if views == DEFAULT_CHANNELS else {"patch_channels": list(views)}),
            # absent when 1: a package of 0.2 reads as before
            **({} if run_turns(args) == 1 else {"turns": run_turns(args)}),
            "suppress_mm": 5.0,
        },
        labels=[{"name": "lesion", "code": LESION, "threshold": threshold}],
        training_data="generated anatomy CT (training/anatomy.py), seed 1201; threshold on "
        + ("seeds 1202/1203" if section is None else f"the {section} scans of seeds 1202/1203"),
        metrics=_metrics(probe),
        card=_card(probe, keep, threshold, _start_sha256(args)),
    )
    model = load_package(folder, torch.device("cpu"))
    sources = [
        *section_volumes(1201, domain_scans, section),
        *section_volumes(1203, domain_scans // 2, section, shift=True),
    ]
    domain = build_domain(
        model,
        sources,
        body_parts=BODY_PARTS[section],
        built_from=f"{kind} scans: training (seed 1201, {domain_scans}) and shifted "
        f"validation (seed 1203, {domain_scans // 2})",
        statistics=BASE_STATISTICS if section is None else tuple(STATISTICS),
    )
    del sources
    write_domain(folder, domain)
    shifted_seed, ordinary_seed = held_out_seeds(args)
    sets: list[tuple[str, Iterator[Volume]]] = [
        (
            f"shifted {kind} (seed {shifted_seed})",
            section_volumes(shifted_seed, check_scans, section, shift=True),
        ),
        (
            f"ordinary {kind} (seed {ordinary_seed})",
            section_volumes(ordinary_seed, check_scans, section),
        ),
    ]
    if section is not None:
        for seed, shift, name in (
            (shifted_seed, True, "shifted"),
            (ordinary_seed, False, "ordinary"),
        ):
            sets.append(
                (
                    f"{name} anatomy of the other section (seed {seed})",
                    section_volumes(seed, check_scans // 3, section, shift=shift, other=True),
                )
            )
    sets.append(("plain-noise CT", _noise_cts(5)))
    checks = []
    for name, volumes in sets:
        accepted, total, _ = acceptance(model, domain, volumes)
        checks.append((name, accepted, total))
    card_section(folder, domain, checks, command="scripts/candidate_probe.py --package")
    return folder
