"""``ainode status``: what the node holds, in a few lines for an admin."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from core.clock import utc_now
from storage import deliveries, prefetches, queue, workers
from storage.lookup import study_counts
from storage.outcomes import declined_outcomes

__all__ = ["status_report"]


def status_report(sessions: sessionmaker[Session], *, stale_after_s: float = 15.0) -> str:
    """``stale_after_s``: a process not seen for this long (3 heartbeats) is flagged."""
    now = utc_now()
    with sessions.begin() as session:
        roster = [w for w in workers.list_workers(session) if w.stopped_at is None]
        counts = study_counts(session)
        jobs = queue.counts_by_status(session)
        dead = queue.list_jobs(session, status="dead", limit=5)
        sent = deliveries.delivery_counts(session)
        pending = deliveries.list_deliveries(session, status="pending", limit=5)
        failed = deliveries.list_deliveries(session, status="dead", limit=5)
        awaiting = deliveries.list_deliveries(session, status="sent", limit=5)
        fetched = prefetches.prefetch_counts(session)
        fetch_failed = prefetches.failed_prefetches(session, limit=5)
        n_declined, declined = declined_outcomes(session, limit=5)
    lines = [
        f"studies received:      {counts['studies']}",
        f"  pending completion:  {counts['studies_receiving']}",
        f"series:                {counts['series']}",
        f"instances:             {counts['instances']}",
        "jobs:                  " + "  ".join(f"{status} {n}" for status, n in jobs.items()),
    ]
    for job in dead:
        lines.append(
            f"  dead job {job.id} ({job.pipeline}, {job.study_instance_uid}): {job.last_error}"
        )
    lines.append(f"processes:             {len(roster)} running")
    for w in roster:
        ago = (now - w.last_seen_at).total_seconds()
        flag = f"  NOT SEEN for {ago:.0f} s" if ago > stale_after_s else ""
        lines.append(
            f"  {w.role:6} {w.name} {w.version} on {w.device}: {w.pipelines or '-'}, "
            f"last seen {ago:.0f} s ago{flag}"
        )
    lines.append(f"series not analysed:   {n_declined} (outside a model's validated input)")
    for o in declined:
        lines.append(f"  job {o.job_id}, series {o.series_instance_uid}: {o.result['declined']}")
    if fetched:
        lines.append(
            "prefetches:            "
            + "  ".join(f"{state} {n}" for state, n in sorted(fetched.items()))
        )
    for p in fetch_failed:
        lines.append(f"  failed prefetch for study {p.study_instance_uid}: {p.last_error}")
    lines.append(
        "deliveries:            "
        + ("  ".join(f"{status} {n}" for status, n in sorted(sent.items())) or "none")
    )
    for d in pending:
        lines.append(
            f"  pending delivery {d.id}: {d.result.kind} to {d.destination}, "
            f"attempts {d.attempts}/{d.max_attempts}, next {d.next_attempt_at:%Y-%m-%d %H:%M:%S}"
            + (f": {d.last_error}" if d.last_error else "")
        )
    for d in awaiting:
        lines.append(
            f"  sent delivery {d.id}: {d.result.kind} to {d.destination}, storage commitment "
            f"awaited since {d.updated_at:%Y-%m-%d %H:%M:%S} (transaction {d.transaction_uid})"
        )
    for d in failed:
        lines.append(
            f"  failed delivery {d.id}: {d.result.kind} {d.result.sop_instance_uid} "
            f"to {d.destination}: {d.last_error}"
        )
    return "\n".join(lines)
