"""``ainode worker``: claim jobs, run their pipeline, store the outcome, release.

Models are loaded once when the worker starts and stay warm. While a job runs,
a heartbeat thread extends its lease; if the lease is lost (the worker stalled
past ``lease_s``), the result is discarded and the job belongs to whoever
reclaimed it. The job runner is one of the broad-``except`` edges: any error
goes to the queue, whose retry policy (``[queue]``, as data) decides: a retry,
or — for a :class:`core.errors.PermanentError` or the last attempt — a dead
job with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core import metrics
from core.clock import utc_now
from core.config import NodeConfig, PipelineConfig
from core.version import VERSION
from dicomio.records import Outcome
from dicomio.results.compose import encode_run
from dicomio.results.warm import warm_up
from dicomio.results.write import ResultWriter, WrittenResult
from inference.execute import pick_device
from inference.package import LoadedModel
from inference.pipeline import PipelineRun, run_pipeline
from inference.trial import load_and_try
from storage import queue, workers
from storage.deliveries import record_result
from storage.dialect import JobWaiter
from storage.lookup import patient_history, study_series
from storage.outcomes import record_outcome
from storage.prefetches import prefetch_of
from storage.records import JobRecord
from storage.spool import Spool

__all__ = ["Worker", "outcome_json"]

logger = logging.getLogger(__name__)

# Prior studies looked up per job for progression models (newest first); each
# model then uses up to its package's max_priors of those with a usable series.
_PRIOR_STUDIES = 10
# How often a job waiting for its study's priors looks again.
_PRIORS_POLL_S = 1.0
# Results are queued, so sent, in this order: the report and the segmentation reach
# the PACS before the heat map, the largest object by far.
_SEND_ORDER = {"SR": 0, "SEG": 1, "PM": 2}


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    """The outcome as plain JSON data (tuples become lists)."""
    data = dataclasses.asdict(outcome)
    for identity in ("model_name", "model_version", "model_sha256"):  # stored as columns
        del data[identity]
    return data


class _Heartbeat:
    """Extends a job's lease every ``interval_s`` until stopped; notes a lost lease."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job: JobRecord,
        worker: str,
        lease_s: float,
        interval_s: float,
    ) -> None:
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._args = (sessions, job.id, worker, lease_s, interval_s)
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job.id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        sessions, job_id, worker, lease_s, interval_s = self._args
        while not self._stop.wait(interval_s):
            try:
                with sessions.begin() as s:
                    now = utc_now()
                    alive = queue.heartbeat(
                        s, job_id=job_id, worker=worker, lease_s=lease_s, now=now
                    )
                    workers.touch_worker(s, name=worker, job_id=job_id, now=now)
            except Exception:
                logger.exception("heartbeat of job %d failed; trying again", job_id)
                continue
            if not alive:
                logger.error("job %d: lease lost; its result will be discarded", job_id)
                self.lost.set()
                return


class Worker:
    """One worker: its models, loaded once, and the loop that runs jobs."""

    def __init__(
        self, cfg: NodeConfig, sessions: sessionmaker[Session], name: str | None = None
    ) -> None:
        self.cfg = cfg
        self.sessions = sessions
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.device = pick_device(cfg.inference.device)
        self.spool = Spool(cfg.storage.data_dir)
        self.current: JobRecord | None = None  # the job being run, for abandon()
        # Jobs of a pipeline without models stay queued until models are configured.
        self.pipelines = {p.name: p for p in cfg.pipelines if p.models}
        cache: dict[str, LoadedModel] = {}
        self.models: dict[str, list[LoadedModel]] = {}
        for p in self.pipelines.values():
            for folder in p.models:
                if str(folder) not in cache:
                    cache[str(folder)] = load_and_try(folder, self.device)
            self.models[p.name] = [cache[str(f)] for f in p.models]
        loaded = ", ".join(f"{m.spec.name} {m.spec.version}" for m in cache.values())
        # The result encoders' tables, read now rather than by the first job (~0.4 s).
        warmed = warm_up() if self.pipelines else 0.0
        with self.sessions.begin() as s:
            workers.register_worker(
                s,
                name=self.name,
                device=str(self.device),
                models=loaded,
                now=utc_now(),
                role="worker",
                host=socket.gethostname(),
                pid=os.getpid(),
                version=VERSION,
                pipelines=", ".join(self.pipelines),
            )
        self._seen_at = 0.0
        logger.info(
            "worker %s on %s: %d model(s) loaded for %d pipeline(s); encoders warmed in %.2f s",
            self.name,
            self.device,
            len(cache),
            len(self.pipelines),
            warmed,
        )

    def run(self, stop: threading.Event) -> None:
        """Claim and run jobs until ``stop`` is set.

        Idle, it waits for the next poll — or, on PostgreSQL, until a job is
        queued anywhere (LISTEN/NOTIFY, :class:`storage.dialect.JobWaiter`).
        """
        engine = self.sessions.kw["bind"]
        waiter = JobWaiter(engine)
        try:
            while not stop.is_set():
                self._alive()
                if not self.run_once():
                    waiter.wait(self.cfg.inference.poll_interval_s, stop)
        finally:
            waiter.close()
        with self.sessions.begin() as s:
            workers.stop_worker(s, name=self.name, now=utc_now())

    def _alive(self) -> None:
        """Tell the registry this worker is alive (at most every 5 s)."""
        if time.monotonic() - self._seen_at < 5:
            return
        with self.sessions.begin() as s:
            workers.touch_worker(s, name=self.name, job_id=None, now=utc_now())
        self._seen_at = time.monotonic()

    def run_once(self) -> bool:
        """Claim one due job and run it; False when there was none."""
        if not self.pipelines:
            return False
        with self.sessions.begin() as s:
            job = queue.claim_next(
                s,
                worker=self.name,
                lease_s=self.cfg.queue.lease_s,
                now=utc_now(),
                pipelines=list(self.pipelines),
                policy=self.cfg.queue.retry,
            )
        if job is None:
            return False
        logger.info(
            "job %d (%s) for study %s: attempt %d of %d",
            job.id,
            job.pipeline,
            job.study_instance_uid,
            job.attempts,
            job.max_attempts,
        )
        self.current = job
        try:
            if self._waiting_for_priors(job):
                return True
            self._run_job(job)
        finally:
            self.current = None
        return True

    def abandon(self) -> None:
        """Give the running job back to the queue (the process is about to exit)."""
        job = self.current
        if job is None:
            return
        with self.sessions.begin() as s:
            released = queue.release(s, job_id=job.id, worker=self.name, now=utc_now())
        if released:
            logger.warning("job %d released: this worker is stopping before it finished", job.id)

    def _waiting_for_priors(self, job: JobRecord) -> bool:
        """The study's prefetch of priors still runs: the job waits (no attempt counted)."""
        if not self.pipelines[job.pipeline].priors_from:
            return False
        with self.sessions.begin() as s:
            prefetch = prefetch_of(s, job.study_instance_uid)
            if prefetch is None or not prefetch.open:
                return False
            until = utc_now() + timedelta(seconds=_PRIORS_POLL_S)
            queue.defer(
                s,
                job_id=job.id,
                worker=self.name,
                until=until,
                reason=f"waiting for the priors of study {job.study_instance_uid} "
                f"({prefetch.state}, attempt {prefetch.attempts + 1})",
                now=utc_now(),
            )
        logger.info("job %d waits for its study's priors to be retrieved", job.id)
        return True

    def _run_job(self, job: JobRecord) -> None:
        pipeline = self.pipelines[job.pipeline]
        started_at = utc_now()
        with _Heartbeat(
            self.sessions, job, self.name, self.cfg.queue.lease_s, self.cfg.inference.heartbeat_s
        ) as beat:
            try:
                run = self._execute(job, pipeline)
                # Each object is written while the next is encoded (the heat map
                # first, the report that cites it last).
                with ResultWriter(self.spool) as writer:
                    encode_run(
                        run.results,
                        pipeline,
                        self.cfg.results,
                        started_at=started_at,
                        ready=writer.submit,
                    )
                    written = writer.finish()
            except Exception as exc:
                if self.cfg.queue.retry.retryable(exc):
                    logger.exception("job %d failed", job.id)
                self._fail(job, exc)
                return
        if beat.lost.is_set():
            self._discard(written)
            return
        self._succeed(job, pipeline, run, written)

    def _discard(self, written: Sequence[WrittenResult]) -> None:
        """Result files of a job whose lease was lost: no row will ever point to them."""
        for w in written:
            self.spool.remove(w.path)

    def _execute(self, job: JobRecord, pipeline: PipelineConfig) -> PipelineRun:
        models = self.models[pipeline.name]
        history = None
        with self.sessions.begin() as s:
            series = study_series(s, job.study_instance_uid)
            if any(m.spec.task == "progression" for m in models):
                history = patient_history(s, job.study_instance_uid, limit=_PRIOR_STUDIES)
                prefetch = prefetch_of(s, job.study_instance_uid) if pipeline.priors_from else None
                if prefetch is not None and prefetch.last_error and not history.priors:
                    history = dataclasses.replace(
                        history,
                        reason=f"{history.reason}; priors not retrieved from "
                        f"{', '.join(pipeline.priors_from)}: {prefetch.last_error}",
                    )
        if job.series_instance_uid is not None:
            series = [x for x in series if x.series_instance_uid == job.series_instance_uid]
        return run_pipeline(
            series,
            pipeline.match,
            models,
            batch_size=self.cfg.inference.batch_size,
            amp=self.cfg.inference.amp,
            history=history,
            check_domain=pipeline.domain_check,
            fleischner=pipeline.fleischner,
        )

    def _succeed(
        self,
        job: JobRecord,
        pipeline: PipelineConfig,
        run: PipelineRun,
        written: Sequence[WrittenResult],
    ) -> None:
        now = utc_now()
        destinations = () if pipeline.shadow else pipeline.destinations
        with self.sessions.begin() as s:
            if not queue.mark_succeeded(s, job_id=job.id, worker=self.name, now=now):
                logger.error("job %d: lease lost before completion; result discarded", job.id)
                s.rollback()
                self._discard(written)
                return
            rows: Sequence[tuple[str, str, str, str, str | None, dict[str, Any]]]
            if run.skipped_reason:
                rows = [("", "", "", "none", None, {"skipped": run.skipped_reason})]
            else:
                rows = [
                    (
                        o.model_name,
                        o.model_version,
                        o.model_sha256,
                        o.task,
                        o.series_instance_uid,
                        outcome_json(o),
                    )
                    for o in run.outcomes
                ]
            for name, version, sha, task, series_uid, result in rows:
                record_outcome(
                    s,
                    job_id=job.id,
                    pipeline=pipeline.name,
                    study_instance_uid=job.study_instance_uid,
                    series_instance_uid=series_uid,
                    model_name=name,
                    model_version=version,
                    model_sha256=sha,
                    task=task,
                    result=result,
                    now=now,
                )
            for w in sorted(written, key=lambda w: _SEND_ORDER.get(w.kind, len(_SEND_ORDER))):
                record_result(
                    s,
                    job_id=job.id,
                    pipeline=pipeline.name,
                    kind=w.kind,
                    study_instance_uid=w.study_instance_uid,
                    series_instance_uid=w.series_instance_uid,
                    source_series_instance_uid=w.source_series_instance_uid,
                    sop_class_uid=w.sop_class_uid,
                    sop_instance_uid=w.sop_instance_uid,
                    path=str(w.path),
                    size_bytes=w.size_bytes,
                    destinations=[
                        d
                        for d in destinations
                        if w.kind != "PM" or self.cfg.destination(d).heat_map != "off"
                    ],
                    max_attempts=self.cfg.delivery.max_attempts,
                    now=now,
                )
        metrics.job_finished("succeeded")
        for o in run.outcomes:
            for stage, seconds in o.timings_s.items():
                metrics.stage_seconds(stage, seconds)
        if written:
            logger.info(
                "job %d: wrote %s; deliveries to %s",
                job.id,
                ", ".join(f"{w.kind} {w.sop_instance_uid}" for w in written),
                ", ".join(destinations) or "none configured",
            )
        if run.skipped_reason:
            logger.info("job %d: %s", job.id, run.skipped_reason)
        for o in run.outcomes:
            if o.not_run or o.declined:
                logger.info(
                    "job %d: %s %s series %s: %s",
                    job.id,
                    o.model_name,
                    "not run on" if o.not_run else "did not analyse",
                    o.series_instance_uid,
                    o.not_run or o.declined,
                )
                continue
            logger.info(
                "job %d: %s %s on series %s: %d lesion(s), %d prior(s), findings %s, %s",
                job.id,
                o.model_name,
                o.model_version,
                o.series_instance_uid,
                len(o.lesions),
                len(o.extra.get("priors", [])),
                ", ".join(f"{f.label}={f.probability:.2f}" for f in o.findings) or "-",
                " ".join(f"{k}={v:.2f}s" for k, v in o.timings_s.items()),
            )

    def _fail(self, job: JobRecord, error: Exception) -> None:
        with self.sessions.begin() as s:
            updated = queue.mark_failed(
                s,
                job_id=job.id,
                worker=self.name,
                error=error,
                policy=self.cfg.queue.retry,
                now=utc_now(),
            )
        metrics.job_finished(
            "dead" if updated is not None and updated.status == "dead" else "retry"
        )
        if updated is None:
            logger.error("job %d failed after its lease was lost: %s", job.id, error)
        elif updated.status == "dead":
            logger.error("job %d dead: %s", job.id, updated.last_error)
        else:
            logger.warning(
                "job %d will retry at %s: %s", job.id, updated.scheduled_at.isoformat(), error
            )
