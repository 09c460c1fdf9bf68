"""``ainode status``: what the node holds, in a few lines for an admin."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from storage import queue
from storage.index import study_counts

__all__ = ["status_report"]


def status_report(sessions: sessionmaker[Session]) -> str:
    with sessions.begin() as session:
        counts = study_counts(session)
        jobs = queue.counts_by_status(session)
        dead = queue.list_jobs(session, status="dead", limit=5)
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
    return "\n".join(lines)
