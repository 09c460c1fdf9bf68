from __future__ import annotations

from datetime import datetime, timedelta

from storage import queue
from storage.completion import PipelineTarget, complete_due
from tests.storage.stored import T0, store

PIPELINES = [PipelineTarget(name="default", priority=100, max_attempts=3)]


def _complete(sessions, now: datetime, level: str = "study"):
    with sessions.begin() as s:
        return complete_due(s, level=level, quiet_s=20, now=now, pipelines=PIPELINES)


def test_study_completes_after_the_quiet_period_once(sessions) -> None:
    store(sessions, "1.1.1.1", at=T0)
    store(sessions, "1.1.1.2", at=T0 + timedelta(seconds=10))
    assert _complete(sessions, T0 + timedelta(seconds=29)) == []
    done = _complete(sessions, T0 + timedelta(seconds=30))
    assert len(done) == 1
    event, jobs = done[0]
    assert event.study_instance_uid == "1.1" and event.instance_count == 2
    assert event.event_number == 1 and len(jobs) == 1
    assert _complete(sessions, T0 + timedelta(hours=1)) == []
    with sessions.begin() as s:
        assert queue.counts_by_status(s)["todo"] == 1


def test_late_instance_reopens_and_completes_again(sessions) -> None:
    store(sessions, "1.1.1.1", at=T0)
    _complete(sessions, T0 + timedelta(seconds=20))
    with sessions.begin() as s:
        queue.claim_next(s, worker="w", lease_s=60, now=T0 + timedelta(seconds=21))
    late = store(sessions, "1.1.1.9", at=T0 + timedelta(minutes=5))
    assert late.study_reopened
    ((event, jobs),) = _complete(sessions, T0 + timedelta(minutes=6))
    assert event.event_number == 2 and event.instance_count == 2
    assert jobs[0].completion_event == 2
    with sessions.begin() as s:
        assert queue.counts_by_status(s) == {"todo": 1, "doing": 1, "succeeded": 0, "dead": 0}


def test_series_level_completes_each_series(sessions) -> None:
    store(sessions, "1.1.1.1", series="1.1.1", at=T0)
    store(sessions, "1.1.2.1", series="1.1.2", at=T0 + timedelta(seconds=15))
    first = _complete(sessions, T0 + timedelta(seconds=25), level="series")
    assert [e.series_instance_uid for e, _ in first] == ["1.1.1"]
    assert first[0][0].study_instance_uid == "1.1"
    second = _complete(sessions, T0 + timedelta(seconds=40), level="series")
    assert [e.series_instance_uid for e, _ in second] == ["1.1.2"]


def test_a_study_held_in_full_by_its_source_count_completes_at_once(sessions) -> None:
    from storage.prefetches import expect_instances

    first = store(sessions, "1.1.1.1", at=T0)
    assert first.study_created
    with sessions.begin() as s:
        assert expect_instances(s, study_instance_uid="1.1", count=2) == 1
    assert _complete(sessions, T0 + timedelta(seconds=1)) == []  # one of two held
    store(sessions, "1.1.1.2", at=T0 + timedelta(seconds=1))
    ((event, jobs),) = _complete(sessions, T0 + timedelta(seconds=2))  # not 20 s later
    assert event.instance_count == 2 and event.expected_instances == 2 and len(jobs) == 1
    # A study the source did not count still waits the quiet period.
    store(sessions, "2.1.1.1", study="2.1", series="2.1.1", at=T0 + timedelta(seconds=2))
    assert _complete(sessions, T0 + timedelta(seconds=3)) == []


def test_retrieved_priors_complete_without_jobs_until_a_pushed_instance_arrives(
    sessions,
) -> None:
    assert store(sessions, "1.1.1.1", at=T0, retrieved=True).study_created
    ((event, jobs),) = _complete(sessions, T0 + timedelta(seconds=20))
    assert event.retrieved and jobs == []
    store(sessions, "1.1.1.2", at=T0 + timedelta(minutes=1))  # pushed into it
    ((event, jobs),) = _complete(sessions, T0 + timedelta(minutes=2))
    assert not event.retrieved and len(jobs) == 1


def test_series_take_the_source_counts_even_before_they_arrive(sessions) -> None:
    from storage.prefetches import expect_instances

    store(sessions, "1.1.1.1", series="1.1.1", at=T0)
    with sessions.begin() as s:  # the source counted two series; 1.1.2 is not here yet
        expect_instances(s, study_instance_uid="1.1", count=3, per_series={"1.1.1": 1, "1.1.2": 2})
    ((event, _jobs),) = _complete(sessions, T0 + timedelta(seconds=1), level="series")
    assert event.series_instance_uid == "1.1.1" and event.expected_instances == 1
    store(sessions, "1.1.2.1", series="1.1.2", at=T0 + timedelta(seconds=2))
    assert _complete(sessions, T0 + timedelta(seconds=3), level="series") == []
    store(sessions, "1.1.2.2", series="1.1.2", at=T0 + timedelta(seconds=3))
    ((event, _jobs),) = _complete(sessions, T0 + timedelta(seconds=4), level="series")
    assert event.series_instance_uid == "1.1.2" and event.instance_count == 2
