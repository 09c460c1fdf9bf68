"""C-STORE SCU: send result files to a destination over one association.

Each object's outcome is reported as soon as its response arrives, so the
caller can record it before the next one is sent. Failures are classified
here, where the DIMSE status is known: success and warnings are delivered;
"out of resources" and lost connections are worth retrying; a refusal of the
object itself (SOP class not supported, not authorised, cannot understand,
data set does not match) is permanent.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom.dsutils import split_dataset

from core.config import DestinationConfig
from node.deflate import deflate_stream
from node.handlers import handle_conn_open
from node.tls import client_context

__all__ = [
    "DEFLATED",
    "PARAMETRIC_MAP",
    "PLAIN_SYNTAXES",
    "AssociationFailed",
    "SendItem",
    "SendOutcome",
    "associate",
    "classify_status",
    "deflated_copy",
    "describe",
    "items_for",
    "new_ae",
    "send_files",
    "settle_reactor",
]

logger = logging.getLogger(__name__)

# send_c_store(path) sends the file's stored bytes in chunks, never decoding them;
# only this module passes paths (a dataset is sent as before).
_config.STORE_SEND_CHUNKED_DATASET = True

_WARNINGS = {0x0001, 0xB000, 0xB006, 0xB007}
EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: Explicit, then Implicit VR Little Endian: what every association proposes.
PLAIN_SYNTAXES = [EXPLICIT_LE, "1.2.840.10008.1.2"]
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
_PERMANENT = {0x0122, 0x0124}


class AssociationFailed(Exception):
    """No association with the destination: refused, rejected, unreachable."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SendItem:
    key: int
    path: Path
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SendOutcome:
    key: int
    delivered: bool
    retryable: bool
    status: int | None
    detail: str | None


def items_for(paths: Sequence[Path]) -> list[SendItem]:
    """Send items for files, keyed by their index in ``paths`` (headers read only)."""
    items = []
    for n, path in enumerate(paths):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        items.append(
            SendItem(
                key=n,
                path=path,
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
            )
        )
    return items


def classify_status(status: int) -> tuple[bool, bool]:
    """(delivered, retryable) for a C-STORE response status."""
    if status == 0x0000 or status in _WARNINGS:
        return True, False
    if status in _PERMANENT or 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF:
        return False, False
    return False, True  # 0xA7xx out of resources, processing failures, unknown codes


def new_ae(calling_ae: str, timeout_s: float, dimse_timeout_s: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.network_timeout = dimse_timeout_s
    ae.dimse_timeout = dimse_timeout_s
    return ae


def describe(dest: DestinationConfig) -> str:
    return f"{dest.ae_title}@{dest.host}:{dest.port}{' (TLS)' if dest.tls else ''}"


def associate(
    ae: AE, dest: DestinationConfig, handlers: Sequence[Any] = (), ext_neg: Any = None
) -> Any:
    """An association with ``dest`` (TLS when configured), or :class:`AssociationFailed`.

    ``ext_neg``: extended negotiation items (SCP/SCU role selection for a C-GET).
    """
    tls_args = None
    if dest.tls is not None:  # the peer must prove it is dest.tls.server_name (or host)
        tls_args = (client_context(dest.tls, dest.name), dest.tls.server_name or dest.host)
    assoc = ae.associate(
        dest.host,
        dest.port,
        ae_title=dest.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, handle_conn_open), *handlers],
        tls_args=tls_args,
        ext_neg=ext_neg,
    )
    if not assoc.is_established:
        refused = sorted(
            {str(getattr(cx.abstract_syntax, "name", "?")) for cx in assoc.rejected_contexts}
        )
        why = (
            f"it accepts none of the SOP classes proposed ({', '.join(refused)})"
            if refused and not assoc.accepted_contexts
            else "association rejected"
            if assoc.is_rejected
            else "TLS handshake failed, connection refused, unreachable or aborted"
            if tls_args
            else "connection refused, unreachable or aborted"
        )
        raise AssociationFailed(f"cannot associate with {describe(dest)}: {why}")
    return assoc


def send_files(
    dest: DestinationConfig,
    items: Sequence[SendItem],
    on_outcome: Callable[[SendOutcome], None],
    *,
    calling_ae: str,
    connect_timeout_s: float,
    dimse_timeout_s: float,
) -> None:
    """Send ``items`` to ``dest``; call ``on_outcome`` after each response.

    Raises :class:`AssociationFailed` when no association could be made; items
    left unsent when the association breaks are reported as retryable.
    """
    ae = new_ae(calling_ae, connect_timeout_s, dimse_timeout_s)
    for sop_class in sorted({i.sop_class_uid for i in items}):
        if dest.heat_map == "deflated" and sop_class == PARAMETRIC_MAP:
            # A context of its own: offered beside the plain ones, an acceptor
            # (Orthanc) prefers Explicit VR Little Endian.
            ae.add_requested_context(sop_class, [DEFLATED])
        ae.add_requested_context(sop_class, PLAIN_SYNTAXES)
    assoc = associate(ae, dest)
    try:
        accepted: dict[str, set[str]] = {}
        for cx in assoc.accepted_contexts:
            accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
        for item in items:
            if not assoc.is_established:
                on_outcome(
                    _not_sent(
                        item, f"association with {describe(dest)} ended early", retryable=True
                    )
                )
                continue
            if item.sop_class_uid not in accepted:
                on_outcome(
                    _not_sent(
                        item,
                        f"{describe(dest)} does not accept SOP class {item.sop_class_uid}",
                        retryable=False,
                    )
                )
                continue
            on_outcome(
                _send_one(
                    assoc,
                    item,
                    dest,
                    accepted=accepted[item.sop_class_uid],
                    deflate=DEFLATED in accepted[item.sop_class_uid],
                )
            )
    finally:
        if assoc.is_established:
            assoc.release()


@contextmanager
def deflated_copy(path: Path) -> Iterator[Path]:
    """A temporary copy of an Explicit VR Little Endian file in Deflated Explicit VR
    Little Endian, deleted on leaving: its File Meta Information with the new
    transfer syntax, then its dataset deflated on the machine's cores
    (:func:`node.deflate.deflate_stream`) as it streams from disk.

    Sent from the copy in chunks like any stored file: the dataset is never
    decoded, nor held in memory (a 210 MB map becomes ~7 MB, see README, Speed).
    """
    meta, offset = split_dataset(path)
    meta = FileMetaDataset(meta)
    meta.TransferSyntaxUID = UID(DEFLATED)
    with (
        path.open("rb") as source,
        tempfile.NamedTemporaryFile(prefix="ainode-deflated-", suffix=".dcm") as copy,
    ):
        source.seek(offset)
        copy.write(b"\x00" * 128 + b"DICM")
        meta_bytes = DicomBytesIO()
        write_file_meta_info(meta_bytes, meta, enforce_standard=True)
        copy.write(meta_bytes.getvalue())
        if deflate_stream(source, copy) % 2:  # a value of even length (PS3.5 A.5)
            copy.write(b"\x00")
        copy.flush()
        yield Path(copy.name)


#: How long :func:`settle_reactor` waits at most (a reactor thread starved of the CPU).
_SETTLE_S = 2.0


def settle_reactor(assoc: Any) -> None:
    """After a ``send_*()``: wait until the association's reactor thread has woken.

    pynetdicom 3.0.4 pauses a requestor's reactor thread while a ``send_*()``
    waits for its response, so that the reactor cannot take the response off
    the queue. But its pause flag is stale for a moment after each
    ``send_*()`` returns: the reactor, woken, has not yet marked itself
    running. A ``send_*()`` that starts in that moment sees "paused", sends, and
    the reactor, running at last, takes the fast peer's response and drops it
    as unexpected: the sender waits until its DIMSE timeout although the peer
    stored the instance and answered. On 2 cores, with a worker loading its
    models beside it, 5 of about 83 associations of 129 C-STOREs lost a response so
    (README, Speed). Waiting here until the reactor has run (its flag reads
    "running" once) closes that moment; the flag is only read, nothing of
    pynetdicom is changed. A pynetdicom without the flag, or a reactor that has
    ended, is not waited for.
    """
    deadline = time.monotonic() + _SETTLE_S
    while getattr(assoc, "_is_paused", False) and assoc.is_established:
        if time.monotonic() > deadline:
            logger.warning("association reactor did not run within %.1f s", _SETTLE_S)
            return
        time.sleep(0.0001)


def _not_sent(item: SendItem, detail: str, *, retryable: bool) -> SendOutcome:
    return SendOutcome(
        key=item.key, delivered=False, retryable=retryable, status=None, detail=detail
    )


def _send_one(
    assoc: object,
    item: SendItem,
    dest: DestinationConfig,
    *,
    accepted: set[str],
    deflate: bool,
) -> SendOutcome:
    """One C-STORE of a file.

    Sent straight from the file, in chunks, when the destination accepted the
    file's own transfer syntax (no decoding: a 210 MB map is neither parsed
    nor held); else decoded and re-encoded by pynetdicom. ``deflate``: in
    Deflated Explicit VR Little Endian, from a :func:`deflated_copy` of an
    Explicit VR file (pynetdicom deflates any other). A copy that cannot be
    written (a full temporary folder) is worth retrying; an unreadable file is not.
    """
    with ExitStack() as cleanup:
        payload: object = item.path  # sent as stored, in chunks (below)
        try:
            stored_as = str(read_file_meta_info(item.path).TransferSyntaxUID)
            streamed = deflate and stored_as == EXPLICIT_LE
            if not streamed and (deflate or stored_as not in accepted):
                dataset = pydicom.dcmread(item.path)
                if deflate:
                    dataset.file_meta.TransferSyntaxUID = UID(DEFLATED)
                payload = dataset
        except (OSError, AttributeError, pydicom.errors.InvalidDicomError) as exc:
            return _not_sent(item, f"unreadable: {exc}", retryable=False)
        if streamed:
            try:
                payload = cleanup.enter_context(deflated_copy(item.path))
            except OSError as exc:
                return _not_sent(item, f"cannot write a deflated copy: {exc}", retryable=True)
        response = assoc.send_c_store(payload)  # type: ignore[attr-defined]
        settle_reactor(assoc)
    if not response:  # no response: timeout, abort or a broken connection
        return _not_sent(item, f"no response from {describe(dest)}", retryable=True)
    status = int(response.Status)
    comment = str(response.get("ErrorComment", "")) or None
    delivered, retryable = classify_status(status)
    detail = f"status 0x{status:04X}" + (f": {comment}" if comment else "")
    return SendOutcome(
        key=item.key,
        delivered=delivered,
        retryable=retryable,
        status=status,
        detail=None if status == 0 else detail,
    )
