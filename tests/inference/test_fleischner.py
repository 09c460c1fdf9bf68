"""Fleischner Society 2017 follow-up, checked row by row against the guideline's own Table 1.

The expected recommendations below are transcribed from the paper (MacMahon et
al., Radiology 2017;284:228-243, Table 1), independently of the data file the
node reads (``inference/guidelines/fleischner2017.toml``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicomio.records import Lesion, Volume
from inference.fleischner import advise, guideline, measure_nodule, nodule_type
from tests.dicomcheck import validate
from tests.dicomgen import write_lesion_ct
from tests.packages import threshold_segmenter

# (nodule type, count, average diameter in mm, patient risk) -> the paper's words.
TABLE_1 = [
    ("solid", 1, 4, "low", "No routine follow-up"),
    ("solid", 1, 5, "high", "Optional CT at 12 months"),
    ("solid", 1, 6, "low", "CT at 6-12 months, then consider CT at 18-24 months"),
    ("solid", 1, 8, "high", "CT at 6-12 months, then CT at 18-24 months"),
    ("solid", 1, 9, "low", "Consider CT at 3 months, PET/CT, or tissue sampling"),
    ("solid", 1, 25, "high", "Consider CT at 3 months, PET/CT, or tissue sampling"),
    ("solid", 3, 5, "low", "No routine follow-up"),
    ("solid", 3, 3, "high", "Optional CT at 12 months"),
    ("solid", 2, 7, "low", "CT at 3-6 months, then consider CT at 18-24 months"),
    ("solid", 2, 6, "high", "CT at 3-6 months, then at 18-24 months"),
    ("solid", 4, 12, "low", "CT at 3-6 months, then consider CT at 18-24 months"),
    ("solid", 4, 12, "high", "CT at 3-6 months, then consider CT at 18-24 months"),
    ("ground-glass", 1, 5, "high", "No routine follow-up"),
    (
        "ground-glass",
        1,
        6,
        "low",
        "CT at 6-12 months to confirm persistence, then CT every 2 years until 5 years",
    ),
    ("part-solid", 1, 4, "high", "No routine follow-up"),
    (
        "part-solid",
        1,
        10,
        "low",
        "CT at 3-6 months to confirm persistence. If unchanged and solid component remains "
        "<6 mm, annual CT should be performed for 5 years",
    ),
    ("ground-glass", 3, 4, "low", "CT at 3-6 months. If stable, consider CT at 2 and 4 years"),
    (
        "part-solid",
        2,
        7,
        "high",
        "CT at 3-6 months. Subsequent management based on the most suspicious nodule(s)",
    ),
]


def _nodule(kind: str, size: float) -> dict[str, float | str]:
    return {
        "type": kind,
        "solid_share": 1.0,
        "long_axis_mm": size,
        "short_axis_mm": size,
        "size_mm": float(size),
    }


@pytest.mark.parametrize(("kind", "count", "size", "risk", "expected"), TABLE_1)
def test_every_row_of_table_1(kind: str, count: int, size: int, risk: str, expected: str) -> None:
    # The largest nodule guides management; the others are smaller and of the same type.
    nodules = [_nodule(kind, size)] + [_nodule(kind, max(1, size - 2)) for _ in range(count - 1)]
    advice = advise(nodules, risk)
    assert advice.code is not None and advice.code[1] == "99AINODE"
    assert f": {expected}. " in advice.statement, advice.statement
    assert "Radiology 2017;284(1):228-243" in advice.statement
    assert "not for lung cancer screening" in advice.statement


def test_unknown_risk_takes_the_high_risk_row_and_says_so() -> None:
    advice = advise([_nodule("solid", 7)], "unknown")
    assert ": CT at 6-12 months, then CT at 18-24 months." in advice.statement
    assert "patient risk not configured: the high-risk row is used" in advice.statement


def test_a_mass_is_outside_the_guideline() -> None:
    advice = advise([_nodule("solid", 34)], "low")
    assert advice.code is None
    assert "over 30 mm, a mass, outside Fleischner Society 2017" in advice.statement


def test_the_table_has_one_row_for_every_case() -> None:
    table = guideline()
    for rule in table.rules:  # the guideline's own wording fits a DICOM code meaning
        assert len(rule.meaning) <= 64 and len(rule.code) <= 16
    for kind, count, risks in (
        ("solid", "single", ("low", "high")),
        ("solid", "multiple", ("low", "high")),
        ("ground-glass", "single", ("low", "high")),
        ("part-solid", "single", ("low", "high")),
        ("subsolid", "multiple", ("low", "high")),
    ):
        for risk in risks:
            for size in range(31):
                rows = [
                    r
                    for r in table.rules
                    if r.type == kind
                    and r.count == count
                    and r.min_mm <= size <= r.max_mm
                    and r.risk in (risk, "any")
                ]
                assert len(rows) == 1, (kind, count, risk, size, rows)


def test_nodule_type_from_its_ct_values() -> None:
    assert nodule_type(np.full(100, 20.0)) == ("solid", 1.0)
    assert nodule_type(np.full(100, -600.0)) == ("ground-glass", 0.0)
    mixed = np.concatenate([np.full(50, -600.0), np.full(50, 30.0)])
    assert nodule_type(mixed) == ("part-solid", 0.5)


def test_size_is_the_mean_of_the_axes_on_the_largest_axial_section() -> None:
    spacing = (1.0, 0.5, 0.5)
    z, y, x = np.meshgrid(
        *(np.arange(n) * s for n, s in zip((20, 60, 60), spacing, strict=True)), indexing="ij"
    )
    # An ellipsoid: 16 mm by 8 mm in the axial plane at its widest, 10 mm along z.
    inside = ((x - 15) / 8) ** 2 + ((y - 15) / 4) ** 2 + ((z - 10) / 5) ** 2 <= 1
    labels = inside.astype(np.uint16)
    volume = Volume(
        array=np.where(inside, 30.0, -850.0).astype(np.float32),
        spacing=spacing,
        origin=(0.0, 0.0, 0.0),
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        normal=(0.0, 0.0, 1.0),
        study_instance_uid="1",
        series_instance_uid="1.1",
        frame_of_reference_uid="1.2",
        sop_instance_uids=tuple(f"1.1.{k}" for k in range(20)),
    )
    k, j, i = np.nonzero(inside)
    lesion = Lesion(
        label="nodule",
        code=("1", "99X", "nodule"),
        voxel_count=int(inside.sum()),
        volume_mm3=0.0,
        centroid_mm=(0.0, 0.0, 0.0),
        longest_diameter_mm=0.0,
        bbox_kji=((k.min(), j.min(), i.min()), (k.max(), j.max(), i.max())),
        mean_probability=1.0,
    )
    measured = measure_nodule(volume, labels, lesion, 1)
    assert measured["type"] == "solid"
    assert measured["long_axis_mm"] == pytest.approx(16.0, abs=0.6)
    assert measured["short_axis_mm"] == pytest.approx(8.0, abs=0.6)
    assert measured["size_mm"] == 12.0


def test_the_sr_carries_the_recommendation_marked_as_decision_support(tmp_path: Path) -> None:
    package = threshold_segmenter(tmp_path / "pkg", threshold_hu=120)
    write_lesion_ct(tmp_path / "ct")  # two spheres of 200 HU: 12 and 16 mm across
    config = tmp_path / "config.toml"
    config.write_text(
        "[storage]\ndata_dir = 'data'\nmin_free_mb = 0\n[web]\nenabled = false\n"
        f"[inference]\nworkers = 0\n[[pipelines]]\nname = 'ct'\nmodels = ['{package}']\n"
        "[pipelines.fleischner]\nlabels = ['lesion']\nrisk = 'low'\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "node", "analyze", str(tmp_path / "ct"), "--out",
         str(tmp_path / "out"), "--config", str(config)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    expected = "CT at 3-6 months, then consider CT at 18-24 months"
    assert "2 solid nodules, largest 16 mm" in run.stdout, run.stdout
    assert expected in run.stdout
    sr_path = next((tmp_path / "out").rglob("SR_*.dcm"))
    sr = dcmread(sr_path)
    content = json.dumps(sr.to_json_dict())
    assert '"FL17-SM3"' in content and "99AINODE" in content
    declared = sr.CodingSchemeIdentificationSequence  # whose codes these are
    assert {str(i.CodingSchemeDesignator) for i in declared} == {"99AINODE", "99IHE"}
    assert "not verified: Fleischner Society 2017, 2 solid nodules" in content
    assert validate(sr_path.parent).ok
