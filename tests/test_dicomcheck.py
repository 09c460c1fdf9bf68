"""The validator the result tests rely on can fail: a broken object is caught."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from tests.dicomcheck import _messages, validate
from training.synthetic import generate_ct

pytestmark = pytest.mark.tools("dciodvfy", "dcentvfy")


def test_a_valid_series_passes_and_a_broken_one_fails(tmp_path: Path) -> None:
    generate_ct(tmp_path, 1, seed=11)  # training's synthetic CT passes dciodvfy
    good = validate(tmp_path / "studies")
    assert good.ok, good.report()
    assert set(good.iods().values()) == {"CTImage"}
    first = good.files[0].path
    ds = dcmread(first)
    del ds.Modality  # Type 1 in the General Series module
    ds.save_as(first, enforce_file_format=True)
    bad = validate(tmp_path / "studies")
    assert not bad.ok
    assert any("Modality" in e for e in bad.files[0].errors), bad.report()


def test_only_the_listed_false_positives_are_filtered() -> None:
    output = (
        "Error - Attribute is not present in standard DICOM IOD - (0x0018,0x1002) UI Device UID\n"
        "Error - Missing attribute Type 1 Required Element=<Modality> Module=<GeneralSeries>\n"
        "(0x1455,0x1000)  ?  - Warning - Unrecognized tag\n"
    )
    errors, warnings = _messages(output, [])
    assert len(errors) == 2 and warnings == ["Warning - Unrecognized tag [(0x1455,0x1000)]"]
    import re

    from tests.dicomcheck import KNOWN_FALSE_POSITIVES

    known = [re.compile(p) for p, _ in KNOWN_FALSE_POSITIVES]
    errors, _ = _messages(output, known)
    assert errors == [
        "Error - Missing attribute Type 1 Required Element=<Modality> Module=<GeneralSeries>"
    ]
