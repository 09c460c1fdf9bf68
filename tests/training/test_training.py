"""Training end to end on tiny synthetic data: loss falls, export loads, same predictions."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.architectures import build
from inference.execute import classify, predict_change, predict_sequence, segment
from inference.package import load_package
from tests.dicomcheck import validate
from training.data import load_ct_cases, load_ecg_cases, load_history_cases
from training.recipes import RECIPES, as_worker_model, export, train_recipe
from training.synthetic import (
    CHANGE_LABELS,
    CT_LABELS,
    ECG_LABELS,
    generate_ct,
    generate_ecg,
    generate_longitudinal,
)
from training.trainer import TrainConfig, fit

SEG = RECIPES["lesion-seg"]
TINY_SEG = replace(
    SEG,
    parameters={"base": 4, "depth": 2, "attention": True},
    train=TrainConfig(epochs=4, batch_size=2, lr=5e-3, patience=10),
)
ECG = RECIPES["ecg-rhythm"]
TINY_ECG = replace(
    ECG,
    parameters={**ECG.parameters, "hidden": 8},
    train=TrainConfig(epochs=3, batch_size=8, lr=5e-3, patience=10),
)


@pytest.fixture(scope="module")
def ct_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ct")
    generate_ct(folder, 6, seed=11)
    return folder


def test_synthetic_data_is_reproducible(tmp_path: Path) -> None:
    def digest(folder: Path) -> str:
        h = hashlib.sha256()
        for path in sorted(folder.rglob("*.dcm")):
            h.update(path.read_bytes())
        return h.hexdigest()

    generate_ecg(tmp_path / "a", 3, seed=5)
    generate_ecg(tmp_path / "b", 3, seed=5)
    generate_ecg(tmp_path / "c", 3, seed=6)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_segmentation_loss_falls_export_loads_same_predictions(
    ct_data: Path, tmp_path: Path
) -> None:
    cases, report = load_ct_cases(ct_data, ct_data / "labels.csv", CT_LABELS, masks=True)
    assert report.used == 6 and report.skipped == []
    module, _ = train_recipe(
        TINY_SEG, cases[:4], cases[4:], seed=0, progress=False, checkpoint=tmp_path / "ckpt.pt"
    )
    history = torch.load(tmp_path / "ckpt.pt", weights_only=False)["history"]
    assert history[-1]["loss"] < history[0]["loss"]

    package = export(
        TINY_SEG,
        module,
        tmp_path / "pkg",
        metrics={"dice": 0.0},
        training_data="test",
        card="# test\n",
    )
    loaded = load_package(package, torch.device("cpu"))  # the worker's own loader
    volume = cases[5].volume
    ours = segment(as_worker_model(TINY_SEG, module), volume, batch_size=2, amp=False)
    theirs = segment(loaded, volume, batch_size=2, amp=False)
    assert np.array_equal(ours, theirs)
    assert (package / "MODEL_CARD.md").read_text() == "# test\n"


def test_segmentation_training_is_reproducible_bit_for_bit(ct_data: Path) -> None:
    """Same seed, same data: the same weights, byte for byte (what rebuild-models promises)."""
    cases, _ = load_ct_cases(ct_data, ct_data / "labels.csv", CT_LABELS, masks=True)
    recipe = replace(TINY_SEG, train=replace(TINY_SEG.train, epochs=1))

    def weights(seed: int) -> bytes:
        module, _ = train_recipe(recipe, cases[:3], cases[3:4], seed=seed, progress=False)
        return b"".join(v.numpy().tobytes() for v in module.state_dict().values())

    first = weights(0)
    assert weights(0) == first != weights(1)


@pytest.mark.parametrize("architecture", ["cnn_classifier", "attention_cnn"])
def test_ct_classifier_trains_and_runs_through_the_worker_loader(
    ct_data: Path, tmp_path: Path, architecture: str
) -> None:
    """Both CNN families of the classification recipe: plain (diagnosis) and attention."""
    recipe = replace(
        RECIPES["lesion-class"],
        architecture=architecture,
        parameters={"num_classes": 3, "base": 4, "depth": 2},
        input_spec={**RECIPES["lesion-class"].input_spec, "size": [16, 32, 32]},
        train=TrainConfig(epochs=3, batch_size=3, lr=5e-3, patience=10),
    )
    cases, _ = load_ct_cases(ct_data, ct_data / "labels.csv", CT_LABELS, masks=False)
    module, _ = train_recipe(
        recipe, cases, cases[4:], seed=0, progress=False, checkpoint=tmp_path / "ckpt.pt"
    )
    history = torch.load(tmp_path / "ckpt.pt", weights_only=False)["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    package = export(
        recipe, module, tmp_path / "pkg", metrics={}, training_data="test", card="# test\n"
    )
    loaded = load_package(package, torch.device("cpu"))
    for case in cases[4:]:
        probs, attention = classify(loaded, case.volume, amp=False)
        ours, _ = classify(as_worker_model(recipe, module), case.volume, amp=False)
        assert np.allclose(probs, ours) and abs(float(probs.sum()) - 1) < 1e-5
        assert (attention is None) == (architecture == "cnn_classifier")


@pytest.mark.parametrize("method", ["temperature", "vector"])
def test_calibration_is_folded_into_the_last_layer(ct_data: Path, method: str) -> None:
    from torch.nn import functional as F

    from training.recipes import _logits, calibrate

    recipe = replace(
        RECIPES["lesion-class"],
        architecture="cnn_classifier",
        parameters={"num_classes": 3, "base": 4, "depth": 2},
        input_spec={**RECIPES["lesion-class"].input_spec, "size": [16, 32, 32]},
        calibration=method,
    )
    cases, _ = load_ct_cases(ct_data, ct_data / "labels.csv", CT_LABELS, masks=False)
    torch.manual_seed(3)
    module = build("cnn_classifier", recipe.parameters)
    before = torch.stack([_logits(recipe, module, c) for c in cases])
    labels = torch.tensor([c.label for c in cases])
    fitted = calibrate(recipe, module, cases)
    after = torch.stack([_logits(recipe, module, c) for c in cases])
    scale, shift = torch.tensor(fitted.scale), torch.tensor(fitted.shift)
    assert torch.allclose(after, before * scale + shift, atol=1e-4)
    assert F.cross_entropy(after, labels) <= F.cross_entropy(before, labels) + 1e-6
    if method == "temperature":  # one parameter: the predicted class never changes
        assert len(set(fitted.scale)) == 1 and not any(fitted.shift)
        assert torch.equal(after.argmax(1), before.argmax(1))


def test_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    items = [(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8))] * 4
    model = torch.nn.Conv3d(1, 1, 1)

    def loss_fn(m, batch, dev):
        x = torch.stack([b[0] for b in batch])
        return ((m(x) - torch.stack([b[1] for b in batch])) ** 2).mean()

    ckpt = tmp_path / "resume.pt"
    first = fit(
        model,
        items,
        loss_fn=loss_fn,
        validate=lambda m: 0.0,
        cfg=TrainConfig(epochs=2, batch_size=2, checkpoint=ckpt, progress=False),
    )
    assert first.epochs_run == 2
    resumed = fit(
        torch.nn.Conv3d(1, 1, 1),
        items,
        loss_fn=loss_fn,
        validate=lambda m: 0.0,
        cfg=TrainConfig(epochs=3, batch_size=2, checkpoint=ckpt, progress=False),
    )
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]


def test_missing_data_is_reported_with_the_policy(ct_data: Path, tmp_path: Path) -> None:
    with open(ct_data / "labels.csv") as f:
        labels = list(csv.DictReader(f))
    broken = tmp_path / "labels.csv"
    (tmp_path / "masks").symlink_to(ct_data / "masks")
    with open(broken, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(labels[0]))
        writer.writeheader()
        writer.writerows(labels[:4])  # the last two series have no label
        writer.writerow({**labels[0], "series_uid": "2.25.1", "label": "normal"})
    cases, report = load_ct_cases(ct_data, broken, CT_LABELS, masks=True)
    reasons = dict(report.skipped)
    assert report.used == 4 and len(cases) == 4
    assert reasons["2.25.1"] == "series not found in the folder"
    assert sum(1 for why in reasons.values() if why == "no label in the CSV") == 2
    with pytest.raises(ValueError, match="on_missing = 'error'"):
        load_ct_cases(ct_data, broken, CT_LABELS, masks=True, on_missing="error")


def test_dicom_seg_ground_truth_equals_the_arrays(ct_data: Path, tmp_path: Path) -> None:
    """A hospital's ground truth as DICOM SEG: placed by source image, same mask as the array."""
    import shutil

    import pydicom

    from dicomio.volume_in import load_volume, series_files
    from tests.dicomgen import manual_seg

    data = tmp_path / "data"
    shutil.copytree(ct_data, data)
    files = series_files(data / "studies").series
    with_seg = []
    for uid, paths in files.items():
        mask = np.load(data / "masks" / f"{uid}.npy")
        if not mask.any():
            continue  # lesion-free scans keep their array: both kinds in one set
        volume = load_volume(paths)
        by_uid = {str(d.SOPInstanceUID): d for d in map(pydicom.dcmread, paths)}
        seg = manual_seg([by_uid[u] for u in volume.sop_instance_uids], mask)
        seg.save_as(data / f"seg-{len(with_seg)}.dcm")
        (data / "masks" / f"{uid}.npy").unlink()
        with_seg.append(uid)
    assert len(with_seg) >= 2
    cases, report = load_ct_cases(data, data / "labels.csv", CT_LABELS, masks=True)
    assert report.skipped == [] and len(cases) == len(files)  # SEG series are not cases
    for case in cases:
        truth = np.load(ct_data / "masks" / f"{case.volume.series_instance_uid}.npy")
        assert case.mask is not None and np.array_equal(case.mask, truth)
    # A frame drawn on an image that is not in the series cannot be placed: a named error.
    from dicomio.errors import InconsistentSeries
    from dicomio.seg_in import load_seg_mask

    broken = pydicom.dcmread(data / "seg-0.dcm")
    source = broken.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    source.SourceImageSequence[0].ReferencedSOPInstanceUID = "2.25.1"
    broken.save_as(tmp_path / "broken.dcm")
    with pytest.raises(InconsistentSeries, match=r"frame 1 was drawn on 2\.25\.1, which is not in"):
        load_seg_mask(tmp_path / "broken.dcm", load_volume(files[with_seg[0]]))
    # Without its SEG a series has no ground truth, and says so.
    (data / "seg-0.dcm").unlink()
    _, report = load_ct_cases(data, data / "labels.csv", CT_LABELS, masks=True)
    assert dict(report.skipped)[with_seg[0]].startswith("no ground-truth mask")


def test_ecg_missing_leads_policy(tmp_path: Path) -> None:
    generate_ecg(tmp_path, 3, seed=2)
    leads = (*ECG.input_spec["leads"], "Lead X")  # a lead no recording has
    skipped, report = load_ecg_cases(tmp_path, tmp_path / "labels.csv", ECG_LABELS, leads)
    assert skipped == [] and all("missing lead(s) Lead X" in why for _, why in report.skipped)
    masked, _ = load_ecg_cases(
        tmp_path, tmp_path / "labels.csv", ECG_LABELS, leads, missing_leads="zero"
    )
    assert len(masked) == 3 and masked[0].waveform.data.shape[0] == 13
    assert not masked[0].waveform.data[-1].any()


def test_ecg_model_trains_and_runs_through_the_worker_loader(tmp_path: Path) -> None:
    generate_ecg(tmp_path / "train", 12, seed=21)
    generate_ecg(tmp_path / "val", 6, seed=22)
    leads = tuple(ECG.input_spec["leads"])
    train, _ = load_ecg_cases(
        tmp_path / "train", tmp_path / "train" / "labels.csv", ECG_LABELS, leads
    )
    val, _ = load_ecg_cases(tmp_path / "val", tmp_path / "val" / "labels.csv", ECG_LABELS, leads)
    module, score = train_recipe(TINY_ECG, train, val, seed=0, progress=False)
    assert 0.0 <= score <= 1.0
    package = export(
        TINY_ECG,
        module,
        tmp_path / "pkg",
        metrics={"macro_f1": score},
        training_data="test",
        card="# test\n",
    )
    loaded = load_package(package, torch.device("cpu"))
    for case in val:
        assert np.allclose(
            predict_sequence(loaded, case.waveform, amp=False),
            predict_sequence(as_worker_model(TINY_ECG, module), case.waveform, amp=False),
        )


CHANGE = RECIPES["lesion-change"]
TINY_CHANGE = replace(
    CHANGE,
    parameters={**CHANGE.parameters, "levels": 4, "hidden": 8},
    train=TrainConfig(epochs=4, batch_size=4, lr=5e-3, patience=10),
)


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_history_cases_follow_each_patients_studies_by_date(tmp_path: Path) -> None:
    labels = generate_longitudinal(tmp_path, 4, seed=31)
    rows = _csv(labels)
    cases, report = load_history_cases(tmp_path, labels, CHANGE_LABELS, max_priors=2)
    assert report.skipped == []
    # Every follow-up is a case; a patient's first study is only a prior.
    assert len(cases) == sum(1 for r in rows if r["label"]) == report.used
    assert sum(1 for r in rows if not r["label"]) == 4
    by_series = {r["series_uid"]: r for r in rows}
    for case in cases:
        assert 2 <= len(case.volumes) <= 3
        assert case.days_before[-1] == 0
        assert list(case.days_before) == sorted(case.days_before, reverse=True)
        assert all(d >= 60 for d in case.days_before[:-1])  # 2-8 months apart
        studied = [by_series[v.series_instance_uid] for v in case.volumes]
        assert {r["patient_id"] for r in studied} == {case.patient_id}
        assert CHANGE_LABELS[case.label] == studied[-1]["label"]
    # With one prior allowed, each case holds the labelled study and the one before it.
    one, _ = load_history_cases(tmp_path, labels, CHANGE_LABELS, max_priors=1)
    assert {len(c.volumes) for c in one} == {2}


def test_history_gaps_are_reported(tmp_path: Path) -> None:
    labels = generate_longitudinal(tmp_path, 1, seed=32)
    rows = _csv(labels)
    broken = tmp_path / "broken.csv"
    with open(broken, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        # The first study is missing from the CSV: the second has nothing to compare with.
        writer.writerows(rows[1:])
        writer.writerow({**rows[0], "series_uid": "2.25.7", "label": "increase"})
    cases, report = load_history_cases(tmp_path, broken, CHANGE_LABELS, max_priors=2)
    reasons = dict(report.skipped)
    assert reasons[rows[1]["series_uid"]] == "no earlier study to compare with"
    assert reasons["2.25.7"] == "series not found in the folder"
    assert len(cases) == len(rows) - 2
    with pytest.raises(ValueError, match="on_missing = 'error'"):
        load_history_cases(tmp_path, broken, CHANGE_LABELS, max_priors=2, on_missing="error")


def test_progression_model_trains_and_runs_through_the_worker_loader(tmp_path: Path) -> None:
    generate_longitudinal(tmp_path / "train", 6, seed=33)
    generate_longitudinal(tmp_path / "val", 2, seed=34, shift=True)
    train, _ = load_history_cases(
        tmp_path / "train", tmp_path / "train" / "labels.csv", CHANGE_LABELS, max_priors=2
    )
    val, _ = load_history_cases(
        tmp_path / "val", tmp_path / "val" / "labels.csv", CHANGE_LABELS, max_priors=2
    )
    module, _ = train_recipe(
        TINY_CHANGE, train, val, seed=0, progress=False, checkpoint=tmp_path / "ckpt.pt"
    )
    history = torch.load(tmp_path / "ckpt.pt", weights_only=False)["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    package = export(
        TINY_CHANGE,
        module,
        tmp_path / "pkg",
        metrics={"macro_f1": 0.0},
        training_data="test",
        card="# test\n",
    )
    loaded = load_package(package, torch.device("cpu"))
    assert loaded.spec.task == "progression" and loaded.spec.input.max_priors == 2
    for case in val:
        theirs = predict_change(loaded, case.volumes, case.days_before, amp=False)
        ours = predict_change(
            as_worker_model(TINY_CHANGE, module), case.volumes, case.days_before, amp=False
        )
        assert np.allclose(theirs, ours) and abs(float(theirs.sum()) - 1) < 1e-5


@pytest.mark.tools("dciodvfy", "dcentvfy")
def test_synthetic_dicom_passes_dciodvfy_and_dcentvfy(tmp_path: Path) -> None:
    generate_ct(tmp_path / "ct", 1, seed=3, shift=True)
    generate_ecg(tmp_path / "ecg", 2, seed=3)
    generate_longitudinal(tmp_path / "long", 1, seed=3)
    for folder, entity in (
        (tmp_path / "ct" / "studies", True),
        (tmp_path / "ecg" / "ecg", False),
        (tmp_path / "long" / "studies", True),
    ):
        result = validate(folder, entity=entity)
        assert result.ok, result.report()
        assert len(result.files) > 0


def test_data_report_names_unreadable_files(tmp_path: Path) -> None:
    """A corrupt DICOM file in a training folder is reported by path, not silently dropped."""
    from training.data import load_ct_cases

    labels = generate_ct(tmp_path, 2, 9001)
    first = next((tmp_path / "studies").rglob("*.dcm"))
    corrupt = first.with_name("corrupt.dcm")
    corrupt.write_bytes(first.read_bytes()[:300])
    _cases, report = load_ct_cases(tmp_path / "studies", labels, CT_LABELS, masks=False)
    assert [what for what, _why in report.skipped] == [str(corrupt)]
    assert "without Series Instance UID" in report.skipped[0][1]


def test_a_split_column_selects_cases_and_train_needs_one_without_val(
    ct_data: Path, tmp_path: Path
) -> None:
    from training.__main__ import main

    with open(ct_data / "labels.csv") as f:
        labels = list(csv.DictReader(f))
    split = tmp_path / "labels.csv"
    with open(split, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*labels[0], "split"])
        writer.writeheader()
        for i, row in enumerate(labels):
            writer.writerow({**row, "split": ("train", "train", "val", "test")[i % 4]})
    train, report = load_ct_cases(ct_data, split, CT_LABELS, masks=False, split="train")
    assert len(train) == 4 and report.skipped == []  # other splits' series are not "unlabelled"
    test, _ = load_ct_cases(ct_data, split, CT_LABELS, masks=False, split="test")
    assert [c.patient_id for c in test] == [labels[3]["patient_id"]]
    with pytest.raises(ValueError, match=r"needs the columns .*split"):
        load_ct_cases(ct_data, ct_data / "labels.csv", CT_LABELS, masks=False, split="train")
    # ``train`` without --val on a folder without a split column: a clear error, exit 2.
    out = tmp_path / "pkg"
    assert main(["train", "lesion-class", "--data", str(ct_data), "--out", str(out)]) == 2
    assert not out.exists()


def test_domain_from_one_split_checked_on_another(ct_data: Path, tmp_path: Path) -> None:
    import shutil

    from training.__main__ import main

    package = tmp_path / "lesion-class"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "lesion-class", package)
    with open(ct_data / "labels.csv") as f:
        labels = list(csv.DictReader(f))
    folder = tmp_path / "export"
    shutil.copytree(ct_data, folder)
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*labels[0], "split"])
        writer.writeheader()
        for i, row in enumerate(labels):
            writer.writerow({**row, "split": "test" if i == 5 else "train"})
    args = ["domain", str(package), "--data", str(folder), "--check", str(folder)]
    assert main([*args, "--split", "train", "--check-split", "test"]) == 0
    card = (package / "MODEL_CARD.md").read_text()
    assert "from export (train); 5 scans" in card and "Held-out export set: " in card
    assert "of 1 accepted" in card
    domain = (package / "domain.json").read_text()
    assert "lung_fraction" not in domain  # recorded when asked for only
    # A split asked of a folder without a split column is a clear error, and changes nothing.
    assert main([*args[:4], "--check", str(ct_data), "--check-split", "test"]) == 2
    assert (package / "domain.json").read_text() == domain
    assert main([*args, "--split", "train", "--check-split", "test", "--lung-share"]) == 0
    recorded = json.loads((package / "domain.json").read_text())["intensity"]
    low, high = recorded["lung_fraction"]
    assert 0 <= low < high == 1  # from its low end up


def test_evaluate_reports_what_the_worker_would_analyse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Beside the metrics (over every case), the report says how many cases the package's
    validated domain accepts and why it declines the rest: anatomy-like CT is declined
    by the shipped lesion-seg, its own kind of phantom accepted."""
    import json

    from training.__main__ import main
    from training.anatomy import generate_anatomical_ct

    root = Path(__file__).resolve().parents[2]
    generate_anatomical_ct(tmp_path / "anatomy", 2, seed=2201, shift=True)
    generate_ct(tmp_path / "ct", 2, seed=2002)
    for data in ("anatomy", "ct"):
        args = ["evaluate", str(root / "models" / "lesion-seg"), "--data", str(tmp_path / data)]
        assert main([*args, "--report", str(tmp_path / f"report-{data}")]) == 0
    anatomy = json.loads((tmp_path / "report-anatomy" / "report.json").read_text())
    ct = json.loads((tmp_path / "report-ct" / "report.json").read_text())
    assert (anatomy["domain_accepted"], anatomy["domain_checked"]) == (0, 2)
    assert sum(anatomy["domain_declined"].values()) == 2
    assert (ct["domain_accepted"], ct["domain_checked"], ct["domain_declined"]) == (2, 2, {})
    assert "domain_declined" in (tmp_path / "report-anatomy" / "report.md").read_text()
    printed = capsys.readouterr().out
    assert '"domain_accepted": 0' in printed and '"domain_accepted": 2' in printed
    # The package is judged with its own model.toml (the shipped lesion-seg's lesion
    # volume floor), as the worker runs it, not with its recipe's settings.
    from inference.trial import load_and_try
    from training.evaluation import evaluate
    from training.folders import load_cases

    loaded = load_and_try(root / "models" / "lesion-seg", torch.device("cpu"))
    recipe = RECIPES["lesion-seg"]
    cases = load_cases(recipe, tmp_path / "anatomy")
    as_package = evaluate(recipe, loaded, cases)["false_positives_per_scan"]
    as_recipe = evaluate(recipe, as_worker_model(recipe, loaded.module), cases)
    assert anatomy["false_positives_per_scan"] == as_package
    assert as_package < as_recipe["false_positives_per_scan"]


def test_evaluate_reads_the_detector_package_as_the_worker_runs_it(tmp_path: Path) -> None:
    """``lesion-detect`` has no recipe (``scripts/candidate_probe.py`` trains it), yet
    ``evaluate`` reports it like a segmentation model: its outlines at its own threshold
    are the lesions, anatomy's chest scans are accepted by its domain, its abdomen (by the
    body's lung share: the report's files are read without their body part) and
    first-generation phantoms declined; ``accepted_only`` is what the worker's SRs would
    report, over the scans it analyses."""
    import json

    from training.__main__ import main
    from training.anatomy import generate_anatomical_ct

    root = Path(__file__).resolve().parents[2]
    generate_anatomical_ct(tmp_path / "anatomy", 2, seed=2201, shift=True)
    generate_ct(tmp_path / "ct", 2, seed=2002)
    reports = {}
    for data in ("anatomy", "ct"):
        args = ["evaluate", str(root / "models" / "lesion-detect"), "--data", str(tmp_path / data)]
        assert main([*args, "--report", str(tmp_path / data / "report")]) == 0
        reports[data] = json.loads((tmp_path / data / "report" / "report.json").read_text())
    anatomy, ct = reports["anatomy"], reports["ct"]
    # seed 2201's first two shifted scans: an abdomen (one lesion), then a chest (three)
    assert (anatomy["domain_accepted"], anatomy["domain_checked"]) == (1, 2)
    assert anatomy["domain_declined"] == {"share of the body below": 1}
    declined = [row["declined"] for row in anatomy["per_case"]]
    assert declined[0].startswith("share of the body below -500 HU") and declined[1] is None
    assert (ct["domain_accepted"], ct["domain_checked"]) == (0, 2)
    assert anatomy["lesions"] >= 1 and 0 < anatomy["lesion_sensitivity"] <= 1
    analysed = anatomy["accepted_only"]
    assert analysed["n"] == 1 and analysed["lesions"] == anatomy["per_case"][1]["lesions"]
    assert ct["accepted_only"]["n"] == 0 and ct["accepted_only"]["lesions"] == 0
    assert (tmp_path / "anatomy" / "report" / "dice.png").is_file()
    # the recipe-less package is known to evaluate only: training it by name is refused
    with pytest.raises(SystemExit):
        main(["train", "lesion-detect", "--data", str(tmp_path / "ct"), "--out", str(tmp_path)])


@pytest.mark.parametrize("name", ["lesion-seg", "lesion-class"])
def test_evaluate_checks_the_domain_with_the_features_of_its_own_forward_pass(
    ct_data: Path, name: str
) -> None:
    """The domain check's features are kept from the evaluation's forward pass: the same
    vectors as a pass of their own would give, the same verdicts, and the network runs
    once per case instead of twice."""
    from inference.trial import load_and_try
    from training.domain import FeatureWatch, feature_vector
    from training.evaluation import evaluate
    from training.folders import accepted_summary, load_cases, worker_decisions

    root = Path(__file__).resolve().parents[2]
    loaded = load_and_try(root / "models" / name, torch.device("cpu"))
    recipe = RECIPES[name]
    cases = load_cases(recipe, ct_data)[:3]
    calls = []
    hook = loaded.module.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        seen = FeatureWatch(loaded)
        evaluate(recipe, loaded, cases, seen.watch)
        passes = len(calls)
        kept = accepted_summary(worker_decisions(loaded, cases, seen.vectors))
        assert len(calls) == passes  # no second pass
        again = accepted_summary(worker_decisions(loaded, cases))
        assert len(calls) > passes  # a pass of its own for each case the rules accept
    finally:
        hook.remove()
    assert kept == again and kept["domain_checked"] == 3 and kept["domain_accepted"] > 0
    for i, case in enumerate(cases):
        vector = seen.vectors[i]
        assert vector is not None
        assert np.array_equal(vector, feature_vector(loaded, case.volume))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("why", "kind"),
    [
        ("row spacing 1.87 mm; validated 0.904-1.65 mm", "row spacing"),
        ("99th percentile 774 HU; validated 182 HU to 756 HU", "99th percentile"),
        (
            "share of voxels below -500 HU (air, lung) 0; validated 0.446 to 0.787",
            "share of voxels below",
        ),
        (
            "share of the body below -500 HU (lungs, gas) 0.017; validated 0.0918 to 1",
            "share of the body below",
        ),
        ("modality MR; validated CT", "modality MR; validated CT"),
    ],
)
def test_a_decline_is_counted_under_the_words_before_its_first_number(why: str, kind: str) -> None:
    from training.domain import reason_kind

    assert reason_kind(why) == kind
