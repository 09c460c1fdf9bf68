"""Models decline what they were not made for, and accept what they were.

The shipped CT packages record their validated input domain (``domain.json``,
built by ``ainode train domain`` from their training scans). Series made here
independently — plain noise, an MR series, 8 mm slices, a head, a chest with
lungs — must come back "not analysed: outside the validated input of MODEL
(reason)", with no lesions; fresh scans of the training generator's kind
(seeds never used) must all be accepted and analysed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicomio.records import Volume
from inference.domain import (
    Domain,
    check_series,
    check_volume,
    intensity_stats,
    lung_fraction,
    read_domain,
)
from inference.errors import ModelPackageError
from inference.spec import verify_package
from tests.dicomcheck import validate
from tests.phantoms import chest_phantom, head_phantom, noise_ct, write_series
from training.anatomy import generate_anatomical_ct
from training.synthetic import generate_ct

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"


def _ainode(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def _by_study(stdout: str) -> dict[str, str]:
    """analyze's output, one text block per study UID."""
    blocks: dict[str, str] = {}
    current = ""
    for line in stdout.splitlines():
        if line.startswith("study "):
            current = line.split()[1].rstrip(":")
            blocks[current] = ""
        elif current:
            blocks[current] += line + "\n"
    return blocks


def _study(folder: Path) -> str:
    return str(dcmread(next(folder.rglob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)


def test_series_outside_the_domain_are_declined_with_the_reason(tmp_path: Path) -> None:
    soft = 40 + np.random.default_rng(3).normal(0, 10, (12, 64, 64))
    cases = {
        "noise": (noise_ct((40, 64, 64)), (2.0, 1.2, 1.2), "CT", r"share of voxels below -500 HU"),
        "mr": (np.full((20, 64, 64), 600.0), (2.0, 1.2, 1.2), "MR", "modality MR; made for CT"),
        "thick": (soft, (8.0, 1.2, 1.2), "CT", "slice spacing 8 mm; validated"),
        # A head series labelled CHEST: the pixels, not the label, give it away.
        "head": (
            head_phantom((40, 128, 112), (2.5, 1.5, 1.5)),
            (2.5, 1.5, 1.5),
            "CT",
            "below -500 HU",
        ),
        "chest": (
            chest_phantom((24, 240, 240), (2.5, 1.5, 1.5)),
            (2.5, 1.5, 1.5),
            "CT",
            "below -500 HU",
        ),
    }
    studies = {}
    for name, (values, spacing, modality, _why) in cases.items():
        write_series(tmp_path / "in" / name, values, spacing, modality=modality)
        studies[name] = _study(tmp_path / "in" / name)
    generate_ct(tmp_path / "in" / "fresh", 2, 9401, shift=True)  # seeds never used
    fresh = {_study(p.parent) for p in (tmp_path / "in" / "fresh").rglob("*.dcm")}
    config = tmp_path / "config.toml"
    config.write_text(
        "[storage]\ndata_dir = 'data'\nmin_free_mb = 0\n[web]\nenabled = false\n"
        "[inference]\nworkers = 0\n[[pipelines]]\nname = 'ct'\nreport_declined = true\n"
        f"models = ['{MODELS / 'lesion-seg'}', '{MODELS / 'lesion-class'}']\n"
    )
    run = _ainode(
        "analyze", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--config", str(config),
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    blocks = _by_study(run.stdout)
    for name, (_v, _s, _m, why) in cases.items():
        block = blocks[studies[name]]
        for model in ("lesion-seg", "lesion-class"):
            assert f"not analysed: outside the validated input of {model} (" in block, (name, block)
        assert why in block, (name, block)
        assert "lesion 1:" not in block and "p=" not in block, (name, block)
        # The radiologist's SR says the AI looked and declined, and why; nothing else is sent.
        written = sorted((tmp_path / "out" / studies[name]).glob("*.dcm"))
        assert [p.name[:3] for p in written] == ["SR_"], (name, written)
        text = json.dumps(dcmread(written[0]).to_json_dict())
        assert "Not analysed: outside the validated input of lesion-seg" in text
    assert len(fresh) == 2
    for uid in fresh:
        assert "not analysed" not in blocks[uid], blocks[uid]
        assert "p=" in blocks[uid]
    result = validate(*(tmp_path / "out" / studies[n] for n in cases))
    assert result.ok, result.report()


def test_fresh_scans_of_the_training_kind_are_accepted(tmp_path: Path) -> None:
    """In-distribution held-out scans (both acquisition ranges, unused seeds): all accepted."""
    import torch

    from core.config import SeriesRule
    from inference.pipeline import run_pipeline
    from inference.trial import load_and_try
    from tests.dicomgen import ct_series_info

    models = [load_and_try(MODELS / m, torch.device("cpu")) for m in ("lesion-seg", "lesion-class")]
    generate_ct(tmp_path / "plain", 10, 9501)
    generate_ct(tmp_path / "shifted", 10, 9502, shift=True)
    series: dict[str, list[Path]] = {}
    for path in sorted(tmp_path.rglob("*.dcm")):
        series.setdefault(str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID), []).append(
            path
        )
    assert len(series) == 20
    declined = []
    for uid, paths in series.items():
        info = ct_series_info(uid, paths)
        run = run_pipeline([info], SeriesRule(), models, batch_size=4, amp=False)
        declined += [o.declined for o in run.outcomes if o.declined]
    assert declined == []


def test_the_shipped_ct_packages_record_their_domain() -> None:
    for name in ("lesion-seg", "lesion-class", "lesion-change"):
        spec = verify_package(MODELS / name)
        assert spec.domain is not None, name
        domain = spec.domain.domain
        assert domain.modalities == ("CT",) and domain.body_parts == ("CHEST",)
        assert (domain.features is not None) == (name != "lesion-change")
        assert "train, val, calibration" in domain.built_from


def test_a_tampered_domain_file_stops_the_package(tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    shutil.copytree(MODELS / "lesion-seg", folder)
    data = json.loads((folder / "domain.json").read_text())
    data["spacing_mm"][0] = [0.1, 50.0]  # someone widening the range by hand
    (folder / "domain.json").write_text(json.dumps(data))
    with pytest.raises(ModelPackageError, match=r"domain.json: SHA-256 does not match \[domain\]"):
        verify_package(folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(spacing_mm=[[1, 2], [2, 1], [1, 2]]), r"spacing_mm\[1\]: must be"),
        (lambda d: d.update(colour="red"), r"unknown key\(s\): colour"),
        (lambda d: d["intensity"].update(hu_p42=[0, 1]), r"intensity: must map some of"),
        (lambda d: d["features"].update(threshold=-1), r"features: .* threshold > 0"),
    ],
)
def test_a_broken_domain_file_names_the_key(tmp_path: Path, edit, message: str) -> None:
    data = json.loads((MODELS / "lesion-seg" / "domain.json").read_text())
    edit(data)
    path = tmp_path / "domain.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelPackageError, match=message):
        read_domain(path)


def test_body_part_and_modality_rules() -> None:
    domain = read_domain(MODELS / "lesion-seg" / "domain.json")
    assert check_series(domain, "CT", "CHEST") is None
    assert check_series(domain, "CT", "") is None  # not recorded: not a reason to decline
    assert check_series(domain, "CT", "HEAD") == "body part HEAD; validated on CHEST"
    assert check_series(domain, "MR", "CHEST") == "modality MR; validated on CT"


def _volume_of(array: np.ndarray) -> Volume:
    return Volume(
        array=array,
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        normal=(0.0, 0.0, 1.0),
        study_instance_uid="1",
        series_instance_uid="1.1",
        frame_of_reference_uid="1.2",
        sop_instance_uids=tuple(f"1.1.{k}" for k in range(array.shape[0])),
    )


def test_intensity_statistics_measure_what_they_say() -> None:
    array = np.full((10, 40, 40), 40.0, dtype=np.float32)
    array[:, :10] = -1000.0  # a quarter air
    array[:, 10:14] = 1000.0  # a tenth bone
    stats = intensity_stats(_volume_of(array))
    assert stats["air_fraction"] == pytest.approx(0.25)
    assert stats["bone_fraction"] == pytest.approx(0.10)
    assert stats["fat_fraction"] == 0.0
    assert stats["hu_p50"] == pytest.approx(40.0)
    assert stats["noise_hu"] == pytest.approx(0.0)
    assert stats["lung_fraction"] == 0.0  # the air is outside the body


def test_the_shipped_ct_models_decline_anatomical_scans(tmp_path: Path) -> None:
    """Made by training.anatomy, a world the shipped models never saw (356 false lesions per
    scan with the check off): every scan is declined with a reason, none analysed."""
    import torch

    from inference.package import load_package
    from training.data import load_ct_cases
    from training.domain import acceptance
    from training.synthetic import CT_LABELS

    generate_anatomical_ct(tmp_path / "plain", 2, 9601)
    generate_anatomical_ct(tmp_path / "shifted", 2, 9602, shift=True)
    volumes = []
    for part in ("plain", "shifted"):
        folder = tmp_path / part
        cases, _ = load_ct_cases(folder, folder / "labels.csv", CT_LABELS, masks=False)
        volumes += [c.volume for c in cases]
    for name in ("lesion-seg", "lesion-class"):
        model = load_package(MODELS / name, torch.device("cpu"))
        assert model.spec.domain is not None
        accepted, total, reasons = acceptance(model, model.spec.domain.domain, volumes)
        assert (accepted, total) == (0, 4), (name, reasons)
        assert sum(reasons.values()) == 4 and all(reasons), reasons


def _trunk(lungs: bool, shape: tuple[int, int, int] = (12, 96, 96)) -> np.ndarray:
    """Air around an elliptic trunk of soft tissue; with ``lungs``, two lungs of -850 HU
    filling 36 % of it; without, three gas bubbles (an abdomen)."""
    _, y, x = np.indices(shape).astype(np.float64) - np.asarray(shape)[:, None, None, None] / 2
    hu = np.full(shape, -1000.0)
    trunk = (x / 45) ** 2 + (y / 30) ** 2 <= 1.0
    hu[trunk] = 40.0
    if lungs:
        for side in (-1, 1):
            hu[((x - side * 22) / 18) ** 2 + (y / 18) ** 2 <= 1.0] = -850.0
    else:
        for cy, cx in ((-10, -20), (5, 10), (12, 25)):
            hu[(x - cx) ** 2 + (y - cy) ** 2 <= 9] = -1000.0
    return hu + np.random.default_rng(1).normal(0, 30, shape)


def test_the_bodys_lung_share_tells_a_chest_from_an_abdomen() -> None:
    """``lung_fraction``: the part of the body (inside its outline) below -500 HU. The air
    around the body is not counted, the lungs inside it are; in 30 HU of noise too."""
    chest = lung_fraction(_trunk(True))
    assert chest == pytest.approx(2 * 18 * 18 / (45 * 30), abs=0.02)  # the lungs' share
    assert lung_fraction(_trunk(False)) == pytest.approx(
        3 * np.pi * 9 / (np.pi * 45 * 30), abs=0.01
    )
    assert lung_fraction(np.full((4, 32, 32), -1000.0)) == 0.0  # no body at all
    # the independent chest phantom's lungs count, whatever the generator's are
    phantom = lung_fraction(chest_phantom((24, 128, 128), (2.5, 2.8, 2.8)))
    assert 0.3 < phantom < 0.6, phantom


def test_a_domain_with_the_lung_share_declines_an_abdomen_that_does_not_say_so() -> None:
    """A series without Body Part Examined passes the body-part rule; the lung share is what
    declines an abdomen then, naming the statistic and the range."""
    domain = Domain(
        modalities=("CT",),
        body_parts=("CHEST",),
        spacing_mm=((0.5, 5.0), (0.5, 3.0), (0.5, 3.0)),
        intensity={"lung_fraction": (0.12, 0.6)},
        features=None,
        built_from="test",
    )
    assert check_series(domain, "CT", "") is None  # nothing said: not declined for it
    assert check_series(domain, "CT", "ABDOMEN") == "body part ABDOMEN; validated on CHEST"
    assert check_volume(domain, _volume_of(_trunk(True))) is None
    why = check_volume(domain, _volume_of(_trunk(False)))
    assert why is not None and why.startswith("share of the body below -500 HU (lungs, gas) 0.0")
    assert why.endswith("; validated 0.12 to 0.6"), why
    # a domain that does not record it does not check it (the packages built before it)
    assert check_volume(replace(domain, intensity={}), _volume_of(_trunk(False))) is None


def test_the_chest_detector_declines_the_generators_abdomen_and_takes_its_chest() -> None:
    """``lesion-detect`` is for chest CT: its domain records body part CHEST and the body's
    lung share from chest scans; abdominal scans of the held-out stream, given to it
    without a body part, are declined by the lung share, its chest scans accepted."""
    from training.detector_package import section_volumes

    spec = verify_package(MODELS / "lesion-detect")
    assert spec.domain is not None
    domain = spec.domain.domain
    assert domain.body_parts == ("CHEST",)
    assert "lung_fraction" in domain.intensity and "anatomy chest scans" in domain.built_from
    for volume in section_volumes(2201, 2, "abdomen", shift=True):
        why = check_volume(domain, volume)
        assert why is not None and why.startswith("share of the body below -500 HU"), why
    for volume in section_volumes(2201, 2, "chest", shift=True):
        assert check_volume(domain, volume) is None
