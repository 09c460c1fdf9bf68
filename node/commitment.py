"""Storage Commitment (Push Model) SCU: ask a destination to commit, take its report.

After the C-STOREs of a delivery run, ``node.delivery`` asks a destination
with ``storage_commitment = true`` to commit what it stored: one N-ACTION
(Request Storage Commitment) naming the objects under a fresh Transaction
UID. The destination answers later with an N-EVENT-REPORT, on an association
it opens to ainode (the usual way, Orthanc's too): the listener hands it to
:func:`handle_report`, which confirms the committed objects and counts a
failed attempt for each failed one, so it is sent again under the retry
policy. A report is honoured only from a destination that was asked (its AE
title) about that transaction; anything else is logged and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from core.clock import utc_now
from core.config import DestinationConfig, NodeConfig
from node.handlers import AccessControl
from node.send import PLAIN_SYNTAXES, AssociationFailed, associate, describe, new_ae
from storage import deliveries

__all__ = [
    "STORAGE_COMMITMENT",
    "CommitmentBook",
    "CommitmentReport",
    "CommitmentRequestFailed",
    "handle_report",
    "new_transaction_uid",
    "parse_report",
    "report_response",
    "request_commitment",
]

logger = logging.getLogger(__name__)

#: Storage Commitment Push Model SOP Class and its well-known SOP Instance (PS3.4 J.3).
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
_WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
_REQUEST_ACTION = 1  # Request Storage Commitment
_EVENT_ALL_COMMITTED, _EVENT_FAILURES = 1, 2

#: Failure Reason (0008,1197) values of PS3.4 J.3.2.2.1.
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP Class not supported",
    0x0119: "class / instance conflict",
    0x0131: "duplicate transaction UID",
}

_SUCCESS = 0x0000
_INVALID_ARGUMENT = 0x0115
_NO_SUCH_EVENT_TYPE = 0x0113
_PROCESSING_FAILURE = 0x0110
_NOT_AUTHORIZED = 0x0124


class CommitmentRequestFailed(Exception):
    """The destination could not be asked to commit (no association, refused N-ACTION)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitmentReport:
    transaction_uid: str
    committed: tuple[str, ...]  # SOP Instance UIDs
    failed: tuple[tuple[str, int], ...]  # (SOP Instance UID, Failure Reason)


def new_transaction_uid() -> str:
    return str(generate_uid())


def request_commitment(
    dest: DestinationConfig,
    references: Sequence[tuple[str, str]],
    transaction_uid: str,
    *,
    calling_ae: str,
    connect_timeout_s: float,
    dimse_timeout_s: float,
) -> None:
    """Send one N-ACTION asking ``dest`` to commit ``references`` (SOP Class, Instance UIDs)."""
    ae = new_ae(calling_ae, connect_timeout_s, dimse_timeout_s)
    ae.add_requested_context(STORAGE_COMMITMENT, PLAIN_SYNTAXES)
    try:
        assoc = associate(ae, dest)
    except AssociationFailed as exc:
        hint = ""
        if "accepts none" in str(exc):
            hint = " (set storage_commitment = false for it, or enable it on the PACS)"
        raise CommitmentRequestFailed(f"{exc}{hint}") from None
    try:
        if not any(cx.abstract_syntax == STORAGE_COMMITMENT for cx in assoc.accepted_contexts):
            raise CommitmentRequestFailed(
                f"{describe(dest)} does not accept Storage Commitment Push Model "
                "(set storage_commitment = false for it, or enable it on the PACS)"
            )
        info = Dataset()
        info.TransactionUID = transaction_uid
        items = []
        for sop_class, sop_instance in references:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            items.append(item)
        info.ReferencedSOPSequence = items
        status, _reply = assoc.send_n_action(
            info, _REQUEST_ACTION, STORAGE_COMMITMENT, _WELL_KNOWN_INSTANCE
        )
        if not status:
            raise CommitmentRequestFailed(f"no N-ACTION response from {describe(dest)}")
        code = int(status.Status)
        if code != _SUCCESS:
            comment = str(status.get("ErrorComment", ""))
            raise CommitmentRequestFailed(
                f"{describe(dest)} refused the storage commitment request: status 0x{code:04X}"
                + (f": {comment}" if comment else "")
            )
    finally:
        if assoc.is_established:
            assoc.release()


def parse_report(event_type: int, info: Dataset | None) -> CommitmentReport:
    """The Event Information of a Storage Commitment N-EVENT-REPORT; ValueError if malformed."""
    if event_type not in (_EVENT_ALL_COMMITTED, _EVENT_FAILURES):
        raise LookupError(f"event type {event_type} is not a storage commitment result")
    if info is None or not str(info.get("TransactionUID", "")):
        raise ValueError("no Transaction UID in the event information")
    committed = tuple(
        str(item.get("ReferencedSOPInstanceUID", ""))
        for item in info.get("ReferencedSOPSequence", [])
    )
    failed = tuple(
        (str(item.get("ReferencedSOPInstanceUID", "")), int(item.get("FailureReason", 0x0110)))
        for item in info.get("FailedSOPSequence", [])
    )
    if any(not uid for uid in committed) or any(not uid for uid, _ in failed):
        raise ValueError("a reference without a Referenced SOP Instance UID")
    return CommitmentReport(
        transaction_uid=str(info.TransactionUID), committed=committed, failed=failed
    )


@dataclass(frozen=True, slots=True)
class CommitmentBook:
    """What the listener needs to record a report: the config and the database."""

    cfg: NodeConfig
    sessions: sessionmaker[Session]

    def record(self, calling_ae: str, report: CommitmentReport) -> tuple[int, int]:
        """Confirm and fail the deliveries of ``report``; (confirmed, failed) counts."""
        names = [
            d.name
            for d in self.cfg.destinations
            if d.ae_title == calling_ae and d.storage_commitment
        ]
        now = utc_now()
        with self.sessions.begin() as s:
            rows = deliveries.sent_in_transaction(
                s, transaction_uid=report.transaction_uid, destinations=names
            )
            by_uid = {row.result.sop_instance_uid: row for row in rows}
            confirmed = [by_uid[uid].id for uid in report.committed if uid in by_uid]
            deliveries.mark_confirmed(s, delivery_ids=confirmed, now=now)
            failed = 0
            for uid, reason in report.failed:
                if uid not in by_uid:
                    continue
                row = by_uid[uid]
                why = FAILURE_REASONS.get(reason, "unknown reason")
                error = (
                    f"{row.destination} did not commit it: failure reason 0x{reason:04X} ({why})"
                )
                after = deliveries.mark_failed_attempt(
                    s,
                    delivery_id=row.id,
                    status=reason,
                    error=error,
                    retryable=True,
                    policy=self.cfg.delivery.retry,
                    now=now,
                )
                logger.warning(
                    "delivery %d of %s %s: %s; %s",
                    row.id,
                    row.result.kind,
                    uid,
                    error,
                    "dead" if after.status == "dead" else "it is sent again",
                )
                failed += 1
        unknown = len(report.committed) + len(report.failed) - len(confirmed) - failed
        if not rows:
            logger.warning(
                "storage commitment report from AE %r for transaction %s: no delivery of it "
                "awaits a commitment from that AE (late, repeated, or not ours); ignored",
                calling_ae,
                report.transaction_uid,
            )
        else:
            logger.info(
                "storage commitment transaction %s from AE %r: %d confirmed, %d failed%s",
                report.transaction_uid,
                calling_ae,
                len(confirmed),
                failed,
                f", {unknown} reference(s) not in the request ignored" if unknown else "",
            )
        return len(confirmed), failed


def handle_report(event: Any, book: CommitmentBook, access: AccessControl) -> tuple[int, None]:
    """EVT_N_EVENT_REPORT on the listener: a Storage Commitment result from a destination."""
    calling = str(event.assoc.requestor.ae_title).strip()
    if not access.admitted(event.assoc):
        logger.error("N-EVENT-REPORT refused: association of AE %r was not admitted", calling)
        return _NOT_AUTHORIZED, None
    request = event.request
    return (
        report_response(
            book,
            calling,
            sop_class_uid=str(request.AffectedSOPClassUID),
            event_type_id=int(getattr(request, "EventTypeID", None) or 0),
            information=lambda: event.event_information,
        ),
        None,
    )


def report_response(
    book: CommitmentBook,
    calling: str,
    *,
    sop_class_uid: str,
    event_type_id: int,
    information: Callable[[], Dataset | None],
) -> int:
    """The N-EVENT-REPORT logic of both receive paths: the status to answer.

    ``information`` decodes the Event Information (it may raise on malformed
    data). One of the broad-``except`` edges: an error answers Processing
    Failure and is logged.
    """
    if sop_class_uid != STORAGE_COMMITMENT:
        logger.warning("N-EVENT-REPORT of SOP class %s refused", sop_class_uid)
        return _PROCESSING_FAILURE
    try:
        report = parse_report(event_type_id, information())
    except LookupError as exc:
        logger.warning("storage commitment report from AE %r refused: %s", calling, exc)
        return _NO_SUCH_EVENT_TYPE
    except Exception as exc:  # malformed event information, however it fails to decode
        logger.warning("storage commitment report from AE %r refused: %s", calling, exc)
        return _INVALID_ARGUMENT
    try:
        book.record(calling, report)
    except Exception:
        logger.exception(
            "storage commitment report %s from AE %r could not be recorded",
            report.transaction_uid,
            calling,
        )
        return _PROCESSING_FAILURE
    return _SUCCESS
