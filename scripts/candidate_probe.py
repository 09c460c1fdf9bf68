"""Can a lesion detector for the anatomy scans be trained on a CPU? Candidates + a small CNN.

    python scripts/candidate_probe.py --out OUT [--train 300] [--steps 2500] [--workers 2]
        [--rounds 2 --mined 30] [--start WEIGHTS] [--keep 900] [--organ 150]
        [--channels lung,soft_tissue,lung_coarse[,organ_smooth]] [--test] [--package DIR]
    python scripts/candidate_probe.py --out OUT --from-run [--reevaluate] [--test]
        [--section chest] [--package DIR]
    python scripts/candidate_probe.py --out OUT --from-run --reevaluate --test
        --threshold T [--test-seeds S,O] [--section chest] [--turns 4]

1. Training set (seed 1201, the seg sweep's): each scan regridded to 1.25 mm, its blob
   candidates found (``inference.candidates``) and cut into the views ``--channels`` names
   (``inference.patches``; a view ``--start``'s weights lack starts at zero weight);
   positives are the candidates inside a lesion
   and up to ``--extra`` more points near each lesion's centre (``--small`` more from the
   whole of each lesion under 10 mm), negatives the strongest
   ``--hard`` candidates outside every lesion and ``--easy`` more drawn at random.
2. ``training.candidate_net`` trained on them (CPU, fixed seed); each round after the first
   (or each round, from ``--start``'s weights) first scores every candidate of the training
   scans with the current weights and adds the ``--mined`` highest-scoring non-lesions of
   each scan to the hard negatives (a quarter of each batch), then goes on training.
3. Validation (32 ordinary scans, seed 1202; 32 shifted, seed 1203) and, with ``--test``, the
   held-out sets (100 shifted, seed 2201; 60 ordinary, seed 2202; ``--test-seeds`` others,
   fresh ones where a run's test figures have been seen): every candidate of a scan
   scored, one detection per place (5 mm suppression), then for each threshold the
   sensitivity for lesions >= 5 mm (diameter of the sphere of their volume, as
   ``training.metrics``), false positives per scan (a detection inside no lesion; inside a
   lesion < 5 mm counts neither way) and the share of lesion-free scans with none. The
   threshold is chosen on validation and applied to the test sets: the best sensitivity
   at <= 0.25 false positives per scan, at the highest threshold that reaches it; with
   ``--section chest``, on the validation's chest scans, and every set's figures are its
   chest scans' (the abdominal ones' beside them, ``by_section``).
   Everything is written to OUT as it finishes (``probe.json``).
4. With ``--package DIR`` (and ``--test``): the weights become the model package the worker
   runs (``training.detector_package``: threshold, figures, model card, input domain);
   ``--from-run`` packages what an earlier run left in OUT instead of training again
   (``--reevaluate``: evaluates its weights again first, with this version's figures;
   ``--section`` alone: the same scores summarised for that section, nothing scored again).
   With ``--section chest`` the package is for chest CT: its domain is built from chest
   scans and declines the abdomen (``[domain]`` body part and the body's lung share).
5. ``--threshold T`` (with ``--from-run --reevaluate --test``, no package): no validation;
   the held-out sets scored at T — a shipped package's weights (a copy as OUT's
   ``candidate_net.pt``, its arguments in OUT's ``probe.json``) at its own threshold, on
   the fresh streams a candidate is compared on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.patches import CHANNELS, DEFAULT_CHANNELS  # noqa: E402 (ROOT on the path first)
from training.detector_package import (  # noqa: E402
    HELD_OUT_SEEDS,
    VALIDATION_SCANS,
    held_out_seeds,
    package_detector,
    run_turns,
    run_views,
)

FP_POINTS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
SIZES = ((0, 5), (5, 7), (7, 10), (10, 15), (15, 99))
T0 = time.time()


def log(*a: object) -> None:
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


KEEP = {"bright": 600, "dark": 200, "organ": 0, "ground_glass": 0, "organ_snr": 0}
#: The patch views the CNN sees (``inference.patches.CHANNELS``), set from ``--channels``;
#: runs before it and ``--start`` weights: ``DEFAULT_CHANNELS``.
VIEWS = list(DEFAULT_CHANNELS)
#: Half-turns each scored patch is averaged over (``inference.detect.TURNS``), set from
#: ``--turns``; runs before it: 1, the patch as cut. Mining always scores as cut.
TURNS = [1]


def _keep(args: dict[str, str]) -> dict[str, int]:
    """``KEEP`` of a run from its arguments as ``probe.json`` records them (older runs lack
    the optional streams: 0)."""
    return {
        "bright": int(args["keep"]),
        "dark": int(args["keep"]) // 3,
        "organ": int(args["organ"]),
        "ground_glass": int(args.get("ground_glass", 0)),
        "organ_snr": int(args.get("organ_snr", 0)),
    }


class Scan(NamedTuple):
    hu: Any  # on the candidates' isotropic grid
    lab: Any  # lesion labels 1..n on that grid
    diameters: Any  # each lesion's diameter (mm), from its volume on the scan's own grid
    cand: Any  # its candidates (training.candidates.Candidates)
    section: str


def _scan(seed: int, index: int, shift: bool) -> Scan:
    import torch

    from inference.candidates import find_candidates, regrid
    from training.anatomy import indexed_scan
    from training.metrics import labelled_lesions

    torch.set_num_threads(1)
    scan = indexed_scan(seed, index, shift=shift)
    labels, diameters = labelled_lesions(scan.mask, voxel_mm3=float(np.prod(scan.spacing)))
    hu = regrid(scan.hu, scan.spacing)
    cand = find_candidates(
        hu,
        bright_keep=KEEP["bright"],
        dark_keep=KEEP["dark"],
        organ_keep=KEEP["organ"],
        ground_glass_keep=KEEP["ground_glass"],
        organ_snr_keep=KEEP["organ_snr"],
    )
    lab = regrid(labels, scan.spacing, order=0).astype(np.int32)
    return Scan(hu, lab, diameters, cand, scan.section)


#: Lesions under this diameter (mm) get ``--small`` more positives.
SMALL_MM = 10.0


def lesion_points(
    lab: Any, diameters: Any, extra: int, small: int, rng: np.random.Generator
) -> list[Any]:
    """Positive points of each lesion besides the candidates inside it: up to ``extra`` of
    its core (within 0.35 of its radius from its centre) and, for a lesion under
    :data:`SMALL_MM`, ``small`` more drawn from its whole volume (with replacement: a
    small lesion holds few voxels on the 1.25 mm grid, and few candidates)."""
    out = []
    for k in range(1, len(diameters) + 1):
        inside = np.argwhere(lab == k)
        if len(inside) == 0:
            continue
        centre = inside.mean(axis=0)
        dist = np.linalg.norm(inside - centre, axis=1)
        core = inside[dist <= max(1.0, 0.35 * dist.max())]
        out.append(core[rng.choice(len(core), min(extra, len(core)), replace=False)])
        if small and diameters[k - 1] < SMALL_MM:
            out.append(inside[rng.choice(len(inside), small, replace=True)])
    return out


def _train_part(
    args: tuple[int, int, int, int, int, int, str, dict[str, int], list[str]],
) -> tuple[Any, Any, int]:
    from inference.patches import patches

    index, seed, extra, small, hard, easy, cache, keep, views = args
    KEEP.update(keep)
    rng = np.random.default_rng([seed, index, 7])
    hu, lab, diameters, cand, _ = _scan(seed, index, False)
    at = lab[tuple(cand.points.T)]
    near = ndimage.binary_dilation(lab > 0, iterations=2)[tuple(cand.points.T)]
    np.savez(
        Path(cache) / f"{seed}-{index}.npz",
        hu=np.clip(np.round(hu), -1024, 3071).astype(np.int16),
        points=cand.points[~near],
    )
    pos = [cand.points[at > 0], *lesion_points(lab, diameters, extra, small, rng)]
    outside = np.flatnonzero(~near)
    chosen = list(outside[:hard])
    rest = outside[hard:]
    if len(rest):
        chosen += list(rng.choice(rest, min(easy, len(rest)), replace=False))
    return (
        patches(hu, np.concatenate(pos), views),
        patches(hu, cand.points[np.asarray(chosen, int)], views),
        len(diameters),
    )


def _load(weights: str, channels: int = 3) -> Any:
    import torch

    from inference.architectures import CandidateNet

    torch.set_num_threads(1)
    net = CandidateNet(channels=channels)
    net.load_state_dict(torch.load(weights, weights_only=True))
    return net.eval()


def _mine_part(args: tuple[str, int, int, str, int, list[str]]) -> Any:
    """The ``k`` negatives of a cached training scan the current model scores highest."""
    from inference.detect import score
    from inference.patches import patches

    cache, seed, index, weights, k, views = args
    data = np.load(Path(cache) / f"{seed}-{index}.npz")
    hu, points = data["hu"].astype(np.float32), data["points"]
    x = patches(hu, points, views)
    s = score(_load(weights, len(views)), x)
    top = np.argsort(-s, kind="stable")[:k]
    return x[top], float(s[top].mean()) if len(s) >= k else 0.0


def _eval_part(
    args: tuple[int, int, bool, str, dict[str, int], list[str], int],
) -> dict[str, Any]:
    from inference.candidates import ISO_MM, lesion_outline, outline, suppress
    from inference.detect import score
    from inference.patches import patches

    index, seed, shift, weights, keep, views, turns = args
    KEEP.update(keep)
    hu, lab, diameters, cand, section = _scan(seed, index, shift)
    s = score(_load(weights, len(views)), patches(hu, cand.points, views), turns=turns)
    at = lab[tuple(cand.points.T)]
    kept = suppress(cand.points, s, radius=5.0 / ISO_MM)
    grown = ndimage.grey_dilation(lab, size=3)
    hit = grown[tuple(cand.points[kept].T)] if len(kept) else np.zeros(0, np.int32)
    sizes = np.bincount(lab.ravel(), minlength=len(diameters) + 1)
    # of each detection's outline with the lesion it is in (-1: in none): as the worker
    # outlines it (``lesion_outline``) and at its own blob's scale (``outline``)
    dice: list[float] = []
    blob_dice: list[float] = []
    for i, k in zip(kept, hit, strict=True):
        if k == 0:
            dice.append(-1.0)
            blob_dice.append(-1.0)
            continue
        for out, (where, mask) in (
            (dice, lesion_outline(hu, cand, int(i))),
            (
                blob_dice,
                outline(
                    hu, cand.points[i], float(cand.diameter_mm[i]), bright=bool(cand.bright[i])
                ),
            ),
        ):
            both = int(np.count_nonzero(mask & (lab[where] == k)))
            out.append(2 * both / (int(mask.sum()) + int(sizes[k])))
    return {
        "seed": seed,
        "index": index,
        "section": section,  # chest or abdomen (runs before 2026-12-06 lack it)
        "diameters": [float(d) for d in diameters],
        "scores": [float(x) for x in s[kept]],
        "lesion": [int(x) for x in hit],  # 0: in no lesion; k: in lesion k (1-based)
        "outline_dice": [round(d, 4) for d in dice],
        "blob_outline_dice": [round(d, 4) for d in blob_dice],
        "candidates": len(cand),
        "best_in_lesion": [
            float(s[at == k].max(initial=0.0)) for k in range(1, len(diameters) + 1)
        ],
    }


def at_threshold(scans: list[dict[str, Any]], t: float) -> dict[str, float]:
    lesions = found = fp = clean = free = 0
    for sc in scans:
        d = np.asarray(sc["diameters"])
        hits = {k for k, sco in zip(sc["lesion"], sc["scores"], strict=True) if sco >= t and k > 0}
        counted = d >= 5.0
        lesions += int(counted.sum())
        found += sum(1 for k in hits if counted[k - 1])
        n_fp = sum(
            1 for k, sco in zip(sc["lesion"], sc["scores"], strict=True) if sco >= t and k == 0
        )
        fp += n_fp
        if len(d) == 0:
            free += 1
            clean += n_fp == 0
    return {
        "threshold": t,
        "sensitivity_5mm": found / max(lesions, 1),
        "fp_per_scan": fp / max(len(scans), 1),
        "lesion_free_clean": clean / max(free, 1),
        "lesions_5mm": lesions,
        "lesion_free": free,
    }


def by_section(scans: list[dict[str, Any]], t: float) -> dict[str, dict[str, float]]:
    """``at_threshold`` of the chest scans and of the abdominal ones apart (runs before
    2026-12-06 did not record a scan's section: empty)."""
    sections = sorted({sc["section"] for sc in scans if "section" in sc})
    return {
        name: {
            "scans": sum(1 for sc in scans if sc.get("section") == name),
            **at_threshold([sc for sc in scans if sc.get("section") == name], t),
        }
        for name in sections
    }


def froc(scans: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The best sensitivity at each false-positive rate of ``FP_POINTS``."""
    thresholds = sorted({s for sc in scans for s in sc["scores"]}, reverse=True)
    rows = []
    for target in FP_POINTS:
        best = at_threshold(scans, 1.01)
        lo, hi = 0, len(thresholds) - 1
        while lo <= hi:  # false positives grow as the threshold falls
            mid = (lo + hi) // 2
            r = at_threshold(scans, thresholds[mid])
            if r["fp_per_scan"] <= target:
                best, lo = r, mid + 1
            else:
                hi = mid - 1
        rows.append({"fp_target": target, **best})
    return rows


def highest_at(scans: list[dict[str, Any]], point: dict[str, float]) -> dict[str, float]:
    """The highest threshold with ``point``'s sensitivity (a :func:`froc` row): no false
    positive is let through that finds no more lesions on these scans (from 2026-12-06,
    lesion-detect 0.2.0; the row itself, ``froc``'s lowest threshold within its budget,
    was the threshold before)."""
    for t in sorted(
        {s for sc in scans for s in sc["scores"] if s >= point["threshold"]}, reverse=True
    ):
        r = at_threshold(scans, t)
        if r["sensitivity_5mm"] >= point["sensitivity_5mm"]:
            return {"fp_target": point["fp_target"], **r}
    return point


#: the issue's budget for the lesion-free scans: at least this share with no detection
CLEAN_TARGET = 0.9


def within_budget(scans: list[dict[str, Any]], point: dict[str, float]) -> dict[str, float]:
    """The threshold on these scans: the best sensitivity within the whole budget — <=
    ``point``'s false positives per scan (a :func:`froc` row) **and** >= ``CLEAN_TARGET``
    of the lesion-free scans clean — at the highest threshold that reaches it (from
    2026-12-07; :func:`highest_at` alone looked at the false positives only, and chose
    thresholds that left fewer than 90 % of lesion-free scans clean). Where no threshold
    among the scores meets both, :func:`highest_at`'s."""
    best: dict[str, float] | None = None
    for t in sorted(
        {s for sc in scans for s in sc["scores"] if s >= point["threshold"]}, reverse=True
    ):
        r = at_threshold(scans, t)  # at or above point's threshold: within its false positives
        if r["lesion_free_clean"] < CLEAN_TARGET:
            continue
        if best is None or r["sensitivity_5mm"] > best["sensitivity_5mm"]:
            best = r
    if best is None:
        return highest_at(scans, point)
    return {"fp_target": point["fp_target"], "clean_target": CLEAN_TARGET, **best}


def by_size(scans: list[dict[str, Any]], t: float) -> dict[str, str]:
    out = {}
    for lo, hi in SIZES:
        n = k = 0
        for sc in scans:
            hits = {h for h, s in zip(sc["lesion"], sc["scores"], strict=True) if s >= t and h > 0}
            for i, d in enumerate(sc["diameters"]):
                if lo <= d < hi:
                    n += 1
                    k += (i + 1) in hits
        out[f"{lo}-{hi} mm"] = f"{k}/{n}"
    return out


def outline_dice(
    scans: list[dict[str, Any]], t: float, key: str = "outline_dice"
) -> dict[str, float]:
    """Mean Dice of the outline of each lesion >= 5 mm found at ``t`` (that of its
    best-scored detection, ``inference.candidates.lesion_outline``; with ``key =
    "blob_outline_dice"``, ``outline`` at the detection's own blob, as before 2026-12-06)."""
    found: list[float] = []
    for sc in scans:
        best: dict[int, tuple[float, float]] = {}
        for k, sco, d in zip(sc["lesion"], sc["scores"], sc.get(key, []), strict=True):
            if k > 0 and sco >= t and sc["diameters"][k - 1] >= 5 and sco > best.get(k, (-1, 0))[0]:
                best[k] = (sco, d)
        found += [d for _, d in best.values()]
    return {"lesions": len(found), "mean_dice": float(np.mean(found)) if found else 0.0}


def covered(scans: list[dict[str, Any]]) -> str:
    """Lesions >= 5 mm with a candidate inside them, of all."""
    pairs = [
        (d, b) for s in scans for d, b in zip(s["diameters"], s["best_in_lesion"], strict=True)
    ]
    return f"{sum(1 for d, b in pairs if d >= 5 and b > 0)}/{sum(1 for d, _ in pairs if d >= 5)}"


def evaluate(
    pool: ProcessPoolExecutor, weights: Path, sets: list[tuple[int, int, bool]]
) -> list[dict[str, Any]]:
    jobs = [
        (i, seed, shift, str(weights), KEEP, VIEWS, TURNS[0])
        for seed, n, shift in sets
        for i in range(n)
    ]
    return list(pool.map(_eval_part, jobs))


def _coverage_part(args: tuple[int, int, bool, dict[str, int]]) -> list[tuple[str, float, int]]:
    """Per lesion of a scan: its section, diameter and the first candidate family that
    reaches it (``Candidates.family``; -1 none)."""
    index, seed, shift, keep = args
    KEEP.update(keep)
    _, lab, diameters, cand, section = _scan(seed, index, shift)
    at = lab[tuple(cand.points.T)]
    out = []
    for k in range(1, len(diameters) + 1):
        hits = np.flatnonzero(at == k)
        family = int(cand.family[hits].min()) if len(hits) else -1
        out.append((section, float(diameters[k - 1]), family))
    return out


def coverage(pool: ProcessPoolExecutor, sets: list[tuple[int, int, bool]]) -> dict[str, Any]:
    """Lesions >= 5 mm with a candidate inside them: all, and by section and family."""
    jobs = [(i, seed, shift, KEEP) for seed, n, shift in sets for i in range(n)]
    rows = [r for part in pool.map(_coverage_part, jobs) for r in part if r[1] >= 5.0]
    out: dict[str, Any] = {
        "lesions_5mm": len(rows),
        "with_a_candidate": sum(f >= 0 for *_, f in rows),
    }
    for section in ("chest", "abdomen"):
        mine = [f for sec, _, f in rows if sec == section]
        out[section] = f"{sum(f >= 0 for f in mine)}/{len(mine)}"
    out["only_in_an_organ_family"] = sum(f in (2, 3) for *_, f in rows)
    out["only_in_the_ground_glass_family"] = sum(f == 4 for *_, f in rows)
    out["only_in_the_organ_snr_family"] = sum(f in (5, 6) for *_, f in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--extra", type=int, default=6)
    ap.add_argument(
        "--small",
        type=int,
        default=0,
        help=f"more positives per lesion under {SMALL_MM:g} mm, from its whole volume",
    )
    ap.add_argument("--hard", type=int, default=70)
    ap.add_argument("--easy", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--start", type=Path, default=None, help="weights to mine with first, then go on"
    )
    ap.add_argument("--finetune-lr", type=float, default=5e-4, help="learning rate when going on")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="training rounds; each after the first adds mined false positives",
    )
    ap.add_argument(
        "--mined", type=int, default=30, help="false positives mined per training scan and round"
    )
    ap.add_argument(
        "--keep", type=int, default=600, help="bright candidates per scan (dark: a third)"
    )
    ap.add_argument(
        "--cache", type=Path, default=None, help="training scans' volumes (default OUT/cache)"
    )
    ap.add_argument("--organ", type=int, default=0, help="blobs per scan inside solid organs")
    ap.add_argument(
        "--ground-glass", type=int, default=0, help="faint lung blobs per scan (ground glass)"
    )
    ap.add_argument(
        "--organ-snr",
        type=int,
        default=0,
        help="blobs per scan and sign inside solid organs, by contrast to the organ's noise",
    )
    ap.add_argument(
        "--channels",
        default=",".join(DEFAULT_CHANNELS),
        help="the patch views the CNN sees, comma-separated (inference.patches.CHANNELS)",
    )
    ap.add_argument(
        "--coverage",
        type=int,
        default=0,
        metavar="N",
        help="only count the lesions with a candidate in the first N scans of each test set",
    )
    ap.add_argument(
        "--val", type=int, default=VALIDATION_SCANS, help="scans of each validation set"
    )
    ap.add_argument(
        "--test-seeds",
        default="{},{}".format(*HELD_OUT_SEEDS),
        help="SHIFTED,ORDINARY: the seeds of the held-out streams (fresh ones for weights "
        "whose test figures have been seen)",
    )
    ap.add_argument(
        "--section",
        choices=("chest", "abdomen"),
        default=None,
        help="a package for this section's scans: threshold and figures from them (the other "
        "section's beside), its domain built from them",
    )
    ap.add_argument("--package", type=Path, default=None, help="write the model package here")
    ap.add_argument(
        "--from-run", action="store_true", help="package OUT's weights and figures, no training"
    )
    ap.add_argument(
        "--reevaluate",
        action="store_true",
        help="with --from-run: evaluate OUT's weights again (then package, with --package)",
    )
    ap.add_argument(
        "--test", action="store_true", help="also the held-out sets (100 shifted, 60 ordinary)"
    )
    ap.add_argument(
        "--turns",
        type=int,
        default=None,
        choices=range(1, 5),
        help="score each patch as cut and turned half a turn about each axis, the mean logit "
        "of the first N (inference.detect.TURNS; default 1: as cut); recorded in probe.json. "
        "With --from-run: the run's own unless given, and another only with --reevaluate",
    )
    ap.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="with --from-run --reevaluate --test: no validation; the held-out sets at this "
        "threshold (a shipped package's, to score it on fresh streams); no --package",
    )
    a = ap.parse_args()
    import torch

    from training.candidate_net import CandidateSchedule, train_candidates, widened

    try:
        shifted_seed, ordinary_seed = held_out_seeds(vars(a))
    except ValueError:
        ap.error(
            f"--test-seeds: two seeds, shifted and ordinary, e.g. 2401,2402 (not {a.test_seeds!r})"
        )
    if {shifted_seed, ordinary_seed} & {1201, 1202, 1203}:
        ap.error("--test-seeds: 1201-1203 are the training and validation streams")

    unknown = [v for v in a.channels.split(",") if v not in CHANNELS]
    if unknown:
        ap.error(f"--channels: unknown view(s) {unknown} (known: {', '.join(CHANNELS)})")

    if a.threshold is not None and (a.package or not (a.from_run and a.reevaluate and a.test)):
        ap.error("--threshold goes with --from-run --reevaluate --test, without --package")
    if a.package and not a.test and not (a.from_run and not a.reevaluate):
        ap.error("--package needs the held-out figures: add --test")
    if a.from_run:
        if not (a.package or a.reevaluate or a.test):
            ap.error("--from-run needs --package DIR, --reevaluate or --test")
        earlier = json.loads((a.out / "probe.json").read_text())
        ran = run_turns(earlier["args"])
        if a.turns is not None and a.turns != ran and not a.reevaluate:
            ap.error(f"--turns {a.turns}: the run was scored with {ran}; add --reevaluate")
        a.turns = ran if a.turns is None else a.turns
        if a.reevaluate:  # the same weights and candidates, this version's evaluation
            resave = _resume(
                earlier, a, val=str(a.val), test_seeds=a.test_seeds, turns=str(a.turns)
            )
            with ProcessPoolExecutor(a.workers) as pool:
                if a.threshold is not None:
                    _score_at(pool, a.out / "candidate_net.pt", earlier, a, resave)
                else:
                    _evaluate_all(pool, a.out / "candidate_net.pt", earlier, a, resave)
        elif a.test:  # the run's validation kept: its threshold, only the held-out sets scored
            _test_from_run(earlier, a)
        elif a.package:
            if a.section != earlier.get("section"):  # the same scans, another section's figures
                summarise(earlier, a.section)
                (a.out / "probe.json").write_text(json.dumps(earlier, indent=1))
            _package(a.out / "candidate_net.pt", earlier, a)
        return
    a.out.mkdir(parents=True, exist_ok=True)
    a.turns = 1 if a.turns is None else a.turns
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(a).items()}}
    KEEP.update(_keep(result["args"]))
    VIEWS[:] = run_views(result["args"])
    TURNS[:] = [a.turns]

    def save() -> None:
        (a.out / "probe.json").write_text(json.dumps(result, indent=1))

    with ProcessPoolExecutor(a.workers) as pool:
        if a.coverage:
            for name, sets in (
                ("ordinary", [(ordinary_seed, min(a.coverage, 60), False)]),
                ("shifted", [(shifted_seed, min(a.coverage, 100), True)]),
            ):
                result[f"coverage_{name}"] = coverage(pool, sets)
                log(name, result[f"coverage_{name}"])
                save()
            return
        cache = a.cache or a.out / "cache"
        cache.mkdir(exist_ok=True)
        jobs = [
            (i, 1201, a.extra, a.small, a.hard, a.easy, str(cache), KEEP, VIEWS)
            for i in range(a.train)
        ]
        parts = list(pool.map(_train_part, jobs))
        pos = np.concatenate([p for p, _, _ in parts])
        neg = np.concatenate([q for _, q, _ in parts])
        result["training"] = {
            "scans": a.train,
            "lesions": sum(n for *_, n in parts),
            "positives": len(pos),
            "negatives": len(neg),
            "seconds": time.time() - T0,
        }
        log("training set", result["training"])
        del parts
        save()
        torch.set_num_threads(a.workers)
        t = time.time()
        weights = a.out / "candidate_net.pt"
        net = _load(str(a.start)) if a.start else None
        if net is not None and VIEWS != list(DEFAULT_CHANNELS):  # new views: zero weight
            net = widened(net, DEFAULT_CHANNELS, VIEWS)
        hard, rounds = None, []
        for r in range(a.rounds):
            if net is not None:  # its false positives on the training scans join the negatives
                torch.set_num_threads(a.workers)
                torch.save(net.state_dict(), weights)
                mine = [(str(cache), 1201, i, str(weights), a.mined, VIEWS) for i in range(a.train)]
                found = list(pool.map(_mine_part, mine))
                new = np.concatenate([x for x, _ in found])
                hard = new if hard is None else np.concatenate([hard, new])
                rounds.append(
                    {
                        "before_round": r + 1,
                        "mined": len(new),
                        "mean_top_score": float(np.mean([m for _, m in found])),
                    }
                )
                log("mined", rounds[-1])
            lr = 1e-3 if net is None else a.finetune_lr
            net = train_candidates(
                pos, neg, CandidateSchedule(steps=a.steps, lr=lr), seed=1 + r, hard=hard, start=net
            )
            torch.save(net.state_dict(), weights)
        result["training"]["rounds"] = rounds
        result["training"]["train_seconds"] = time.time() - t
        del pos, neg, hard
        log("trained", result["training"]["train_seconds"])
        _evaluate_all(pool, weights, result, a, save)


def _of(scans: list[dict[str, Any]], section: str | None) -> list[dict[str, Any]]:
    """The scans of ``section`` (None: all)."""
    return scans if section is None else [sc for sc in scans if sc.get("section") == section]


def _figures(scans: list[dict[str, Any]], t: float, section: str | None) -> dict[str, Any]:
    """A set's figures at threshold ``t``: over the scans of ``section`` (None: all), each
    section apart beside them."""
    mine = _of(scans, section)
    return {
        "at_chosen": at_threshold(mine, t),
        "outline_dice": outline_dice(mine, t),
        "blob_outline_dice": outline_dice(mine, t, "blob_outline_dice"),
        "by_size": by_size(mine, t),
        "by_section": by_section(scans, t),
        "froc": froc(mine),
    }


def summarise(result: dict[str, Any], section: str | None) -> None:
    """A run's figures from its scored scans (``result[set]["scans"]``): the threshold of
    the best sensitivity at <= 0.25 false positives per scan on the validation scans (the
    highest that reaches it) — of ``section`` only, where one is given (a package for that
    section: ``--section``) — and every set's figures at it. The same scans give the same
    figures, so an earlier run is summarised again without scoring anything."""
    if section is not None and not any(
        sc.get("section") == section for sc in result["validation"]["scans"]
    ):
        raise SystemExit(f"--section {section}: the run's scans do not record it (re-evaluate)")
    result["section"] = section
    val = result["validation"]["scans"]
    mine = _of(val, section)
    rows = froc(mine)
    point = within_budget(mine, next(r for r in rows if r["fp_target"] == 0.25))
    t = point["threshold"]
    figures = _figures(val, t, section)
    result["validation"].update(
        {
            **{k: v for k, v in figures.items() if k not in ("at_chosen", "froc")},
            "froc": rows,
            "chosen": point,
            "candidates_per_scan": float(np.mean([s["candidates"] for s in mine])),
            "lesions_with_a_candidate_5mm": covered(mine),
        }
    )
    for name in ("shifted", "ordinary"):
        if name in result:
            result[name].update(_figures(result[name]["scans"], t, section))


def _evaluate_all(
    pool: ProcessPoolExecutor,
    weights: Path,
    result: dict[str, Any],
    a: argparse.Namespace,
    save: Any,
) -> None:
    """Validation (the threshold: :func:`summarise`), then, with ``--test``,
    the held-out sets at that threshold; with ``--package``, the package."""
    result["validation"] = {
        "scans": evaluate(pool, weights, [(1202, a.val, False), (1203, a.val, True)])
    }
    summarise(result, a.section)
    v = result["validation"]
    log("validation", json.dumps(v["froc"], indent=0), v["by_size"])
    log("validation by section", v["by_section"])
    log("validation outlines", v["outline_dice"])
    save()
    if a.test:
        _score_held_out(pool, weights, result, a, save, v["chosen"]["threshold"])
        if a.package:
            _package(weights, result, a)


def _held_out(a: argparse.Namespace) -> list[tuple[str, list[tuple[int, int, bool]]]]:
    """The held-out sets, by name: 100 shifted scans and 60 ordinary (``--test-seeds``)."""
    shifted_seed, ordinary_seed = held_out_seeds(vars(a))
    return [("shifted", [(shifted_seed, 100, True)]), ("ordinary", [(ordinary_seed, 60, False)])]


def _score_held_out(
    pool: ProcessPoolExecutor,
    weights: Path,
    result: dict[str, Any],
    a: argparse.Namespace,
    save: Any,
    t: float,
) -> None:
    """Each held-out set scored, its figures at threshold ``t`` added, logged and written
    as it finishes."""
    for name, sets in _held_out(a):
        scans = evaluate(pool, weights, sets)
        result[name] = {"scans": scans, **_figures(scans, t, a.section)}
        log(name, result[name]["at_chosen"], result[name]["by_size"])
        log(name, "by section", result[name]["by_section"])
        log(name, "outlines", result[name]["outline_dice"], result[name]["blob_outline_dice"])
        save()


def _score_at(
    pool: ProcessPoolExecutor,
    weights: Path,
    result: dict[str, Any],
    a: argparse.Namespace,
    save: Any,
) -> None:
    """The held-out sets at the fixed ``--threshold`` (a shipped package's), no validation:
    weights already chosen scored on fresh streams, beside a candidate's figures."""
    result["fixed_threshold"] = a.threshold
    result.pop("validation", None)
    _score_held_out(pool, weights, result, a, save, a.threshold)


def _resume(earlier: dict[str, Any], a: argparse.Namespace, **used: str) -> Callable[[], None]:
    """An earlier run scored again: its candidates (``KEEP``) and views from its arguments,
    ``used`` (what this scoring used, as the package's card names it) recorded among them;
    returns what writes its ``probe.json`` back."""
    KEEP.update(_keep(earlier["args"]))
    VIEWS[:] = run_views(earlier["args"])
    earlier["args"].update(used)
    TURNS[:] = [run_turns(earlier["args"])]

    def resave() -> None:
        (a.out / "probe.json").write_text(json.dumps(earlier, indent=1))

    return resave


def _test_from_run(earlier: dict[str, Any], a: argparse.Namespace) -> None:
    """``--from-run --test``: the held-out sets (``--test-seeds``) scored at the threshold
    the run's own validation scans chose, which are summarised again, not scored again
    (a run that trained and validated, then tested without 16 more minutes of validation);
    then the package, with ``--package``."""
    if "validation" not in earlier:
        raise SystemExit(f"--from-run --test: {a.out / 'probe.json'} holds no validation scans")
    resave = _resume(earlier, a, test_seeds=a.test_seeds)
    summarise(earlier, a.section)
    weights = a.out / "candidate_net.pt"
    t = earlier["validation"]["chosen"]["threshold"]
    with ProcessPoolExecutor(a.workers) as pool:
        _score_held_out(pool, weights, earlier, a, resave, t)
    if a.package:
        _package(weights, earlier, a)


def _package(weights: Path, result: dict[str, Any], a: argparse.Namespace) -> None:
    package_detector(weights, result, a.package, section=a.section)
    log("packaged", a.package)


if __name__ == "__main__":
    main()
