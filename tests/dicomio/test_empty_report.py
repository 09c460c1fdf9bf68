"""A segmentation that finds nothing still reports: the SR says the AI looked and found no lesion.

(Before, highdicom refused a TID 1500 report without measurement groups, so a
lesion-free study failed its job and was retried as if the next try could differ.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pydicom import dcmread

from tests.dicomcheck import validate
from tests.dicomgen import write_lesion_ct
from tests.packages import threshold_segmenter


def test_no_lesion_found_is_a_report_not_a_failure(tmp_path: Path) -> None:
    package = threshold_segmenter(tmp_path / "pkg", threshold_hu=120)
    write_lesion_ct(tmp_path / "ct", spheres=[((200.0, 200.0, 200.0), 1.0)])  # outside: none
    config = tmp_path / "config.toml"
    config.write_text(
        "[storage]\ndata_dir = 'data'\nmin_free_mb = 0\n[web]\nenabled = false\n"
        f"[inference]\nworkers = 0\n[[pipelines]]\nname = 'ct'\nmodels = ['{package}']\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "node", "analyze", str(tmp_path / "ct"), "--out",
         str(tmp_path / "out"), "--config", str(config)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "lesion 1:" not in run.stdout
    (sr,) = (tmp_path / "out").rglob("SR_*.dcm")  # no SEG: nothing to segment
    assert not list((tmp_path / "out").rglob("SEG_*.dcm"))
    assert "threshold-lesions 1.0.0: no lesion found" in json.dumps(dcmread(sr).to_json_dict())
    result = validate(sr.parent)
    assert result.ok, result.report()
