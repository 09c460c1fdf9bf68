"""Anatomy lesion-seg on a GPU lease: train variants side by side, choose one on validation only,
then export it, record its domain and evaluate it on held-out sets it never saw.

    python scripts/seg_sweep.py --out OUT --seconds 220 [--variants A,B,C] [--train 400]

Stages (each writes under OUT as it finishes, so a lease that ends early still returns them):
1. data, made in parallel with ``training.anatomy.indexed_scan`` into ``--work``: training
   scans (seed 1201), validation 32 ordinary (1202) and 32 shifted (1203) scans, and the
   held-out test sets, 100 shifted scans (2201) and 60 ordinary ones (2202), never trained
   or tuned on. (Not written as DICOM: ``ainode train generate`` writes one scan after the
   other, minutes a set; the figures can be checked afterwards on its DICOM sets with
   ``ainode train evaluate``.)
2. determinism: 30 steps twice from the same seed on 4 scans; the weights' digests compared.
3. variants in parallel processes, each ``--seconds`` of training (the step count is set from
   a timed probe and recorded), then its operating point (threshold, lesion volume floor)
   chosen on the validation scans through the worker's own path.
4. the best variant on validation: exported as a package, evaluated on both test sets
   through the worker's path (``training.evaluation.evaluate``), its domain built from
   training and ordinary validation scans and its acceptance of the test sets measured,
   as long as ``--budget`` lasts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS: dict[str, dict[str, Any]] = {
    "A": {"target": [1.5, 1.0, 1.0], "base": 16, "depth": 3, "patch": [32, 96, 96], "batch": 8},
    "B": {"target": [2.0, 1.25, 1.25], "base": 16, "depth": 3, "patch": [32, 96, 96], "batch": 8},
    "C": {"target": [1.5, 1.0, 1.0], "base": 24, "depth": 3, "patch": [32, 96, 96], "batch": 8},
    # B with half the Dice term per lesion-holding patch (training.patch_seg's dice="lesion"):
    # the 2026-12-04 lease's B found 34 of 37 lesions >= 8 mm and none of 12 from 5 to 7 mm.
    "D": {
        "target": [2.0, 1.25, 1.25],
        "base": 16,
        "depth": 3,
        "patch": [32, 96, 96],
        "batch": 8,
        "dice": "lesion",
    },
}
if os.environ.get("SEG_SWEEP_TINY"):  # a smoke run on a CPU: small models and patches
    VARIANTS = {k: {**v, "base": 4, "patch": [16, 32, 32], "batch": 2} for k, v in VARIANTS.items()}
N_VAL = 4 if os.environ.get("SEG_SWEEP_TINY") else 32
WINDOW = [-1000.0, 400.0]
TRAIN_SEED, VAL_SEED, VAL_SHIFT_SEED = 1201, 1202, 1203
#: Held-out test streams: seed -> (scans, shifted). Never trained or tuned on.
TESTS = {2201: (100, True), 2202: (60, False)}
TEST_NAMES = {2201: "test-shifted", 2202: "test-ordinary"}
if os.environ.get("SEG_SWEEP_TINY"):
    TESTS = {2201: (3, True), 2202: (3, False)}
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FLOORS_MM3 = (15.0, 33.0, 50.0, 80.0)


def log(*a: object) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def _make(args: tuple[Path, int, int, bool]) -> int:
    folder, seed, i, shift = args
    from training.anatomy import indexed_scan

    s = indexed_scan(seed, i, shift=shift)
    np.savez(
        folder / f"{seed}-{i:04d}.npz",
        hu=s.hu,
        mask=s.mask,
        spacing=np.array(s.spacing),
        section=s.section,
        diameters=np.array([t.diameter_mm for t in s.lesions]),
    )
    return i


def make_data(shm: Path, n_train: int, tests: bool = True) -> None:
    shm.mkdir(parents=True, exist_ok=True)
    jobs = [(shm, TRAIN_SEED, i, False) for i in range(n_train)]
    jobs += [(shm, VAL_SEED, i, False) for i in range(32)]
    jobs += [(shm, VAL_SHIFT_SEED, i, True) for i in range(32)]
    for seed, (n, shift) in TESTS.items() if tests else ():
        jobs += [(shm, seed, i, shift) for i in range(n)]
    jobs = [j for j in jobs if not (shm / f"{j[1]}-{j[2]:04d}.npz").exists()]
    with ProcessPoolExecutor(14) as ex:
        list(ex.map(_make, jobs, chunksize=4))


def load(shm: Path, seed: int, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        z = np.load(shm / f"{seed}-{i:04d}.npz")
        out.append({k: z[k] for k in z.files})
    return out


def volume_of(scan: dict[str, Any], tag: str) -> Any:
    from dicomio.records import axial_volume

    sz, sy, sx = (float(v) for v in scan["spacing"])
    return axial_volume(scan["hu"], (sz, sy, sx), f"2.25.{tag}", modality="CT")


def recipe_for(v: dict[str, Any], threshold: float = 0.5, floor: float = 33.0) -> Any:
    from training.recipes import RECIPES

    base = RECIPES["lesion-seg"]
    return dataclasses.replace(
        base,
        kind="anatomy",
        parameters={"base": v["base"], "depth": v["depth"], "attention": True},
        input_spec={
            "modality": ["CT"],
            "window": WINDOW,
            "target_spacing": v["target"],
            "patch": v["patch"],
        },
        labels=[{**base.labels[0], "threshold": threshold, "min_volume_mm3": floor}],
    )


def deterministic() -> None:
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def grid_all(scans: list[dict[str, Any]], v: dict[str, Any], device: Any) -> list[Any]:
    from training.patch_seg import grid_scan

    return [
        grid_scan(
            s["hu"],
            s["mask"],
            s["spacing"],
            window=WINDOW,
            target=v["target"],
            patch=v["patch"],
            device=device,
            seed=TRAIN_SEED + i,
        )
        for i, s in enumerate(scans)
    ]


def operating_points(
    model: Any, scans: list[dict[str, Any]], tag: str
) -> tuple[list[dict[str, float]], list[tuple[float, float]]]:
    """Sensitivity (>= 5 mm), false positives per scan, clean lesion-free share and Dice on
    ``scans`` for every threshold and floor: ``segment``'s probabilities, then the
    components ``label_lesions`` keeps (26-connected, at least the floor in mm3). Also each
    true lesion's diameter (mm) and highest probability, to see which sizes are missed."""
    from scipy import ndimage

    from inference.execute import segment
    from training.metrics import labelled_lesions

    cube = np.ones((3, 3, 3), bool)
    rows: dict[tuple[float, float], list[tuple[int, int, int, bool, float]]] = {}
    lesions: list[tuple[float, float]] = []
    for k, s in enumerate(scans):
        vol = volume_of(s, f"{tag}{k}")
        prob = segment(model, vol, batch_size=8, amp=True)[0]
        mask = s["mask"]
        truth, diam = labelled_lesions(mask, voxel_mm3=vol.voxel_volume_mm3)
        big = {i + 1 for i, d in enumerate(diam) if d >= 5}
        peaks = ndimage.maximum(prob, truth, index=np.arange(1, len(diam) + 1))
        lesions += [
            (round(float(d), 2), round(float(q), 3)) for d, q in zip(diam, peaks, strict=True)
        ]
        for t in THRESHOLDS:
            lab, n = ndimage.label(prob >= t, structure=cube)
            sizes = np.bincount(lab.ravel(), minlength=n + 1) * vol.voxel_volume_mm3
            both = (lab > 0) & (truth > 0)
            pairs = (
                np.unique(np.stack([lab[both], truth[both]]), axis=1)
                if both.any()
                else np.zeros((2, 0), int)
            )
            overlap = np.bincount(lab[mask], minlength=n + 1)
            for floor in FLOORS_MM3:
                kept = sizes >= floor
                kept[0] = False
                touched = {int(q) for q, _ in pairs.T if kept[q]}
                found = {int(tl) for q, tl in pairs.T if kept[q]}
                fp = int(kept.sum()) - len(touched)
                pred_n = float(sizes[kept].sum() / vol.voxel_volume_mm3)
                inter = float(overlap[kept].sum())
                d = 2 * inter / (pred_n + mask.sum()) if pred_n + mask.sum() else -1.0
                rows.setdefault((t, floor), []).append(
                    (len(big), len(big & found), fp, bool(mask.any()), d)
                )
    table = []
    for (t, floor), per in rows.items():
        free = [r for r in per if not r[3]]
        dices = [r[4] for r in per if r[4] >= 0]
        table.append(
            {
                "threshold": t,
                "floor_mm3": floor,
                "sensitivity_5mm": sum(r[1] for r in per) / max(1, sum(r[0] for r in per)),
                "fp_per_scan": sum(r[2] for r in per) / len(per),
                "clean": sum(1 for r in free if r[2] == 0) / max(1, len(free)),
                "dice": float(np.mean(dices)) if dices else 0.0,
            }
        )
    return table, lesions


def choose(table: list[dict[str, float]]) -> dict[str, float]:
    """Most sensitive point within the targets' false-positive terms (with a margin);
    if none, the one with the best sensitivity minus false positives."""
    ok = [r for r in table if r["fp_per_scan"] <= 0.2 and r["clean"] >= 0.92]
    if ok:
        return max(ok, key=lambda r: (r["sensitivity_5mm"], r["dice"]))
    return max(table, key=lambda r: r["sensitivity_5mm"] - r["fp_per_scan"])


def run_variant(name: str, out: Path, shm: Path, seconds: float, n_train: int) -> None:
    import torch

    from inference.architectures import build
    from training.patch_seg import PatchSchedule, train_patches
    from training.recipes import as_worker_model

    deterministic()
    torch.set_num_threads(int(os.environ.get("SEG_SWEEP_THREADS", "4")))
    v = VARIANTS[name]
    folder = out / "variants" / name
    folder.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    scans = grid_all(load(shm, TRAIN_SEED, n_train), v, device)
    log(name, f"{len(scans)} scans gridded in {time.perf_counter() - t0:.0f} s")
    # Timed probe: 12 steps after 4 to warm up, on a throwaway model.
    probe = PatchSchedule(steps=16, batch=v["batch"], lr=2e-3, mine_from=10**9)
    torch.manual_seed(0)
    m = build("unet3d", {"base": v["base"], "depth": v["depth"], "attention": True})
    t0 = time.perf_counter()
    train_patches(
        m, scans, dataclasses.replace(probe, steps=4), v["patch"], seed=0, log=lambda s: None
    )
    torch.cuda.synchronize() if device.type == "cuda" else None
    t1 = time.perf_counter()
    train_patches(
        m, scans, dataclasses.replace(probe, steps=12), v["patch"], seed=0, log=lambda s: None
    )
    torch.cuda.synchronize() if device.type == "cuda" else None
    per_step = (time.perf_counter() - t1) / 12
    steps = max(50, int(seconds * 0.7 / per_step) // 50 * 50)
    log(name, f"{per_step * 1000:.1f} ms per step -> {steps} steps")
    schedule = PatchSchedule(
        steps=steps,
        batch=v["batch"],
        lr=2e-3,
        mine_from=steps // 4,
        mine_every=max(100, steps // 10),
        mine_scans=24,
        warmup=min(200, steps // 10),
        dice=v.get("dice", "batch"),
    )
    torch.manual_seed(TRAIN_SEED)
    module = build("unet3d", {"base": v["base"], "depth": v["depth"], "attention": True})
    t0 = time.perf_counter()
    train_patches(
        module,
        scans,
        schedule,
        v["patch"],
        seed=TRAIN_SEED,
        log=lambda s: log(name, s),
        deadline=time.time() + seconds * 1.1,
    )
    train_s = time.perf_counter() - t0
    torch.save(module.state_dict(), folder / "weights.pt")
    del scans
    model = as_worker_model(recipe_for(v), module)
    val = load(shm, VAL_SEED, N_VAL) + load(shm, VAL_SHIFT_SEED, N_VAL)
    t0 = time.perf_counter()
    table, lesions = operating_points(model, val, "val")
    best = choose(table)
    result = {
        "variant": name,
        **v,
        "schedule": dataclasses.asdict(schedule),
        "ms_per_step": per_step * 1000,
        "train_s": train_s,
        "val_s": time.perf_counter() - t0,
        "chosen": best,
        "table": table,
        "lesions": lesions,  # (diameter mm, highest probability) per validation lesion
    }
    (folder / "val.json").write_text(json.dumps(result, indent=1))
    log(name, "chosen on validation:", json.dumps(best))


def determinism(shm: Path, out: Path) -> None:
    import torch

    from inference.architectures import build
    from training.patch_seg import PatchSchedule, train_patches

    deterministic()
    v = VARIANTS["A"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scans = grid_all(load(shm, TRAIN_SEED, 4), v, device)
    digests = []
    for _ in range(2):
        torch.manual_seed(7)
        m = build("unet3d", {"base": 8, "depth": 3, "attention": True})
        s = PatchSchedule(
            steps=30, batch=4, lr=2e-3, mine_from=20, mine_every=100, mine_scans=2, warmup=5
        )
        train_patches(m, scans, s, v["patch"], seed=7, log=lambda s: None)
        buf = io.BytesIO()
        torch.save({k: t.cpu() for k, t in m.state_dict().items()}, buf)
        digests.append(hashlib.sha256(buf.getvalue()).hexdigest())
    same = digests[0] == digests[1]
    (out / "determinism.json").write_text(json.dumps({"digests": digests, "same": same}))
    log("determinism: two 30-step runs", "identical" if same else "DIFFER", digests)


def best_variant(out: Path, names: list[str]) -> tuple[dict[str, Any], Any] | None:
    """The variant best on validation (its val.json) and its recipe at the chosen point."""
    results = []
    for name in names:
        f = out / "variants" / name / "val.json"
        if f.exists():
            results.append(json.loads(f.read_text()))
    if not results:
        return None

    def score(r: dict[str, Any]) -> tuple[bool, float]:
        c = r["chosen"]
        return (
            c["fp_per_scan"] <= 0.2 and c["clean"] >= 0.92,
            c["sensitivity_5mm"] - c["fp_per_scan"],
        )

    best = max(results, key=score)
    v = VARIANTS[best["variant"]]
    return best, recipe_for(v, best["chosen"]["threshold"], best["chosen"]["floor_mm3"])


def _module(out: Path, best: dict[str, Any], recipe: Any) -> Any:
    import torch

    from inference.architectures import build

    module = build("unet3d", recipe.parameters)
    module.load_state_dict(torch.load(out / "variants" / best["variant"] / "weights.pt"))
    return module


def _cases(shm: Path, seed: int) -> list[Any]:
    from training.data import CtCase

    n, _shift = TESTS[seed]
    return [
        CtCase(
            patient_id=f"{seed}-{i}",
            label=0,
            volume=volume_of(scan, f"{seed}.{i}"),
            mask=scan["mask"],
        )
        for i, scan in enumerate(load(shm, seed, n))
    ]


def evaluate_part(out: Path, shm: Path, names: list[str], seed: int) -> None:
    """One held-out set through the worker's path (``training.evaluation.evaluate``), written
    to ``OUT/<set>.json``; the sets run in parallel processes."""
    import torch

    from training.evaluation import evaluate
    from training.recipes import as_worker_model

    chosen = best_variant(out, names)
    assert chosen is not None
    best, recipe = chosen
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = _module(out, best, recipe).to(device).eval()
    rep = evaluate(recipe, as_worker_model(recipe, module), _cases(shm, seed))
    rep.pop("dice_all", None)
    rep[f"ms_per_case_{device.type}"] = rep.pop("ms_per_case_cpu")  # timed where it ran
    (out / f"{TEST_NAMES[seed]}.json").write_text(json.dumps(rep, indent=1, default=str))
    log(TEST_NAMES[seed], json.dumps({k: rep[k] for k in rep if not isinstance(rep[k], list)}))


def final(out: Path, shm: Path, names: list[str], n_train: int, deadline: float) -> None:
    import torch

    from inference.package import load_package
    from training.domain import acceptance, build_domain, write_domain
    from training.recipes import export

    chosen = best_variant(out, names)
    if chosen is None:
        log("no variant finished")
        return
    best, recipe = chosen
    log("best on validation:", best["variant"], json.dumps(best["chosen"]))
    package = out / "lesion-seg"
    export(
        recipe,
        _module(out, best, recipe),
        package,
        metrics={},
        training_data="anatomy",
        card="# lesion-seg\n",
    )
    reports: dict[str, Any] = {"variant": best["variant"], "recipe": dataclasses.asdict(recipe)}

    def save() -> None:
        (out / "reports.json").write_text(json.dumps(reports, indent=1, default=str))

    save()
    if time.time() > deadline:
        log("out of time before the test sets")
        return
    base = [sys.executable, __file__, "--out", str(out), "--work", str(shm)]
    base += ["--variants", ",".join(names), "--stage", "test", "--part"]
    for proc in [subprocess.Popen([*base, str(seed)]) for seed in TESTS]:
        proc.wait()
    for seed in TESTS:
        f = out / f"{TEST_NAMES[seed]}.json"
        if f.exists():
            reports[TEST_NAMES[seed]] = json.loads(f.read_text())
    save()
    if time.time() > deadline:
        log("out of time before the domain")
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_package(package, device)
    train_volumes = [
        volume_of(s, f"tr{i}") for i, s in enumerate(load(shm, TRAIN_SEED, min(n_train, 64)))
    ]
    val_volumes = [volume_of(s, f"va{i}") for i, s in enumerate(load(shm, VAL_SEED, N_VAL))]
    domain = build_domain(
        loaded,
        [*train_volumes, *val_volumes],
        body_parts=("CHEST", "ABDOMEN"),
        built_from=f"anatomy training scans (seed {TRAIN_SEED}, first {len(train_volumes)}) "
        f"and validation (seed {VAL_SEED})",
    )
    write_domain(package, domain)
    log("domain written")
    for seed in TESTS:
        part = TEST_NAMES[seed]
        if time.time() > deadline:
            continue
        vols = [c.volume for c in _cases(shm, seed)]
        accepted, total, reasons = acceptance(loaded, domain, vols)
        reports[f"{part}-domain"] = {"accepted": accepted, "total": total, "reasons": dict(reasons)}
        save()
        log(part, "domain accepts", accepted, "of", total, dict(reasons))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/segsweep-data"))
    p.add_argument("--seconds", type=float, default=220)
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--variants", default="A,B,C")
    p.add_argument("--variant")  # internal: run one variant
    p.add_argument("--stage", default="all", choices=["all", "final", "test"])
    p.add_argument("--part", type=int, help="internal: the test set's seed (--stage test)")
    p.add_argument("--budget", type=float, default=540, help="seconds for everything")
    p.add_argument(
        "--compare",
        action="store_true",
        help="variants on validation only: no test sets, determinism check or export",
    )
    a = p.parse_args()
    start = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.variant:
        run_variant(a.variant, a.out, a.work, a.seconds, a.train)
        return
    if a.stage == "test":
        evaluate_part(a.out, a.work, a.variants.split(","), a.part)
        return
    if a.stage == "final":
        final(a.out, a.work, a.variants.split(","), a.train, start + a.budget)
        return
    py = sys.executable
    t0 = time.perf_counter()
    make_data(a.work, a.train, tests=not a.compare)
    log(f"data made in {time.perf_counter() - t0:.0f} s")
    if not a.compare:
        determinism(a.work, a.out)
    procs = [
        subprocess.Popen(
            [
                py,
                __file__,
                "--out",
                str(a.out),
                "--work",
                str(a.work),
                "--seconds",
                str(a.seconds),
                "--train",
                str(a.train),
                "--variant",
                n,
            ]
        )
        for n in a.variants.split(",")
    ]
    for proc in procs:
        proc.wait()
    if a.compare:
        return
    final(a.out, a.work, a.variants.split(","), a.train, start + a.budget)


if __name__ == "__main__":
    main()
