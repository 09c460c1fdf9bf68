"""``ainode export`` end to end: studies with real PHI go in over DICOM, the models run,
and the export holds none of it while every reference still resolves.

Two patients with names, IDs, birth dates, accession numbers, institution and
physicians, a private tag and a Secondary Capture go to ``ainode serve`` with
storescu; the shipped lesion-seg and lesion-class write SEG, SR and heat map.
The export is then scanned element by element (sequences included) for every
original value the index and the sent files hold.
"""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from core.config import NodeConfig
from storage import queue
from storage.db import create_sqlite_engine, make_sessionmaker
from tests.dicomcheck import validate
from tests.peers import storescu
from training.synthetic import generate_ct

pytestmark = [pytest.mark.network, pytest.mark.tools("dciodvfy", "dcentvfy")]

ROOT = Path(__file__).resolve().parents[2]

PHI = {
    "A": {
        "PatientName": "Doe^Jane^Marie",
        "PatientID": "MRN-443322",
        "PatientBirthDate": "19600412",
        "InstitutionName": "St Elsewhere General",
        "ReferringPhysicianName": "House^Gregory",
        "OperatorsName": "Tech^Terry",
    },
    "B": {
        "PatientName": "Roe^Richard",
        "PatientID": "MRN-998877",
        "PatientBirthDate": "19721103",
        "InstitutionName": "St Elsewhere General",
        "ReferringPhysicianName": "Quinn^Michaela",
        "OperatorsName": "Tech^Terry",
    },
}
# (patient, Study Date, Accession Number): patient A has two studies 191 days apart.
STUDIES = (
    ("A", "20250110", "ACC10001"),
    ("A", "20250720", "ACC10002"),
    ("B", "20250301", "ACC20001"),
)


def _with_phi(src: Path, patient: str, day: str, accession: str) -> list[Path]:
    files = sorted(src.rglob("*.dcm"))
    for path in files:
        ds = dcmread(path)
        for keyword, value in PHI[patient].items():
            setattr(ds, keyword, value)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = day
        ds.AccessionNumber = accession
        ds.StudyDescription = f"CT chest {PHI[patient]['PatientName'].split('^')[0]} {accession}"
        ds.PatientAge = "064Y"
        block = ds.private_block(0x0029, "SOME VENDOR 1.0", create=True)
        block.add_new(0x10, "LO", f"private {PHI[patient]['PatientID']}")
        ds.save_as(path)
    return files


def _secondary_capture(ct: Path, out: Path) -> Path:
    """A Secondary Capture (no Burned In Annotation) of the study's first slice."""
    ds = dcmread(ct)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".9"
    ds.ConversionType = "WSD"
    ds.Modality = "OT"
    ds.save_as(out)
    return out


def _strings(ds: Dataset) -> Iterator[str]:
    """Every value of every element (sequences walked), as text."""
    for elem in ds.iterall():
        if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ") or elem.value is None:
            continue
        values = elem.value if elem.VM > 1 else [elem.value]
        yield from (str(v) for v in values)


def _export(cfg_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", "export", "--config", str(cfg_path), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _secret(path: Path, value: bytes) -> Path:
    path.write_bytes(value)
    path.chmod(0o600)
    return path


def _wait_for_jobs(cfg: NodeConfig, n: int) -> None:
    engine = create_sqlite_engine(cfg.storage.database_path)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with make_sessionmaker(engine).begin() as s:
                jobs = queue.list_jobs(s, limit=50)
            if len(jobs) >= n and all(j.status == "succeeded" for j in jobs):
                return
            if any(j.status == "dead" for j in jobs):
                break
            time.sleep(0.5)
        pytest.fail(f"jobs did not finish: {[(j.id, j.status, j.last_error) for j in jobs]}")
    finally:
        engine.dispose()


def test_export_holds_no_phi_and_every_reference_resolves(node_factory, tmp_path: Path) -> None:
    secret = _secret(tmp_path / "secret", b"k" * 32)
    text = f"""
[export]
secret_file = "{secret}"

[[pipelines]]
name = "ct"
models = ["{ROOT / "models" / "lesion-seg"}", "{ROOT / "models" / "lesion-class"}"]
[pipelines.match]
modality = "CT"
"""
    node, cfg = node_factory(text, pipelines="", inference={"workers": 1, "poll_interval_s": 0.1})
    generate_ct(tmp_path / "gen", 3, seed=7811)
    sent: list[Path] = []
    for (patient, day, accession), folder in zip(
        STUDIES, sorted((tmp_path / "gen" / "studies").iterdir()), strict=True
    ):
        sent += _with_phi(folder, patient, day, accession)
    sent.append(_secondary_capture(sent[0], tmp_path / "sc.dcm"))
    assert storescu(cfg.node.port, sent).returncode == 0
    _wait_for_jobs(cfg, 3)

    out = tmp_path / "export"
    mapping = tmp_path / "private" / "mapping.csv"
    run = _export(
        cfg.path, "--out", str(out), "--silver-labels", "lesion-class", "--mapping", str(mapping)
    )
    assert run.returncode == 0, run.stderr
    assert "3 studies of 2 patients" in run.stdout, run.stdout

    # Every original identifying value: the PHI sent, and every UID the node holds.
    originals = {v for p in PHI.values() for v in p.values()}
    originals |= {a for _p, _d, a in STUDIES}
    names = {
        part.lower()
        for p in PHI.values()
        for key in ("PatientName", "ReferringPhysicianName", "OperatorsName")
        for part in p[key].split("^")
    }
    results_dir = cfg.storage.data_dir
    for path in [*sent, *(p for p in results_dir.rglob("*.dcm"))]:
        ds = dcmread(path, stop_before_pixels=True)
        originals |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
        originals |= {str(ds.get("FrameOfReferenceUID", ""))} - {""}
    exported = sorted(out.rglob("*.dcm"))
    datasets = {p: dcmread(p) for p in exported}
    kinds = {str(ds.Modality) for ds in datasets.values()}
    assert {"CT", "SEG", "SR"} <= kinds, kinds
    for path, ds in datasets.items():
        text_values = list(_strings(ds))
        leaks = {o for o in originals for v in text_values if o.lower() in v.lower()}
        leaks |= {w for v in text_values for w in re.findall(r"[a-z]+", v.lower()) if w in names}
        assert not leaks, f"{path.name}: {leaks}"
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientBirthDate == ""
        if ds.Modality == "CT":
            assert ds.PatientAge == "064Y"  # Retain Patient Characteristics
        assert not any(e.tag.is_private for e in ds.iterall()), path.name
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == [
            "113100",
            "113107",
            "113108",
            "113105",
        ]

    # The Secondary Capture was left out, and the manifest says why.
    assert all(ds.SOPClassUID != SecondaryCaptureImageStorage for ds in datasets.values())
    manifest = json.loads((out / "export.json").read_text())
    assert [e["why"] for e in manifest["excluded"]] == [
        "may carry burned-in text (Secondary Capture without Burned In Annotation)"
    ]

    # Dates: moved, one shift per patient, so A's interval is unchanged.
    ct_dates = {}
    for ds in datasets.values():
        if ds.Modality == "CT":
            ct_dates.setdefault(str(ds.PatientID), set()).add(str(ds.StudyDate))
    assert len(ct_dates) == 2
    a_dates = next(sorted(d) for d in ct_dates.values() if len(d) == 2)
    first, second = (date(int(d[:4]), int(d[4:6]), int(d[6:])) for d in a_dates)
    assert (second - first).days == 191
    assert not set(a_dates) & {d for _p, d, _a in STUDIES}

    # References: every referenced instance is in the export; the SEG reads back.
    sops = {str(ds.SOPInstanceUID): (p, ds) for p, ds in datasets.items()}
    for path, ds in datasets.items():
        refs = {str(e.value) for e in ds.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
        missing = refs - set(sops)
        assert not missing, f"{path.name} ({ds.Modality}) refers to {missing}"
        if ds.Modality == "SEG":
            seg = hd.seg.segread(path)
            sources = sorted(refs)
            mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=sources)
            assert mask.shape[0] == len(sources)

    # labels.csv: silver labels from lesion-class, one split per patient.
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert {r["source"] for r in rows} == {"silver"}
    assert {r["label"] for r in rows} <= {"normal", "benign", "malignant"}
    assert len({(r["patient_id"], r["split"]) for r in rows}) == 2

    # The mapping table: only where asked, outside the export, for its owner only.
    assert stat.S_IMODE(os.stat(mapping).st_mode) == 0o600
    with open(mapping, newline="") as f:
        table = list(csv.DictReader(f))
    assert {r["original_patient_id"] for r in table} == {"MRN-443322", "MRN-998877"}

    # Pseudonyms: the same with the same secret, another with another secret.
    pseudonyms = {r["patient_id"] for r in rows}
    again = _export(cfg.path, "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    with open(tmp_path / "again" / "labels.csv", newline="") as f:
        assert {r["patient_id"] for r in csv.DictReader(f)} == pseudonyms
    other_cfg = tmp_path / "other.toml"
    other_secret = _secret(tmp_path / "other-secret", b"z" * 32)
    other_cfg.write_text(cfg.path.read_text().replace(str(secret), str(other_secret)))
    other = _export(other_cfg, "--out", str(tmp_path / "other"))
    assert other.returncode == 0, other.stderr
    with open(tmp_path / "other" / "labels.csv", newline="") as f:
        assert not {r["patient_id"] for r in csv.DictReader(f)} & pseudonyms

    # Every exported file is valid DICOM, and the set agrees on patients, studies, series.
    result = validate(out)
    assert result.ok, result.report()
    assert len(result.files) == len(exported)
    node.stop()


def test_export_refuses_without_a_secret_or_into_a_full_folder(
    node_factory, tmp_path: Path
) -> None:
    _node, cfg = node_factory(start=False)
    run = _export(cfg.path, "--out", str(tmp_path / "x"))
    assert run.returncode == 2
    assert "[export] secret_file is not set" in run.stderr
    secret = _secret(tmp_path / "secret", b"s" * 32)
    _node, cfg = node_factory(f'[export]\nsecret_file = "{secret}"\n', start=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("")
    run = _export(cfg.path, "--out", str(tmp_path / "full"))
    assert run.returncode == 2
    assert "full: not empty" in run.stderr
    run = _export(cfg.path, "--out", str(tmp_path / "y"), "--mapping", str(tmp_path / "y" / "m"))
    assert run.returncode == 2
    assert "must lie outside --out" in run.stderr
    (tmp_path / "labels.csv").write_text("series_uid,diagnosis\n1.2.3,normal\n")
    run = _export(cfg.path, "--out", str(tmp_path / "z"), "--labels", str(tmp_path / "labels.csv"))
    assert run.returncode == 2
    assert "needs a label column and series_uid or study_uid" in run.stderr
    (tmp_path / "latin1.csv").write_bytes("series_uid,label\n1.2.3,b\xe9nin\n".encode("latin-1"))
    run = _export(cfg.path, "--out", str(tmp_path / "z"), "--labels", str(tmp_path / "latin1.csv"))
    assert run.returncode == 2 and "not UTF-8 text" in run.stderr
    assert not (tmp_path / "z").exists()  # nothing written before the request was checked
