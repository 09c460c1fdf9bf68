"""``ainode status`` lists the node's processes and flags one not seen for three heartbeats."""

from __future__ import annotations

from datetime import timedelta

from core.clock import utc_now
from node.report import status_report
from storage import workers


def test_a_process_not_seen_for_three_heartbeats_is_flagged(sessions) -> None:
    now = utc_now()
    with sessions.begin() as s:
        for name, role, ago in (("gpu1:10", "worker", 2), ("gpu2:11", "worker", 40)):
            workers.register_worker(
                s, name=name, device="cuda:0", models="m 1", now=now - timedelta(seconds=ago),
                role=role, host=name.split(":")[0], pid=int(name.split(":")[1]),
                version="0.1.0", pipelines="ct-lesions",
            )  # fmt: skip
        workers.register_worker(s, name="gone:12", device="cpu", models="", now=now)
        workers.stop_worker(s, name="gone:12", now=now)
    report = status_report(sessions, stale_after_s=15)
    assert "processes:             2 running" in report
    fresh = next(line for line in report.splitlines() if "gpu1:10" in line)
    stale = next(line for line in report.splitlines() if "gpu2:11" in line)
    assert "NOT SEEN" not in fresh and "on cuda:0: ct-lesions" in fresh
    assert "NOT SEEN for 40 s" in stale
    assert "gone:12" not in report  # stopped cleanly: not running, not flagged
