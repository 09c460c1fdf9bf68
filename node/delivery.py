"""Deliver due result objects to their destinations (a scheduled job of ``serve``).

One scheduled job per destination, one association per run; every response
is recorded in its own transaction at once, so a crash resends at most the
object in flight, and a hung destination holds up only its own results.
A destination that cannot be reached counts one failed attempt for each of
its due objects and waits by the retry policy of ``[delivery]``.

A destination with ``storage_commitment = true`` is then asked, in one
N-ACTION, to commit what it stored (``node.commitment``); its objects stay
``sent`` until its report confirms them, and one whose report fails it or
never comes within ``commitment_timeout_s`` is sent again.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from core import metrics
from core.clock import utc_now
from core.config import DestinationConfig, NodeConfig
from node.audit import Auditor, StudyTransfer
from node.commitment import CommitmentRequestFailed, new_transaction_uid, request_commitment
from node.send import AssociationFailed, SendItem, SendOutcome, send_files
from storage import deliveries
from storage.deliveries import DeliveryRecord
from storage.dialect import only_one
from storage.lookup import patient_ids

__all__ = ["deliver_due"]

logger = logging.getLogger(__name__)


def _failed(
    cfg: NodeConfig,
    sessions: sessionmaker[Session],
    delivery_id: int,
    status: int | None,
    error: str,
    *,
    retryable: bool,
    now: datetime,
) -> None:
    with sessions.begin() as s:
        row = deliveries.mark_failed_attempt(
            s,
            delivery_id=delivery_id,
            status=status,
            error=error,
            retryable=retryable,
            policy=cfg.delivery.retry,
            now=now,
        )
    if row.status == "dead":
        logger.error(
            "delivery %d of %s %s to %s dead after %d attempt(s): %s",
            row.id,
            row.result.kind,
            row.result.sop_instance_uid,
            row.destination,
            row.attempts,
            error,
        )
    else:
        logger.warning(
            "delivery %d of %s to %s failed (attempt %d of %d), next at %s: %s",
            row.id,
            row.result.sop_instance_uid,
            row.destination,
            row.attempts,
            row.max_attempts,
            row.next_attempt_at.isoformat(timespec="seconds"),
            error,
        )


def _deliver_to(
    cfg: NodeConfig, sessions: sessionmaker[Session], name: str, rows: list[DeliveryRecord]
) -> int:
    if not any(d.name == name for d in cfg.destinations):
        for row in rows:
            error = f"destination {name!r} is no longer in the config"
            _failed(cfg, sessions, row.id, None, error, retryable=True, now=utc_now())
        return 0
    dest = cfg.destination(name)
    delivered = 0
    by_id = {row.id: row for row in rows}
    sent: dict[str, StudyTransfer] = {}
    failures = 0

    def record(outcome: SendOutcome) -> None:
        nonlocal delivered, failures
        if not outcome.delivered:
            failures += 1
            metrics.delivery(name, "retry" if outcome.retryable else "refused")
            error = outcome.detail or "failed"
            retryable = outcome.retryable
            _failed(
                cfg,
                sessions,
                outcome.key,
                outcome.status,
                error,
                retryable=retryable,
                now=utc_now(),
            )
            return
        with sessions.begin() as s:
            deliveries.mark_delivered(
                s,
                delivery_id=outcome.key,
                status=outcome.status or 0,
                comment=outcome.detail,
                now=utc_now(),
                awaiting_commitment=dest.storage_commitment,
            )
        delivered += 1
        metrics.delivery(name, "delivered")
        result = by_id[outcome.key].result
        transfer = sent.setdefault(result.study_instance_uid, StudyTransfer(patient_id=""))
        transfer.sop_classes[result.sop_class_uid] = (
            transfer.sop_classes.get(result.sop_class_uid, 0) + 1
        )
        logger.info(
            "delivery %d to %s: %s",
            outcome.key,
            name,
            "stored, commitment to be requested" if dest.storage_commitment else "delivered",
        )

    items = [
        SendItem(
            key=row.id,
            path=Path(row.result.path),
            sop_class_uid=row.result.sop_class_uid,
            sop_instance_uid=row.result.sop_instance_uid,
        )
        for row in rows
    ]
    _audit_begin(cfg, sessions, dest, rows)
    try:
        send_files(
            dest,
            items,
            record,
            calling_ae=cfg.node.ae_title,
            connect_timeout_s=cfg.delivery.connect_timeout_s,
            dimse_timeout_s=cfg.delivery.dimse_timeout_s,
        )
    except AssociationFailed as exc:
        _all_failed(cfg, sessions, name, rows, "no association", exc)
    _audit_sent(cfg, sessions, dest, sent, failed=failures > 0)
    return delivered


def _all_failed(
    cfg: NodeConfig,
    sessions: sessionmaker[Session],
    name: str,
    rows: Sequence[DeliveryRecord],
    outcome: str,
    exc: Exception,
) -> None:
    """No association (or no request) reached ``name``: a failed, retryable attempt for each."""
    metrics.delivery(name, outcome)
    for row in rows:
        _failed(cfg, sessions, row.id, None, str(exc), retryable=True, now=utc_now())


def _expire_commitments(cfg: NodeConfig, sessions: sessionmaker[Session], name: str) -> None:
    """Sent objects whose commitment report never came: a failed attempt each, sent again."""
    dest = cfg.destination(name)
    now = utc_now()
    with sessions.begin() as s:
        overdue = deliveries.overdue_commitments(
            s,
            destination=name,
            requested_before=now - timedelta(seconds=dest.commitment_timeout_s),
        )
    for row in overdue:
        error = (
            f"no storage commitment report from {name} within "
            f"{dest.commitment_timeout_s:g} s (transaction {row.transaction_uid})"
        )
        _failed(cfg, sessions, row.id, None, error, retryable=True, now=now)


def _request_commitment(cfg: NodeConfig, sessions: sessionmaker[Session], name: str) -> None:
    """Ask ``name`` to commit everything it stored and was not asked about yet.

    The Transaction UID is on the rows before the N-ACTION leaves, so a report
    that comes back at once finds them. That includes objects a crash left
    stored but never asked about. A request that cannot be made is a failed
    attempt for each object: it is sent again, and asked about again, under
    the retry policy.
    """
    dest = cfg.destination(name)
    with sessions.begin() as s:
        rows = deliveries.uncommitted(s, destination=name)
    if not rows:
        return
    transaction = new_transaction_uid()
    with sessions.begin() as s:
        deliveries.request_commitment(
            s, delivery_ids=[r.id for r in rows], transaction_uid=transaction, now=utc_now()
        )
    references = [(r.result.sop_class_uid, r.result.sop_instance_uid) for r in rows]
    try:
        request_commitment(
            dest,
            references,
            transaction,
            calling_ae=cfg.node.ae_title,
            connect_timeout_s=cfg.delivery.connect_timeout_s,
            dimse_timeout_s=cfg.delivery.dimse_timeout_s,
        )
    except CommitmentRequestFailed as exc:
        _all_failed(cfg, sessions, name, rows, "commitment not requested", exc)
        return
    logger.info(
        "storage commitment of %d object(s) requested from %s: transaction %s",
        len(rows),
        name,
        transaction,
    )


def _audit_begin(
    cfg: NodeConfig,
    sessions: sessionmaker[Session],
    dest: DestinationConfig,
    rows: list[DeliveryRecord],
) -> None:
    """Begin Transferring DICOM Instances, per study about to be sent."""
    if cfg.audit is None or not rows:
        return
    with sessions.begin() as s:
        patients = patient_ids(s, sorted({r.result.study_instance_uid for r in rows}))
    Auditor(cfg.audit, cfg.node.ae_title).begin_transfer(
        received=False,
        remote_ae=dest.ae_title,
        remote_address=dest.host,
        studies={
            r.result.study_instance_uid: patients.get(r.result.study_instance_uid, "") for r in rows
        },
    )


def _audit_sent(
    cfg: NodeConfig,
    sessions: sessionmaker[Session],
    dest: DestinationConfig,
    sent: dict[str, StudyTransfer],
    *,
    failed: bool,
) -> None:
    """DICOM Instances Transferred (action R) for what reached the destination, per study."""
    if cfg.audit is None or not sent:
        return
    with sessions.begin() as s:
        patients = patient_ids(s, list(sent))
    for study_uid, transfer in sent.items():
        transfer.patient_id = patients.get(study_uid, "")
    Auditor(cfg.audit, cfg.node.ae_title).transferred(
        received=False,
        remote_ae=dest.ae_title,
        remote_address=dest.host,
        studies=sent,
        failed=failed,
    )


def deliver_due(cfg: NodeConfig, sessions: sessionmaker[Session], destination: str | None) -> int:
    """Send the due deliveries to ``destination``; return how many were delivered.

    ``serve`` runs this as one scheduled job per destination, so a destination
    that hangs (connects, then never answers) delays only its own results.
    ``None``: deliveries to destinations no longer in the config, which fail.
    """
    configured = [d.name for d in cfg.destinations]
    # Of several nodes sharing one PostgreSQL database, one sends to a destination at a time.
    with only_one(sessions, f"delivery {destination}") as mine:
        if not mine:
            return 0
        committing = destination is not None and cfg.destination(destination).storage_commitment
        if committing:
            assert destination is not None
            _expire_commitments(cfg, sessions, destination)
        with sessions.begin() as s:
            if destination is None:
                due = deliveries.due_deliveries(s, now=utc_now(), other_than=configured)
            else:
                due = deliveries.due_deliveries(s, now=utc_now(), destination=destination)
        by_destination: dict[str, list[DeliveryRecord]] = defaultdict(list)
        for row in due:
            by_destination[row.destination].append(row)
        sent = sum(_deliver_to(cfg, sessions, name, rows) for name, rows in by_destination.items())
        if committing:
            assert destination is not None
            _request_commitment(cfg, sessions, destination)
        return sent
