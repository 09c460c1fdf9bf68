"""Prefetch: ask the ``[[sources]]`` about each arriving study, while it is still arriving.

At a study's first pushed instance the receive path queues a prefetch
(:func:`new_study_hook`); ``serve`` runs it within a second (:func:`run_prefetches`):

1. **Counts.** A source with ``counts = true`` is asked for the study's series
   (C-FIND, SERIES level, Number of Series Related Instances); their sum is the
   study's expected instance count, which completes it as soon as the node
   holds that many (``storage.completion``), not a quiet period later.
2. **Priors**, when a pipeline names sources in ``priors_from``: the patient's
   studies before this one (C-FIND, STUDY level, by Patient ID), the newest
   ``max_studies_per_patient`` of them; of each, only the series of the
   modalities the pipelines take (C-FIND, SERIES level), and only if the node
   does not hold them in full already; retrieved by C-MOVE to the node's own
   AE title or by C-GET. Retrieved studies are indexed like any other, marked
   retrieved: they queue no jobs of their own.

A source that is down or does not answer in time is a failed attempt, tried
again after ``retry_wait_s``; an error status or malformed identifiers end
the prefetch at once. Either way, after ``max_attempts`` the jobs that waited
for it run without priors, and their outcome says why (``inference.worker``).
The hourly limit ``max_mb_per_hour`` stops a runaway prefetch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from core.clock import utc_now
from core.config import NodeConfig, SourceConfig
from node.audit import Auditor
from node.handlers import retrieved_store_handler
from node.query import (
    FoundSeries,
    SourceRefused,
    SourceUnavailable,
    find_series,
    find_studies,
    retrieve_series,
)
from node.receive import ReceiveDeps
from storage import prefetches
from storage.dialect import only_one
from storage.lookup import held_instances
from storage.prefetches import PrefetchRecord
from storage.records import IndexResult, InstanceHeader

__all__ = ["new_study_hook", "reset_prefetches", "run_prefetches"]

logger = logging.getLogger(__name__)


def new_study_hook(cfg: NodeConfig) -> Callable[[Session, InstanceHeader, datetime], None] | None:
    """What the receive path calls at a study's first pushed instance; None without sources."""
    if not cfg.sources:
        return None
    counting = any(s.counts for s in cfg.sources)
    want_priors = any(p.priors_from for p in cfg.pipelines)
    if not counting and not want_priors:
        return None

    def hook(session: Session, header: InstanceHeader, now: datetime) -> None:
        prefetches.request_prefetch(
            session,
            study_instance_uid=header.study_instance_uid,
            patient_id=header.patient_id,
            issuer_of_patient_id=header.issuer_of_patient_id,
            study_date=header.study_date,
            want_priors=want_priors and bool(header.patient_id) and bool(header.study_date),
            now=now,
        )

    return hook


def reset_prefetches(sessions: sessionmaker[Session]) -> None:
    """At start: what a stopped ``serve`` left running is run again."""
    with sessions.begin() as s:
        n = prefetches.reset_running(s, now=utc_now())
    if n:
        logger.warning("%d prefetch(es) cut off by a stop run again", n)


def run_prefetches(cfg: NodeConfig, sessions: sessionmaker[Session], deps: ReceiveDeps) -> int:
    """Run the due prefetches (a scheduled job of ``serve``); return how many ran."""
    with only_one(sessions, "prefetch") as mine:
        if not mine:
            return 0
        with sessions.begin() as s:
            due = prefetches.claim_due(s, now=utc_now())
        for row in due:
            _run(cfg, sessions, deps, row)
        return len(due)


class _Tally:
    """Instances and bytes one prefetch brought in (for its row and the hourly limit)."""

    def __init__(self) -> None:
        self.instances = 0
        self.bytes = 0


def _run(
    cfg: NodeConfig, sessions: sessionmaker[Session], deps: ReceiveDeps, row: PrefetchRecord
) -> None:
    tally = _Tally()
    try:
        _count(cfg, sessions, row)
        priors, note = _priors(cfg, sessions, deps, row, tally) if row.want_priors else ((), None)
    except (SourceUnavailable, SourceRefused) as exc:
        retryable = isinstance(exc, SourceUnavailable)
        source = (_sources_of(cfg) or list(cfg.sources))[0]
        with sessions.begin() as s:
            after = prefetches.fail_attempt(
                s,
                prefetch_id=row.id,
                error=str(exc),
                instances=tally.instances,
                size_bytes=tally.bytes,
                max_attempts=source.max_attempts,
                retry_wait_s=source.retry_wait_s,
                retryable=retryable,
                now=utc_now(),
            )
        logger.warning(
            "prefetch of study %s: %s (attempt %d, %s)",
            row.study_instance_uid,
            exc,
            after.attempts,
            "tried again later" if after.open else "given up: its jobs run without",
        )
        return
    with sessions.begin() as s:
        prefetches.finish(
            s,
            prefetch_id=row.id,
            priors=priors,
            instances=tally.instances,
            size_bytes=tally.bytes,
            note=note,
            now=utc_now(),
        )
    logger.info(
        "prefetch of study %s done: %d prior(s) held, %d instance(s) retrieved%s",
        row.study_instance_uid,
        len(priors),
        tally.instances,
        f" ({note})" if note else "",
    )


def _sources_of(cfg: NodeConfig) -> list[SourceConfig]:
    """The sources the pipelines take priors from, in config order."""
    names = {n for p in cfg.pipelines for n in p.priors_from}
    return [s for s in cfg.sources if s.name in names]


def _count(cfg: NodeConfig, sessions: sessionmaker[Session], row: PrefetchRecord) -> None:
    """The first counting source that knows the study sets its expected instance count."""
    for source in cfg.sources:
        if not source.counts:
            continue
        series = find_series(source, study_uid=row.study_instance_uid, calling_ae=cfg.node.ae_title)
        counts = [s.instances for s in series]
        if not series or any(c is None for c in counts):
            continue  # the source does not know the study, or does not count
        total = sum(c for c in counts if c is not None)
        with sessions.begin() as s:
            held = prefetches.expect_instances(
                s,
                study_instance_uid=row.study_instance_uid,
                count=total,
                per_series={x.series_instance_uid: x.instances or 0 for x in series},
            )
        logger.info(
            "study %s: %s reports %d instance(s) in %d series; %s held",
            row.study_instance_uid,
            source.name,
            total,
            len(series),
            held,
        )
        return


def _priors(
    cfg: NodeConfig,
    sessions: sessionmaker[Session],
    deps: ReceiveDeps,
    row: PrefetchRecord,
    tally: _Tally,
) -> tuple[tuple[str, ...], str | None]:
    """Retrieve the patient's newest prior studies; (their UIDs, a note on what was skipped)."""
    rules = [p.match.modalities for p in cfg.pipelines if p.priors_from]
    modalities = {m for rule in rules for m in rule}
    any_modality = any(not rule for rule in rules)

    def wanted_modality(series: FoundSeries) -> bool:
        return any_modality or series.modality.upper() in modalities

    held: list[str] = []
    for source in _sources_of(cfg):
        studies = find_studies(
            source,
            patient_id=row.patient_id,
            issuer=row.issuer_of_patient_id,
            before=row.study_date,
            calling_ae=cfg.node.ae_title,
        )
        _audit_query(cfg, source, row)
        for study in studies[: source.max_studies_per_patient]:
            uid = study.study_instance_uid
            if uid == row.study_instance_uid or uid in held:
                continue
            series = [
                s
                for s in find_series(source, study_uid=uid, calling_ae=cfg.node.ae_title)
                if wanted_modality(s)
            ]
            with sessions.begin() as s:
                have, bytes_held = held_instances(s, uid)
            missing = _missing(have, series)
            if missing:
                limit = _over_limit(sessions, source)
                if limit:
                    return tuple(held), limit
                _retrieve(cfg, sessions, source, deps, uid, missing, tally, bytes_held)
            if series:
                held.append(uid)
    return tuple(held), None


def _missing(have: dict[str, int], series: list[FoundSeries]) -> list[str]:
    """Series the node does not hold in full (by the source's count; unknown counts: missing).

    ``have``: instances held per Series Instance UID.
    """
    return [
        x.series_instance_uid
        for x in series
        if x.instances is None or have.get(x.series_instance_uid, 0) < x.instances
    ]


def _over_limit(sessions: sessionmaker[Session], source: SourceConfig) -> str | None:
    with sessions.begin() as s:
        spent = prefetches.bytes_since(s, utc_now() - timedelta(hours=1))
    if spent >= source.max_mb_per_hour * 2**20:
        logger.error(
            "prefetch from %s stopped: %.0f MB retrieved in the last hour, limit %g",
            source.name,
            spent / 2**20,
            source.max_mb_per_hour,
        )
        return f"max_mb_per_hour of {source.name} reached ({source.max_mb_per_hour:g} MB)"
    return None


def _retrieve(
    cfg: NodeConfig,
    sessions: sessionmaker[Session],
    source: SourceConfig,
    deps: ReceiveDeps,
    study_uid: str,
    series_uids: list[str],
    tally: _Tally,
    bytes_before: int,
) -> None:
    """Retrieve the series; ``bytes_before``: what the node held of the study until now."""

    def stored(_result: IndexResult) -> None:
        tally.instances += 1

    on_store = retrieved_store_handler(deps, source.ae_title, stored)

    if cfg.audit is not None:
        Auditor(cfg.audit, cfg.node.ae_title).begin_transfer(
            received=True,
            remote_ae=source.ae_title,
            remote_address=source.host,
            studies={study_uid: ""},
        )
    outcome = retrieve_series(
        source,
        study_uid=study_uid,
        series_uids=series_uids,
        calling_ae=cfg.node.ae_title,
        on_store=on_store,
    )
    if source.retrieve == "move":
        tally.instances += outcome.completed
    with sessions.begin() as s:
        _held, bytes_after = held_instances(s, study_uid)
    tally.bytes += max(0, bytes_after - bytes_before)
    if outcome.failed:
        raise SourceUnavailable(
            f"{source.name} could not send {outcome.failed} instance(s) of study {study_uid}"
        )


def _audit_query(cfg: NodeConfig, source: SourceConfig, row: PrefetchRecord) -> None:
    if cfg.audit is not None:
        Auditor(cfg.audit, cfg.node.ae_title).queried(
            remote_ae=source.ae_title,
            remote_address=source.host,
            patient_id=row.patient_id,
            detail=f"prior studies before {row.study_date} for study {row.study_instance_uid}",
        )
