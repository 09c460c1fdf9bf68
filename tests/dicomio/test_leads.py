"""ECG leads are matched by what they are (code, then name), and real ECGs from elsewhere run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydicom.data import get_testdata_file

from dicomio.leads import lead_key, name_key
from dicomio.volume_in import load_waveform
from inference.execute import predict_sequence
from inference.trial import load_and_try

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "key"),
    [("Lead I (Einthoven)", "I"), ("Lead II", "II"), ("I", "I"), ("lead avr", "aVR"),
     ("Lead V6", "V6"), ("Lead aVF (Goldberger)", "aVF"), ("Lead V3R", "V3R")],
)  # fmt: skip
def test_names_fold_to_the_lead(name: str, key: str) -> None:
    assert name_key(name) == key


def test_codes_win_over_names() -> None:
    assert lead_key("5.6.3-9-61", "SCPECG", "something else") == "III"
    assert lead_key("2:61", "MDC", "") == "III"  # MDC: III is 2:61, V1 is 2:3
    assert lead_key("2:3", "MDC", "Lead III") == "V1"
    assert lead_key("X1", "99LOCAL", "Lead aVL") == "aVL"


def test_a_real_devices_ecg_runs_through_the_shipped_model() -> None:
    """pydicom's waveform_ecg.dcm names lead I "Lead I (Einthoven)"; the model asks "Lead I"."""
    path = Path(get_testdata_file("waveform_ecg.dcm", download=False))
    waveform = load_waveform(path)
    assert waveform.keys == ("I", "II", "III", "aVR", "aVL", "aVF",
                             "V1", "V2", "V3", "V4", "V5", "V6")  # fmt: skip
    model = load_and_try(ROOT / "models" / "ecg-rhythm", torch.device("cpu"))
    probs = predict_sequence(model, waveform, amp=False)
    assert probs.shape == (3,) and abs(float(probs.sum()) - 1) < 1e-4


def test_every_pydicom_data_file_is_analysed_or_declined_never_a_traceback(tmp_path) -> None:
    import shutil

    from tests.corpus import corpus_files

    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, path in enumerate(corpus_files()):
        shutil.copy(path, folder / f"{i:03d}_{path.name}")
    run = subprocess.run(
        [sys.executable, "-m", "node", "analyze", str(folder), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert "Traceback" not in run.stdout + run.stderr, (run.stdout + run.stderr)[-3000:]
    studies = [line for line in run.stdout.splitlines() if line.startswith("study ")]
    assert len(studies) >= 20
    # The real ECG is analysed by ecg-rhythm, not declined for a lead's spelling.
    assert "lacks the lead" not in run.stdout
    assert "ecg-rhythm: ecg-rhythm 1.0.0 (sequence)" in run.stdout
    # Every line under a study is an outcome or a declined/skipped with its reason.
    for line in run.stdout.splitlines():
        if line.startswith("  ") and not line.startswith("    "):
            assert any(w in line for w in ("1.0.0 (", "skipped: ", "cannot run: ")), line
