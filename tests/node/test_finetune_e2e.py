"""The hospital's loop: its studies reach the node over DICOM, leave it de-identified with
the radiologists' labels, fine-tune the shipped model, and the evaluation on the hospital's
own held-out patients says whether that helped.

The "new hospital" is :data:`training.synthetic.SITE_B` (portal-venous phase:
enhanced parenchyma with hypodense lesions, 3.4-4 mm slices, 0.7-0.85 mm
pixels), which the shipped lesion-class never saw (its lesions are all
hyperdense). The labels come from the generator's ground truth, keyed by the
original Series Instance UIDs, as a hospital's CSV would be.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import storescu
from training.synthetic import generate_ct_site_b

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 900) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=timeout
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_fine_tuning_on_the_hospitals_export_beats_the_shipped_model(
    node_factory, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"hospital-b-export-secret-0123456789")
    secret.chmod(0o600)
    _node, cfg = node_factory(f'[export]\nsecret_file = "{secret}"\n', pipelines="")
    labels = generate_ct_site_b(tmp_path / "hospital", 120, seed=7101)
    files = sorted((tmp_path / "hospital" / "studies").rglob("*.dcm"))
    assert storescu(cfg.node.port, files).returncode == 0

    export = tmp_path / "export"
    config = ("--config", str(cfg.path))
    out = _run("export", *config, "--out", str(export), "--labels", str(labels))
    assert "120 studies of 120 patients" in out and "120 series labelled" in out, out
    with open(export / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    splits = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert splits["test"] >= 10 and splits["val"] >= 10, splits
    assert {r["source"] for r in rows} == {"ground_truth"}

    tuned = tmp_path / "lesion-class-hospital-b"
    base = ROOT / "models" / "lesion-class"
    _run("train", "train", "lesion-class", "--init", str(base), "--data", str(export),
         "--out", str(tuned), "--epochs", "12")  # fmt: skip
    card = (tuned / "MODEL_CARD.md").read_text()
    assert "Fine-tuned from lesion-class" in card and "ground_truth" in card

    evaluation = _run(
        "train", "evaluate", str(tuned), "--data", str(export), "--split", "test",
        "--baseline", str(base), "--report", str(tmp_path / "report"),
    )  # fmt: skip
    figures = json.loads(evaluation[evaluation.index("{") :])
    model, baseline = figures[f"model: {tuned}"], figures[f"baseline: {base}"]
    print(evaluation)
    assert model["n"] == baseline["n"] == splits["test"]
    assert model["accuracy"] >= baseline["accuracy"] + 0.2, figures
    assert model["macro_auroc"] > baseline["macro_auroc"], figures
