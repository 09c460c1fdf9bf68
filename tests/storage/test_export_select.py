"""Which studies ``ainode export`` takes: the filters as one query, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from storage import queue
from storage.export_filter import StudyFilter
from storage.export_select import select_studies, silver_labels
from storage.outcomes import record_outcome
from tests.storage.stored import T0, store


def _job(sessions, study: str, pipeline: str, *, succeed: bool) -> int:
    with sessions.begin() as s:
        queue.enqueue(
            s,
            pipeline=pipeline,
            level="study",
            study_instance_uid=study,
            series_instance_uid=None,
            completion_event=1,
            priority=100,
            max_attempts=1,
            now=T0,
        )
        job = queue.claim_next(s, worker="w", lease_s=60, now=T0)
        assert job is not None
        if succeed:
            queue.mark_succeeded(s, job_id=job.id, worker="w", now=T0)
        return job.id


def _outcome(sessions, job_id: int, study: str, result: dict[str, object]) -> None:
    with sessions.begin() as s:
        record_outcome(
            s,
            job_id=job_id,
            pipeline="ct",
            study_instance_uid=study,
            series_instance_uid=f"{study}.1",
            model_name="lesion-class",
            model_version="1",
            model_sha256="0" * 64,
            task="classification",
            result=result,
            now=T0,
        )


def test_filters_select_by_uid_date_modality_and_outcome(sessions) -> None:
    for study, day in (("1.1", "20250101"), ("1.2", "20250601"), ("1.3", "20251201")):
        store(sessions, f"{study}.1.1", study=study, series=f"{study}.1", study_date=day)
    ok = _job(sessions, "1.1", "ct", succeed=True)
    _job(sessions, "1.2", "ecg", succeed=True)
    declined = _job(sessions, "1.3", "ct", succeed=True)
    finding = {"label": "malignant", "probability": 0.8}
    _outcome(sessions, ok, "1.1", {"findings": [finding, {"label": "normal", "probability": 0.1}]})
    _outcome(sessions, declined, "1.3", {"declined": "outside the validated input: x"})

    def pick(**f: object) -> list[str]:
        with sessions.begin() as s:
            return select_studies(s, StudyFilter(**f))  # type: ignore[arg-type]

    assert pick() == ["1.1", "1.2", "1.3"]
    assert pick(study_instance_uids=("1.3", "1.1")) == ["1.1", "1.3"]
    assert pick(date_from="20250301", date_to="20251130") == ["1.2"]
    assert pick(modality="CT") == ["1.1", "1.2", "1.3"] and pick(modality="MR") == []
    assert pick(pipeline="ct") == ["1.1", "1.3"]
    assert pick(pipeline="ct", outcome="declined") == ["1.3"]
    assert pick(outcome="succeeded", pipeline="ecg") == ["1.2"]
    with pytest.raises(ValueError, match="outcome must be one of"):
        pick(outcome="won")
    with sessions.begin() as s:
        assert silver_labels(s, ["1.1", "1.3"], "lesion-class") == {"1.1.1": "malignant"}
        assert json.dumps(silver_labels(s, ["1.1"], "other")) == "{}"
