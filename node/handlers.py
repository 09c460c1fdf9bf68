"""pynetdicom event handlers: plain functions, dependencies passed as handler args.

The C-STORE handler is one of the three places with a broad ``except``: any
error becomes a DIMSE status, logged once with the calling AE and the UIDs.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from node.config import PeerConfig
from node.errors import StoreRejected
from node.receive import ReceiveDeps, receive_instance
from node.status import StoreStatus
from storage.records import IndexOutcome

__all__ = ["handle_conn_open", "handle_echo", "handle_requested", "handle_store"]

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: rejected-permanent, service-user, calling AE title not recognised.
_REJECT_CALLING_AE = (0x01, 0x01, 0x03)


def _status(status: StoreStatus, comment: str | None = None) -> Dataset:
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


def handle_requested(event: Any, peers: Sequence[PeerConfig]) -> None:
    """Access control at association time: reject callers not in ``[[peers]]``.

    With no peers configured every caller is accepted (the node warns at
    start-up). The called AE title is checked by pynetdicom itself
    (``require_called_aet``).
    """
    if not peers:
        return
    assoc = event.assoc
    calling = str(assoc.requestor.primitive.calling_ae_title).strip()
    address = str(assoc.requestor.address)
    if any(peer.allows(calling, address) for peer in peers):
        return
    known_ae = any(peer.ae_title == calling for peer in peers)
    logger.warning(
        "association rejected: calling AE %r from %s is %s",
        calling,
        address,
        "not allowed from this host" if known_ae else "not a configured peer",
    )
    assoc.acse.send_reject(*_REJECT_CALLING_AE)
    assoc.is_rejected = True
    assoc.kill()


def handle_echo(event: Any) -> int:
    return int(StoreStatus.SUCCESS)


def handle_store(event: Any, deps: ReceiveDeps) -> Dataset:
    """C-STORE: store durably and index, then answer Success; else a precise failure."""
    request = event.request
    calling = _calling_ae(event)
    sop_uid = str(request.AffectedSOPInstanceUID)
    try:
        result = receive_instance(
            deps,
            dataset=request.DataSet.getvalue(),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            requested_sop_class_uid=str(request.AffectedSOPClassUID),
            requested_sop_instance_uid=sop_uid,
            calling_ae_title=calling,
        )
    except StoreRejected as exc:
        logger.error(
            "C-STORE refused (0x%04X %s): sop=%s from AE %r",
            exc.status,
            exc,
            sop_uid,
            calling,
        )
        return _status(exc.status, exc.comment)
    except Exception:
        logger.exception("C-STORE failed unexpectedly: sop=%s from AE %r", sop_uid, calling)
        return _status(StoreStatus.UNEXPECTED_ERROR, "unexpected error in ainode, see its log")
    if result.outcome is IndexOutcome.KEPT_EXISTING:
        logger.info("duplicate kept: sop=%s from AE %r", sop_uid, calling)
    elif result.study_reopened:
        logger.warning("instance after completion re-opened its study: sop=%s", sop_uid)
    return _status(StoreStatus.SUCCESS)
