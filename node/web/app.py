"""The dashboard application: pages, admin actions, /metrics, /healthz.

Admin actions (run a job again, send a delivery again, purge a study) need
the token from ``[web] admin_token_file``, sent in the form (or as
``Authorization: Bearer``) with each request: there is no cookie or session,
so a page elsewhere cannot make a browser act for the admin (no CSRF); a
request whose ``Origin`` is another site is refused too. Without the token:
401; without a token file configured: 403. Every action is audited.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from core.clock import utc_now
from core.config import NodeConfig
from inference.errors import ModelPackageError
from inference.spec import read_spec
from node.audit import Auditor
from node.retention import purge_by_admin
from node.web.metrics import exposition
from storage import deliveries, overview, queue, workers
from storage.lookup import study_counts
from storage.outcomes import list_outcomes

__all__ = ["WebContext", "WebServer", "build_app"]

logger = logging.getLogger(__name__)

_TEMPLATES = Path(__file__).parent / "templates"
_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebContext:
    """What the pages read: the config, the database, and serve's own view of its processes."""

    cfg: NodeConfig
    sessions: sessionmaker[Session]
    started_at: datetime
    children: Callable[[], list[dict[str, Any]]]
    listening: Callable[[], bool]


def _ago(when: datetime, now: datetime) -> str:
    seconds = max(0, int((now - when).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _models(cfg: NodeConfig) -> list[dict[str, str]]:
    found = []
    for pipeline in cfg.pipelines:
        for folder in pipeline.models:
            try:
                spec = read_spec(folder)
            except ModelPackageError as exc:
                found.append({"pipeline": pipeline.name, "name": str(folder), "version": "?",
                              "task": "broken", "sha256": str(exc)})  # fmt: skip
                continue
            found.append({"pipeline": pipeline.name, "name": spec.name, "version": spec.version,
                          "task": spec.task, "sha256": spec.sha256})  # fmt: skip
    return found


def build_app(ctx: WebContext) -> Starlette:
    cfg = ctx.cfg
    env = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=select_autoescape(["html"]))
    admin = cfg.web.admin_token_file is not None

    def page(name: str, title: str, refresh: int | None = None, **values: Any) -> HTMLResponse:
        now = utc_now()
        html = env.get_template(f"{name}.html").render(
            ae_title=cfg.node.ae_title, title=title, page=name, refresh=refresh,
            now=now.strftime("%Y-%m-%d %H:%M:%S"), admin=admin, **values,
        )  # fmt: skip
        return HTMLResponse(html)

    async def home(request: Request) -> Response:
        now = utc_now()
        with ctx.sessions.begin() as s:
            last_minute, _ = overview.received_since(s, now - _MINUTE)
            last_hour, _ = overview.received_since(s, now - _HOUR)
            jobs = queue.counts_by_status(s)
            by_status = deliveries.delivery_counts(s)
            counts = study_counts(s)
            oldest = overview.oldest_waiting_job(s)
            registered = workers.list_workers(s)
        free = shutil.disk_usage(cfg.storage.data_dir).free
        reserve = cfg.storage.min_free_mb * 2**20
        rows = [
            {
                **dataclasses.asdict(w),
                "seen": _ago(w.last_seen_at, now),
                "stale": w.stopped_at is None and (now - w.last_seen_at).total_seconds() > 60,
            }
            for w in registered
        ]
        return page(
            "overview", "overview", refresh=5, rate=last_minute / 60, received_hour=last_hour,
            jobs=jobs, deliveries=by_status, counts=counts,
            oldest=_ago(oldest, now) if oldest else "", free_gb=f"{free / 1e9:.1f}",
            reserve_gb=f"{reserve / 1e9:.1f}", disk_low=free < reserve * 1.25,
            children=ctx.children(), workers=rows, models=_models(cfg),
            main_pid=os.getpid(), uptime=_ago(ctx.started_at, now).replace(" ago", ""),
            in_process_listener=cfg.node.listener_processes == 1,
        )  # fmt: skip

    async def studies(request: Request) -> Response:
        with ctx.sessions.begin() as s:
            rows = overview.study_states(s, limit=200)
        return page("studies", "studies", studies=rows)

    async def jobs(request: Request) -> Response:
        with ctx.sessions.begin() as s:
            rows = queue.list_jobs(s, limit=200)
        return page("jobs", "jobs", jobs=rows)

    async def job(request: Request) -> Response:
        job_id = int(request.path_params["job_id"])
        with ctx.sessions.begin() as s:
            record = queue.get_job(s, job_id)
            if record is None:
                return page("message", "job", message=f"no job {job_id}", back="/jobs", bad=True)
            outcomes = list_outcomes(s, job_id=job_id)
            results = deliveries.list_results(s, job_id=job_id)
            sent = deliveries.list_deliveries(s, study_instance_uid=record.study_instance_uid)
        return page(
            "job", f"job {job_id}", job=record, outcomes=outcomes, results=results,
            deliveries=sent,
        )  # fmt: skip

    async def delivery_list(request: Request) -> Response:
        with ctx.sessions.begin() as s:
            rows = deliveries.list_deliveries(s, limit=200)
        return page("deliveries", "deliveries", deliveries=rows)

    async def metrics(request: Request) -> Response:
        body = exposition(ctx.sessions, cfg.storage.data_dir)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def healthz(request: Request) -> Response:
        checks: dict[str, str] = {}
        try:
            with ctx.sessions.begin() as s:
                s.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # an edge: the answer is the report
            checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["listener"] = "ok" if ctx.listening() else "not listening"
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse(checks, status_code=200 if healthy else 503)

    def admin_action(
        action: Callable[[Request, dict[str, str]], Awaitable[tuple[str, str]]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).items()}
            refusal = _refuse(request, form, cfg.web.admin_token_file)
            if refusal is not None:
                status, message = refusal
                logger.warning("admin action %s refused from %s: %s", request.url.path,
                               _client(request), message)  # fmt: skip
                response = page("message", "refused", message=message, back="/", bad=True)
                response.status_code = status
                return response
            label, message = await action(request, form)
            if cfg.audit is not None:
                Auditor(cfg.audit, cfg.node.ae_title).restricted(
                    user=f"web:{_client(request)}", action=label, detail=message
                )
            logger.info("admin action from %s: %s: %s", _client(request), label, message)
            return page("message", label, message=message, back=request.headers.get("referer", "/"))

        return endpoint

    async def retry_job(request: Request, form: dict[str, str]) -> tuple[str, str]:
        job_id = int(request.path_params["job_id"])
        try:
            with ctx.sessions.begin() as s:
                record = queue.replay(s, job_id=job_id, now=utc_now())
        except (LookupError, ValueError) as exc:
            return "replay job", f"not done: {exc}"
        return "replay job", f"job {record.id} ({record.pipeline}) queued again"

    async def retry_delivery(request: Request, form: dict[str, str]) -> tuple[str, str]:
        delivery_id = int(request.path_params["delivery_id"])
        with ctx.sessions.begin() as s:
            done = deliveries.replay_delivery(s, delivery_id=delivery_id, now=utc_now())
        if not done:
            return "replay delivery", f"not done: no undelivered delivery {delivery_id}"
        return "replay delivery", f"delivery {delivery_id} queued again"

    async def purge(request: Request, form: dict[str, str]) -> tuple[str, str]:
        study_uid = request.path_params["study_uid"]
        reason = form.get("reason", "").strip() or "no reason given"
        done = purge_by_admin(
            cfg, ctx.sessions, study_uid, user=f"web:{_client(request)}", reason=reason
        )
        if done is None:
            return "purge study", f"not done: no study {study_uid} (or purged already)"
        return "purge study", (
            f"study {study_uid} purged: {len(done.instance_paths)} instance(s), "
            f"{len(done.result_paths)} result object(s)"
        )

    routes = [
        Route("/", home),
        Route("/studies", studies),
        Route("/jobs", jobs),
        Route("/jobs/{job_id:int}", job),
        Route("/deliveries", delivery_list),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/admin/jobs/{job_id:int}/retry", admin_action(retry_job), methods=["POST"]),
        Route(
            "/admin/deliveries/{delivery_id:int}/retry",
            admin_action(retry_delivery),
            methods=["POST"],
        ),
        Route("/admin/studies/{study_uid}/purge", admin_action(purge), methods=["POST"]),
    ]
    return Starlette(routes=routes)


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _refuse(
    request: Request, form: dict[str, str], token_file: Path | None
) -> tuple[int, str] | None:
    """(HTTP status, why) when an admin request must be refused, else None."""
    if token_file is None:
        return 403, "admin actions are disabled: set [web] admin_token_file"
    origin = request.headers.get("origin")
    if origin and origin.split("://", 1)[-1] != request.headers.get("host", ""):
        return 403, f"refused: the request comes from another site ({origin})"
    given = form.get("token", "")
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        given = header[7:]
    expected = token_file.read_text().strip()
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        return 401, "refused: the admin token is missing or wrong"
    return None


class WebServer:
    """uvicorn in a thread of ``serve``; stopped with :meth:`stop`."""

    def __init__(self, ctx: WebContext) -> None:
        web = ctx.cfg.web
        config = uvicorn.Config(
            build_app(ctx),
            host=web.bind_address,
            port=web.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)

    def start(self, timeout_s: float = 30.0) -> WebServer:
        """Start serving; return once the port is bound (raise OSError if it cannot be)."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                web = self._server.config
                raise OSError(f"the web dashboard cannot listen on {web.host}:{web.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
