"""Study states as the dashboard shows them."""

from __future__ import annotations

from datetime import timedelta

from storage import outcomes, overview, queue
from storage.completion import PipelineTarget, complete_due
from tests.storage.stored import T0, store


def _complete(sessions, pipelines: list[str]) -> None:
    with sessions.begin() as s:
        complete_due(
            s,
            level="study",
            quiet_s=1,
            now=T0 + timedelta(minutes=1),
            pipelines=[PipelineTarget(name=p, priority=1, max_attempts=1) for p in pipelines],
        )


def _finish(sessions, pipeline: str, result: dict, task: str) -> None:
    now = T0 + timedelta(minutes=2)
    with sessions.begin() as s:
        job = queue.claim_next(s, worker="w", lease_s=60, now=now, pipelines=[pipeline])
        assert job is not None
        queue.mark_succeeded(s, job_id=job.id, worker="w", now=now)
        outcomes.record_outcome(
            s, job_id=job.id, pipeline=pipeline, study_instance_uid=job.study_instance_uid,
            series_instance_uid=None, model_name="m", model_version="1", model_sha256="0" * 64,
            task=task, result=result, now=now,
        )  # fmt: skip


def test_states_from_receiving_to_analysed(sessions) -> None:
    store(sessions, "1.1.1.1")
    with sessions.begin() as s:
        assert [x.state for x in overview.study_states(s)] == ["receiving"]
    _complete(sessions, ["ct", "ecg"])
    with sessions.begin() as s:
        assert [x.state for x in overview.study_states(s)] == ["queued"]
    _finish(sessions, "ecg", {"skipped": "no series matches the pipeline's rules"}, "none")
    _finish(sessions, "ct", {"findings": []}, "segmentation")
    with sessions.begin() as s:
        (state,) = overview.study_states(s)
    assert state.state == "analysed"  # one pipeline skipped it, the other analysed it


def test_a_study_only_skipped_says_why(sessions) -> None:
    store(sessions, "1.1.1.1")
    _complete(sessions, ["ecg"])
    _finish(sessions, "ecg", {"skipped": "no series matches the pipeline's rules"}, "none")
    with sessions.begin() as s:
        (state,) = overview.study_states(s)
    assert (state.state, state.detail) == ("skipped", "no series matches the pipeline's rules")
