"""The shipped lesion detector end to end: storescu -> ainode serve -> job -> Orthanc.

The chest is ``tests.phantoms.chest_phantom``, made independently of the anatomy generator
the detector was trained on: a trunk of fat and muscle, ribs, two lungs with twelve vessels
running through them (the classic false nodules, seen end-on in every slice), a spine and
one 12 mm nodule. The PACS (a real Orthanc) must get an SR and a SEG; the lesions reported
must include the nodule and none may lie on a vessel. (The closest call on this phantom is
elsewhere: with 0.3.0's four turns a blob at the back of a lung scores 0.831 against the
package's threshold of 0.908 — as cut, 0.2.0's, 0.967 against 0.980 — so the test does not
require that nothing else is reported.) That it declines a
plain-noise CT with an SR saying why is in ``test_declined_e2e.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from core.config import NodeConfig
from storage import deliveries
from storage.db import create_sqlite_engine, make_sessionmaker
from storage.outcomes import OutcomeRecord, list_outcomes
from tests.peers import Orthanc, storescu
from tests.phantoms import chest_phantom, chest_vessels, write_series

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[2]
SHAPE, SPACING = (48, 256, 256), (2.5, 1.4, 1.4)
NODULE_MM = (70.0, -10.0, 0.0)  # x, y, z from the volume's centre (tests.phantoms)


def _rows(
    cfg: NodeConfig, study: str
) -> tuple[list[deliveries.DeliveryRecord], list[OutcomeRecord]]:
    engine = create_sqlite_engine(cfg.storage.database_path)
    try:
        with make_sessionmaker(engine).begin() as s:
            sent = deliveries.list_deliveries(s, study_instance_uid=study)
            return sent, list_outcomes(s, study_instance_uid=study)
    finally:
        engine.dispose()


def _delivered(cfg: NodeConfig, study: str, kinds: int) -> list[deliveries.DeliveryRecord]:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        sent, _ = _rows(cfg, study)
        if len(sent) >= kinds and all(r.status == "delivered" for r in sent):
            return sent
        time.sleep(0.3)
    raise AssertionError(f"not delivered: {_rows(cfg, study)}")


def test_the_nodule_reaches_the_pacs_and_no_vessel(
    node_factory, orthanc: Orthanc, tmp_path: Path
) -> None:
    text = f"""
{orthanc.toml_table("destinations")}
[[pipelines]]
name = "chest"
models = ["{ROOT / "models" / "lesion-detect"}"]
destinations = ["pacs"]
report_declined = true
[pipelines.match]
modality = "CT"
"""
    tables: dict[str, dict[str, object]] = {
        "inference": {"workers": 1, "poll_interval_s": 0.1},
        "delivery": {"check_interval_s": 0.2},
    }
    _node, cfg = node_factory(text, pipelines="", **tables)
    chest = write_series(tmp_path / "chest", chest_phantom(SHAPE, SPACING), SPACING)
    study = str(dcmread(chest[0]).StudyInstanceUID)
    assert storescu(cfg.node.port, chest).returncode == 0

    sent = _delivered(cfg, study, 2)
    assert sorted(r.result.kind for r in sent) == ["SEG", "SR"]
    _, (outcome,) = _rows(cfg, study)
    lesions = outcome.result["lesions"]
    # the volume's first voxel sits at the origin (tests.phantoms.write_series): a point's
    # patient mm are its offset from the volume's centre plus half the extent
    half = np.asarray([(n - 1) / 2 * s for n, s in zip(SHAPE[::-1], SPACING[::-1], strict=True)])
    centres = [np.asarray(lesion["centroid_mm"]) - half for lesion in lesions]
    assert any(np.abs(c - NODULE_MM).max() <= 4.0 for c in centres), lesions
    for x, y, r in chest_vessels():
        for c in centres:
            assert np.hypot(c[0] - x, c[1] - y) > r + 3.0, (c, (x, y, r))
    sr_uid = next(r.result.sop_instance_uid for r in sent if r.result.kind == "SR")
    sr = orthanc.read_instance(sr_uid)
    assert "lesion-detect" in json.dumps(sr.to_json_dict())
