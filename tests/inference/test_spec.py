"""model.toml is validated like config.toml; a package is loaded and tried before it serves.

Each broken package must stop start-up (or the command) with one line naming
the file and the field — never a silent default, a traceback, or a failure
found only when a job runs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from inference.errors import ModelPackageError
from inference.spec import read_spec, sha256_file
from inference.trial import load_and_try
from tests.packages import make_package, threshold_segmenter

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def _edit(folder: Path, old: str, new: str) -> Path:
    toml = folder / "model.toml"
    text = toml.read_text()
    assert old in text, old
    toml.write_text(text.replace(old, new, 1))
    return toml


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # A typo must not silently turn windowing off.
        ("window = ", "windw = ", r"\[input\]: unknown key\(s\): windw"),
        (
            "[provenance]",
            "[provenance]\nlicence = 'x'",
            r"\[provenance\]: unknown key\(s\): licence",
        ),
        ("[model]", "[model]\nformt = 'x'", r"\[model\]: unknown key\(s\): formt"),
        ("[provenance]", "[extra]\na = 1\n[provenance]", r"model.toml: unknown key\(s\): extra"),
        ("threshold = 0.5", 'threshold = "0.5"', r"#1 threshold: must be a number"),
        ("threshold = 0.5", "threshold = 1.5", r"#1 threshold: must be at most 1"),
        ("patch = [32, 64, 64]", 'patch = [32, "64", 64]', r"\[input\] patch: must be a list"),
        ("patch = [32, 64, 64]", "patch = [32, 0, 64]", r"\[input\] patch: must be at least 1"),
        ("window = [-1000.0, 1000.0]", "window = [5.0, 1.0]", r"\[input\] window: must be"),
        ('version = "1.0.0"\n', "", r"\[model\] version: is required"),
        ('sha256 = "', 'sha256 = "zz', r"\[model\] sha256: must be 64 hex digits"),
        ('task = "segmentation"', 'task = "guessing"', r"\[model\] task: must be one of"),
        ('weights = "weights.pt"', 'weights = "../x.pt"', r"\[model\] weights: must name a file"),
        ("[input]", "[input]\nmax_priors = 2", r"\[input\] max_priors: only for task"),
        ("[input]", "[input]\nsamples = 100", r"\[input\] samples: only for task sequence"),
        (
            "[provenance]",
            "[domain]\nfile = '../d.json'\nsha256 = ''\n[provenance]",
            r"\[domain\] file: must name a file inside the package",
        ),
        ("[provenance]", "[domain]\nfile = 'd.json'\n[provenance]", r"\[domain\] sha256: is req"),
        ("[input]", '[input]\naxcodes = "RAX"', r"\[input\] axcodes: must be three of L/R"),
        ("[input]", '[input]\naxcodes = "RRS"', r"\[input\] axcodes: must be three of L/R"),
        ("threshold = 0.5", "threshold = 0.5\n[output]\nactivation = 'relu'", "activation: must"),
        (
            "threshold = 0.5",
            "threshold = 0.5\n[output]\nbackground_channel = 0",
            r"background_channel: only with activation",
        ),
    ],
)
def test_broken_model_toml_names_the_key(tmp_path: Path, old: str, new: str, message: str) -> None:
    toml = _edit(threshold_segmenter(tmp_path / "pkg"), old, new)
    with pytest.raises(ModelPackageError, match=message) as info:
        read_spec(toml.parent)
    assert str(toml) in str(info.value)


def test_labels_must_match_the_models_outputs(tmp_path: Path) -> None:
    folder = threshold_segmenter(tmp_path / "pkg")
    _edit(
        folder,
        "[provenance]",
        '[[output.labels]]\nname = "b"\ncode = ["1", "SCT", "B"]\n[provenance]',
    )
    with pytest.raises(
        ModelPackageError,
        match=r"the model gives 1 output channel\(s\); \[\[output.labels\]\] names 2",
    ):
        load_and_try(folder, CPU)


def test_weights_that_do_not_unpickle_name_the_file(tmp_path: Path) -> None:
    folder = threshold_segmenter(tmp_path / "pkg")
    (folder / "weights.pt").write_bytes(b"not a torch file at all")
    _edit(folder, 'sha256 = "', 'sha256 = "' + sha256_file(folder / "weights.pt") + '"\n#')
    with pytest.raises(ModelPackageError, match=r"weights.pt: cannot be loaded"):
        load_and_try(folder, CPU)


def test_unknown_architecture_parameter_names_the_key(tmp_path: Path) -> None:
    folder = threshold_segmenter(tmp_path / "pkg")
    _edit(folder, "[model.parameters]", "[model.parameters]\nbsae = 8")
    with pytest.raises(ModelPackageError, match=r"\[model.parameters\]: .*bsae"):
        load_and_try(folder, CPU)


def test_a_trial_run_that_fails_stops_the_load(tmp_path: Path) -> None:
    """A classifier whose input size is too small for its layers fails at load, not per job."""
    folder = make_package(
        tmp_path / "pkg",
        name="tiny",
        task="classification",
        architecture="cnn_classifier",
        parameters={"num_classes": 2},
        input_spec={"size": [1, 1, 1]},
        labels=[{"name": "a", "code": ["1", "SCT", "A"]}, {"name": "b", "code": ["2", "SCT", "B"]}],
    )
    with pytest.raises(ModelPackageError, match="trial run on a dummy input failed"):
        load_and_try(folder, CPU)


def test_shipped_packages_pass(tmp_path: Path) -> None:
    for folder in sorted((ROOT / "models").iterdir()):
        loaded = load_and_try(folder, CPU)
        assert loaded.spec.name == folder.name


def _ainode(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def _config(tmp_path: Path, package: Path, workers: int = 0) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"[node]\nport = {_port()}\n[storage]\ndata_dir = 'data'\nmin_free_mb = 0\n"
        "[web]\nenabled = false\n"
        f"[inference]\nworkers = {workers}\n"
        f"[[pipelines]]\nname = 'ct'\nmodels = ['{package}']\n"
    )
    return path


def _port() -> int:
    from tests.peers import free_port

    return free_port()


def test_check_config_verifies_every_package_hash_included(tmp_path: Path) -> None:
    folder = threshold_segmenter(tmp_path / "pkg")
    config = _config(tmp_path, folder)
    ok = _ainode("check-config", "--config", str(config), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "threshold-lesions 1.0.0" in ok.stdout
    with open(folder / "weights.pt", "ab") as f:
        f.write(b"tampered")
    bad = _ainode("check-config", "--config", str(config), cwd=tmp_path)
    assert bad.returncode == 2
    assert "does not match [model] sha256" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_analyze_with_a_broken_package_says_one_line(tmp_path: Path) -> None:
    folder = threshold_segmenter(tmp_path / "pkg")
    _edit(folder, "threshold = 0.5", 'threshold = "high"')
    config = _config(tmp_path, folder)
    run = _ainode(
        "analyze",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--config",
        str(config),
        cwd=tmp_path,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert "#1 threshold: must be a number" in run.stderr


def test_serve_with_unloadable_weights_stops_at_once_naming_the_package(tmp_path: Path) -> None:
    folder = threshold_segmenter(tmp_path / "pkg")
    (folder / "weights.pt").write_bytes(b"not a torch file at all")
    _edit(folder, 'sha256 = "', 'sha256 = "' + sha256_file(folder / "weights.pt") + '"\n#')
    config = _config(tmp_path, folder, workers=1)
    start = time.monotonic()
    run = _ainode("serve", "--config", str(config), cwd=tmp_path, timeout=90)
    took = time.monotonic() - start
    assert run.returncode == 1
    assert "weights.pt: cannot be loaded" in run.stderr
    assert "Traceback" not in run.stderr
    assert took < 30, f"serve took {took:.0f} s to give up"
