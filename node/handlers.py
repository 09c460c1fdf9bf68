"""pynetdicom event handlers: plain functions, dependencies passed as handler args.

The C-STORE handler is one of the places with a broad ``except``: any error
becomes a DIMSE status, logged once with the calling AE and the UIDs; the
access decision is another: any error refuses the caller.
"""

from __future__ import annotations

import logging
import socket
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from pydicom.dataset import Dataset

from core import metrics
from core.config import PeerConfig
from node.audit import AssociationAudit, Auditor
from node.errors import StoreRejected
from node.receive import ReceiveDeps, receive_instance
from node.status import StoreStatus
from node.tls import peer_subject
from storage.records import IndexOutcome, IndexResult

__all__ = [
    "AccessControl",
    "handle_conn_close",
    "handle_conn_open",
    "handle_echo",
    "handle_requested",
    "handle_store",
    "retrieved_store_handler",
    "store_response",
]

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: rejected-permanent, service-user, calling AE title not recognised.
_REJECT_CALLING_AE = (0x01, 0x01, 0x03)
#: PS3.7 C.5.x "Refused: Not Authorized", for requests on an association never admitted.
_NOT_AUTHORIZED = 0x0124


class AccessControl:
    """``[[peers]]`` at association time, failing closed.

    The decision runs in pynetdicom's EVT_REQUESTED notification handler,
    whose exceptions the library logs and swallows — the association would
    then be accepted. So (1) the handler catches every error of its own and
    rejects; (2) if rejecting itself fails, it aborts; (3) only associations
    the handler admitted are served: every C-ECHO and C-STORE on any other is
    refused (0x0124) and nothing is stored; and (4) the AE is built with
    ``require_calling_aet`` (node.server), pynetdicom's own check of the
    calling AE title. tests/node/test_access.py pins the library behaviour
    this relies on.
    """

    def __init__(
        self, peers: Sequence[PeerConfig], auditor: Auditor | None = None, ae_title: str = ""
    ) -> None:
        self.ae_title = ae_title  # the node's own: a C-MOVE it asked for stores priors
        self.peers = tuple(peers)
        self.auditor = auditor
        self.associations = AssociationAudit(auditor)
        self._admitted: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    def refusal(self, calling: str, address: str, subject: str | None = None) -> str | None:
        """Why a caller is refused, or None if it is allowed.

        ``subject``: the caller's verified TLS client certificate subject, if any.
        """
        if not self.peers or any(peer.allows(calling, address, subject) for peer in self.peers):
            return None
        mine = [peer for peer in self.peers if peer.ae_title == calling]
        if not mine:
            return "not a configured peer"
        if all(peer.allows(calling, address, peer.tls_subject) for peer in mine):
            shown = subject or "no client certificate"
            return f"not the client certificate it is pinned to ({shown})"
        return "not allowed from this host"

    def decide(self, caller: Callable[[], tuple[str, str, str | None]]) -> str | None:
        """The access decision of both receive paths: None to admit, else the reason,
        logged, counted and audited. ``caller`` gives (calling AE title, address,
        TLS subject). One of the broad-``except`` edges: any error in it refuses."""
        calling, address = "?", "?"
        try:
            calling, address, subject = caller()
            reason = self.refusal(calling, address, subject)
        except Exception as exc:
            logger.exception(
                "access decision failed (%s: %s): association rejected", type(exc).__name__, exc
            )
            reason = "access decision failed"
        if reason is None:
            metrics.association("accepted")
            return None
        metrics.association("rejected")
        logger.warning(
            "association rejected: calling AE %r from %s is %s", calling, address, reason
        )
        if self.auditor is not None:
            self.auditor.refused(who=calling, address=address, reason=reason)
        return reason

    def retrieved(self, originator: str) -> bool:
        """A C-STORE sub-operation of a C-MOVE this node asked for (a prior it retrieves):
        ``originator`` is the request's Move Originator AE title ("" if none)."""
        return bool(self.ae_title) and originator.strip() == self.ae_title

    def admit(self, assoc: Any) -> None:
        with self._lock:
            self._admitted.add(assoc)

    def admitted(self, assoc: Any) -> bool:
        with self._lock:
            return assoc in self._admitted


def _status(status: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = int(status)
    if comment:
        ds.ErrorComment = comment
    return ds


def _calling_ae(event: Any) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def handle_conn_open(event: Any) -> None:
    """Turn Nagle off: each C-STORE response must leave at once."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reject(assoc: Any) -> None:
    """Send A-ASSOCIATE-RJ from EVT_REQUESTED (pynetdicom 3.0: then it skips negotiation)."""
    assoc.acse.send_reject(*_REJECT_CALLING_AE)
    assoc.is_rejected = True
    assoc.kill()


def _abort(assoc: Any) -> None:
    """A-ABORT (pynetdicom makes ``abort`` non-blocking inside notification handlers)."""
    assoc.abort()


def handle_requested(event: Any, access: AccessControl) -> None:
    """Access control at association time: reject callers not in ``[[peers]]``.

    With no peers configured every caller is accepted (the node warns at
    start-up). The called AE title is checked by pynetdicom itself
    (``require_called_aet``). One of the broad-``except`` edges: any error in
    the decision rejects the caller.
    """
    assoc = event.assoc

    def caller() -> tuple[str, str, str | None]:
        return (
            str(assoc.requestor.primitive.calling_ae_title).strip(),
            str(assoc.requestor.address),
            peer_subject(getattr(assoc.dul.socket, "socket", None)),
        )

    try:
        admitted = access.decide(caller) is None
    except Exception:  # decide refuses on its own errors; this catches its logging's
        logger.exception("access decision failed: association rejected")
        admitted = False
    if admitted:
        access.admit(assoc)
        return
    try:
        _reject(assoc)
    except Exception:
        logger.exception("A-ASSOCIATE-RJ failed: aborting the association instead")
        _abort(assoc)


def _not_admitted(event: Any, access: AccessControl) -> Dataset | None:
    if access.admitted(event.assoc):
        return None
    logger.error(
        "refused: association of AE %r from %s was not admitted",
        _calling_ae(event),
        event.assoc.requestor.address,
    )
    return _status(_NOT_AUTHORIZED, "association not admitted by access control")


def handle_conn_close(event: Any, access: AccessControl) -> None:
    """The audit of what the association stored (DICOM Instances Transferred, per study)."""
    access.associations.closed(event.assoc, aborted=bool(event.assoc.is_aborted))


def handle_echo(event: Any, access: AccessControl) -> Dataset:
    return _not_admitted(event, access) or _status(StoreStatus.SUCCESS)


def retrieved_store_handler(
    deps: ReceiveDeps, source_ae: str, on_stored: Callable[[IndexResult], None]
) -> Callable[[Any], Dataset]:
    """The C-STORE handler of a C-GET this node runs: stored like any, marked retrieved.

    An edge like :func:`handle_store`: any error answers a failure status and
    the retrieve goes on.
    """

    def handle(event: Any) -> Dataset:
        request = event.request
        sop_uid = str(request.AffectedSOPInstanceUID)
        try:
            result = receive_instance(
                deps,
                dataset=request.DataSet.getvalue(),
                transfer_syntax_uid=str(event.context.transfer_syntax),
                requested_sop_class_uid=str(request.AffectedSOPClassUID),
                requested_sop_instance_uid=sop_uid,
                calling_ae_title=source_ae,
                retrieved=True,
            )
        except StoreRejected as exc:
            logger.error("C-GET store refused (0x%04X %s): sop=%s", exc.status, exc, sop_uid)
            return _status(exc.status, exc.comment)
        except Exception:
            logger.exception("C-GET store failed: sop=%s from AE %r", sop_uid, source_ae)
            return _status(StoreStatus.UNEXPECTED_ERROR, "unexpected error in ainode, see its log")
        if result.outcome is not IndexOutcome.KEPT_EXISTING:
            on_stored(result)
        return _status(StoreStatus.SUCCESS)

    return handle


def handle_store(event: Any, deps: ReceiveDeps, access: AccessControl) -> Dataset:
    """C-STORE: store durably and index, then answer Success; else a precise failure."""
    if (refused := _not_admitted(event, access)) is not None:
        return refused
    request = event.request
    status, comment = store_response(
        deps,
        access,
        event.assoc,
        raw=request.DataSet.getvalue(),
        transfer_syntax_uid=str(event.context.transfer_syntax),
        sop_class_uid=str(request.AffectedSOPClassUID),
        sop_instance_uid=str(request.AffectedSOPInstanceUID),
        calling=_calling_ae(event),
        originator=str(getattr(request, "MoveOriginatorApplicationEntityTitle", None) or ""),
    )
    return _status(status, comment)


def store_response(
    deps: ReceiveDeps,
    access: AccessControl,
    assoc: Any,
    *,
    raw: bytes,
    transfer_syntax_uid: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    calling: str,
    originator: str,
) -> tuple[int, str | None]:
    """The C-STORE logic of both receive paths: the status and error comment to answer.

    ``assoc``: the association as the audit knows it (``requestor.ae_title`` and
    ``.address``); ``originator``: the Move Originator AE title, if any.
    """
    try:
        result = receive_instance(
            deps,
            dataset=raw,
            transfer_syntax_uid=transfer_syntax_uid,
            requested_sop_class_uid=sop_class_uid,
            requested_sop_instance_uid=sop_instance_uid,
            calling_ae_title=calling,
            retrieved=access.retrieved(originator),
        )
    except StoreRejected as exc:
        logger.error(
            "C-STORE refused (0x%04X %s): sop=%s from AE %r",
            exc.status,
            exc,
            sop_instance_uid,
            calling,
        )
        metrics.cstore_status(exc.status)
        return exc.status, exc.comment
    except Exception:
        logger.exception(
            "C-STORE failed unexpectedly: sop=%s from AE %r", sop_instance_uid, calling
        )
        metrics.cstore_status(StoreStatus.UNEXPECTED_ERROR)
        return StoreStatus.UNEXPECTED_ERROR, "unexpected error in ainode, see its log"
    metrics.cstore_status(StoreStatus.SUCCESS)
    if result.outcome is not IndexOutcome.KEPT_EXISTING:
        metrics.instance_received(len(raw))
    if result.header is not None:
        h = result.header
        access.associations.stored(assoc, h.study_instance_uid, h.patient_id, h.sop_class_uid)
    if result.outcome is IndexOutcome.KEPT_EXISTING:
        logger.info("duplicate kept: sop=%s from AE %r", sop_instance_uid, calling)
    elif result.study_reopened:
        logger.warning("instance after completion re-opened its study: sop=%s", sop_instance_uid)
    return StoreStatus.SUCCESS, None
