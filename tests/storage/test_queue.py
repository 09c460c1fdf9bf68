from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.retry import RetryPolicy
from dicomio.errors import InconsistentSeries
from storage import queue

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=3, wait_s=10, backoff=2, max_wait_s=1000)


def _enqueue(
    session: Session,
    study: str = "1.2.3",
    *,
    pipeline: str = "p",
    priority: int = 100,
    event: int = 1,
    now: datetime = T0,
) -> queue.EnqueueResult:
    return queue.enqueue(
        session,
        pipeline=pipeline,
        level="study",
        study_instance_uid=study,
        series_instance_uid=None,
        completion_event=event,
        priority=priority,
        max_attempts=POLICY.max_attempts,
        now=now,
    )


def _claim(sessions: sessionmaker[Session], worker: str, now: datetime = T0, lease_s: float = 60):
    with sessions.begin() as s:
        return queue.claim_next(s, worker=worker, lease_s=lease_s, now=now, policy=POLICY)


def test_enqueue_is_unique_per_study_and_pipeline_while_waiting(sessions) -> None:
    with sessions.begin() as s:
        first = _enqueue(s)
        again = _enqueue(s, event=2)
        other_pipeline = _enqueue(s, pipeline="q")
    assert not first.merged
    assert again.merged and again.job.id == first.job.id and again.job.completion_event == 2
    assert other_pipeline.job.id != first.job.id
    with sessions.begin() as s:
        assert queue.counts_by_status(s)["todo"] == 2


def test_event_after_job_started_queues_a_new_job(sessions) -> None:
    with sessions.begin() as s:
        first = _enqueue(s).job
    assert _claim(sessions, "w1").id == first.id
    with sessions.begin() as s:
        second = _enqueue(s, event=2)
    assert not second.merged and second.job.id != first.id


def test_claim_order_priority_then_age(sessions) -> None:
    with sessions.begin() as s:
        routine = _enqueue(s, "1.1", priority=100).job
        stat = _enqueue(s, "1.2", priority=10, now=T0 + timedelta(seconds=5)).job
    now = T0 + timedelta(seconds=10)
    assert _claim(sessions, "w", now).id == stat.id
    assert _claim(sessions, "w", now).id == routine.id
    assert _claim(sessions, "w", now) is None


def test_two_claimers_never_get_the_same_job(sessions) -> None:
    with sessions.begin() as s:
        for i in range(40):
            _enqueue(s, f"1.2.{i}")
    claimed: dict[str, list[int]] = {"a": [], "b": [], "c": [], "d": []}
    barrier = threading.Barrier(len(claimed))

    def worker(name: str) -> None:
        barrier.wait()
        while (job := _claim(sessions, name)) is not None:
            claimed[name].append(job.id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    all_ids = [i for ids in claimed.values() for i in ids]
    assert len(all_ids) == 40
    assert len(set(all_ids)) == 40


def test_expired_lease_is_reclaimed_and_the_old_worker_loses_it(sessions) -> None:
    with sessions.begin() as s:
        job = _enqueue(s).job
    assert _claim(sessions, "dead-worker", lease_s=30).id == job.id
    assert _claim(sessions, "w2", T0 + timedelta(seconds=29)) is None
    with sessions.begin() as s:
        assert queue.heartbeat(
            s, job_id=job.id, worker="dead-worker", lease_s=30, now=T0 + timedelta(seconds=20)
        )
    # Heartbeat moved the expiry to T0+50 s.
    assert _claim(sessions, "w2", T0 + timedelta(seconds=45)) is None
    later = T0 + timedelta(seconds=51)
    reclaimed = _claim(sessions, "w2", later)
    assert reclaimed is not None and reclaimed.id == job.id
    assert reclaimed.attempts == 2 and reclaimed.lease_owner == "w2"
    with sessions.begin() as s:
        assert not queue.heartbeat(s, job_id=job.id, worker="dead-worker", lease_s=30, now=later)
        assert not queue.mark_succeeded(s, job_id=job.id, worker="dead-worker", now=later)
        assert queue.mark_succeeded(s, job_id=job.id, worker="w2", now=later)
        assert queue.get_job(s, job.id).status == "succeeded"


def test_retries_follow_the_policy_then_dead_letter(sessions) -> None:
    with sessions.begin() as s:
        job = _enqueue(s).job
    now = T0
    waits = []
    for attempt in (1, 2, 3):
        claimed = _claim(sessions, "w", now)
        assert claimed is not None and claimed.attempts == attempt
        with sessions.begin() as s:
            failed = queue.mark_failed(
                s, job_id=job.id, worker="w", error=RuntimeError("boom"), policy=POLICY, now=now
            )
        if attempt < 3:
            assert failed.status == "todo"
            waits.append((failed.scheduled_at - now).total_seconds())
            assert _claim(sessions, "w", failed.scheduled_at - timedelta(seconds=1)) is None
            now = failed.scheduled_at
    assert waits == [10, 20]
    assert failed.status == "dead"
    assert failed.last_error == "gave up after 3 attempts: RuntimeError: boom"
    assert _claim(sessions, "w", now + timedelta(days=1)) is None


def test_permanent_error_dead_letters_at_once(sessions) -> None:
    with sessions.begin() as s:
        job = _enqueue(s).job
    _claim(sessions, "w")
    with sessions.begin() as s:
        failed = queue.mark_failed(
            s,
            job_id=job.id,
            worker="w",
            error=InconsistentSeries("bad series"),
            policy=POLICY,
            now=T0,
        )
    assert failed.status == "dead" and failed.last_error == "permanent error: bad series"


def test_lease_expiry_counts_as_an_attempt(sessions) -> None:
    """A job that kills its worker every time ends dead, not in an endless loop."""
    with sessions.begin() as s:
        job = _enqueue(s).job
    now = T0
    for _ in range(3):
        assert _claim(sessions, "crashy", now, lease_s=10) is not None
        now += timedelta(seconds=11)
    with sessions.begin() as s:
        expired = queue.requeue_expired(s, now=now, policy=POLICY)
    assert [j.id for j in expired] == [job.id]
    assert expired[0].status == "dead"
    assert "lease expired: worker crashy stopped heartbeating" in expired[0].last_error


def _dead_job(sessions) -> int:
    with sessions.begin() as s:
        job = _enqueue(s).job
    _claim(sessions, "w")
    with sessions.begin() as s:
        queue.mark_failed(
            s, job_id=job.id, worker="w", error=InconsistentSeries("x"), policy=POLICY, now=T0
        )
    return job.id


def test_replay_dead_job(sessions) -> None:
    job_id = _dead_job(sessions)
    with sessions.begin() as s:
        replayed = queue.replay(s, job_id=job_id, now=T0)
    assert replayed.status == "todo" and replayed.attempts == 0 and replayed.id == job_id
    with sessions.begin() as s, pytest.raises(ValueError, match="only dead or succeeded"):
        queue.replay(s, job_id=job_id, now=T0)
    with sessions.begin() as s, pytest.raises(LookupError, match="no job with id 999"):
        queue.replay(s, job_id=999, now=T0)


def test_replay_refused_while_a_job_for_the_same_study_waits(sessions) -> None:
    job_id = _dead_job(sessions)
    with sessions.begin() as s:
        waiting = _enqueue(s, event=2).job
    with sessions.begin() as s, pytest.raises(ValueError, match=f"job {waiting.id} .* waiting"):
        queue.replay(s, job_id=job_id, now=T0)
