"""The dashboard in a real headless Chromium, /metrics through prometheus_client's parser,
/healthz, and the admin actions with and without the token.

Studies flow meanwhile: dcmtk sends a CT; one pipeline's model succeeds, the
other's raises on real data (a dead job with its reason).
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.audit import parse_frame
from storage import queue
from storage.db import create_sqlite_engine, make_sessionmaker
from tests.dicomgen import write_ct_series
from tests.packages import failing_segmenter, threshold_segmenter
from tests.peers import chromium, free_port, storescu

pytestmark = [pytest.mark.network, pytest.mark.tools("chromium")]


class _Text(HTMLParser):
    """The visible text of each element with an id (what a person reads there)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self._stack: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("meta", "input", "br", "link"):
            return
        self._stack.append(dict(attrs).get("id"))

    def handle_endtag(self, tag: str) -> None:
        if self._stack:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        for element in self._stack:
            if element:
                self.by_id[element] = self.by_id.get(element, "") + data + " "


def _read(dom: str) -> dict[str, str]:
    parser = _Text()
    parser.feed(dom)
    return {k: " ".join(v.split()) for k, v in parser.by_id.items()}


def _http(url: str, data: dict[str, str] | None = None, headers: dict[str, str] | None = None):
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _jobs(cfg) -> list:
    engine = create_sqlite_engine(cfg.storage.database_path)
    try:
        with make_sessionmaker(engine).begin() as s:
            return queue.list_jobs(s)
    finally:
        engine.dispose()


def test_dashboard_metrics_health_and_admin(node_factory, tmp_path: Path) -> None:
    token = tmp_path / "admin.token"
    token.write_text("s3cret-token\n")
    good, bad = threshold_segmenter(tmp_path / "good"), failing_segmenter(tmp_path / "bad")
    web_port = free_port()
    pipelines = (
        f"\n[[pipelines]]\nname = 'lesions'\nmodels = ['{good}']\n"
        f"[[pipelines]]\nname = 'broken'\nmodels = ['{bad}']\n"
    )
    node, cfg = node_factory(
        pipelines=pipelines,
        node={"listener_processes": 2},
        inference={"workers": 1, "poll_interval_s": 0.1},
        queue={"max_attempts": 1},
        web={"port": web_port, "admin_token_file": str(token)},
    )
    base = f"http://127.0.0.1:{web_port}"
    files = write_ct_series(tmp_path / "ct", count=20)  # bright enough for the broken model
    assert storescu(cfg.node.port, files).returncode == 0
    deadline = time.monotonic() + 120
    while sorted(j.status for j in _jobs(cfg)) != ["dead", "succeeded"]:
        assert time.monotonic() < deadline, _jobs(cfg)
        time.sleep(0.2)
    dead = next(j for j in _jobs(cfg) if j.status == "dead")

    home = _read(chromium(f"{base}/", tmp_path / "chromium"))
    assert home["received-hour"] == str(len(files))
    assert home["dead-jobs"] == "1" and home["queued"] == "0"
    assert "worker-1" not in home["workers"] and "cpu" in home["workers"]  # registered by name
    assert "threshold-lesions" in home["models"] and "fails-on-bright" in home["models"]
    assert re.search(r"listener-1 \d+ running", home["processes"])

    studies = _read(chromium(f"{base}/studies", tmp_path / "chromium"))
    assert (
        "failed" in studies["studies"]
        and "input too bright for this test model" in (studies["studies"])
    )
    job = _read(chromium(f"{base}/jobs/{dead.id}", tmp_path / "chromium"))
    assert job["status"] == "dead" and "input too bright for this test model" in job["error"]

    status, text = _http(f"{base}/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("ainode_instances_received_total", ())] == len(files)
    assert samples[("ainode_cstore_responses_total", (("status", "0x0000"),))] == len(files)
    assert samples[("ainode_jobs", (("state", "dead"),))] == 1
    assert samples[("ainode_jobs_finished_total", (("outcome", "succeeded"),))] == 1
    assert samples[("ainode_job_stage_seconds_count", (("stage", "forward"),))] >= 1
    assert samples[("ainode_disk_free_bytes", ())] > 0

    status, text = _http(f"{base}/healthz")
    assert status == 200 and json.loads(text) == {"database": "ok", "listener": "ok"}

    retry = f"{base}/admin/jobs/{dead.id}/retry"
    assert _http(retry, {})[0] == 401
    assert _http(retry, {"token": "wrong"})[0] == 401
    assert _http(retry, {"token": "s3cret-token"}, {"Origin": "http://evil.example"})[0] == 403
    assert next(j for j in _jobs(cfg) if j.id == dead.id).status == "dead"  # nothing happened
    status, text = _http(retry, {"token": "s3cret-token"})
    assert status == 200 and f"job {dead.id} (broken) queued again" in text
    assert node.terminate() == 0
    assert cfg.audit is not None
    restricted = [
        parse_frame(f)[2] for f in cfg.audit.file.read_text().splitlines() if "110132" in f
    ]
    assert len(restricted) == 1
    users = [p.get("UserID") for p in restricted[0].iter("ActiveParticipant")]
    assert "web:127.0.0.1" in users


def test_admin_actions_are_off_without_a_token_file(node_factory, tmp_path: Path) -> None:
    web_port = free_port()
    node, _cfg = node_factory(web={"port": web_port})
    status, text = _http(f"http://127.0.0.1:{web_port}/admin/jobs/1/retry", {"token": "x"})
    assert status == 403 and "admin actions are disabled" in text
    assert node.terminate() == 0
