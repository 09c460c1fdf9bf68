"""The listener on dcmtk's libdcmnet (``[node] receiver = "dcmtk"``).

Python binds the port and accepts connections (bind address, port sharing
between listener processes, the per-host and total slot limits), then hands
each connection to ``node.native._dcmnet``, which runs the association in
C++ without the GIL: negotiation, PDUs, DIMSE messages and responses. What
the node decides comes back here, through the same functions as pynetdicom's
handlers (``node.handlers.store_response``, ``node.commitment.report_response``,
``AccessControl.refusal``): the access rules, the store (validated, fsynced,
indexed before Success), every status and the audit trail are one code path
for both receivers. ``[node.tls]`` as on pynetdicom's path: the main port TLS
only, or a TLS port beside it; the same protocol versions, suites and client
certificate rules (``node.tls``), the handshake bounded by ``acse_timeout_s``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from core.config import NodeConfig, TlsConfig
from node.audit import Auditor
from node.commitment import STORAGE_COMMITMENT, CommitmentBook, report_response
from node.contexts import (
    ALL_TRANSFER_SYNTAXES,
    UNCOMPRESSED,
    VERIFICATION,
    storage_sop_class_uids,
)
from node.dicom_in import decode_dataset
from node.handlers import AccessControl, store_response
from node.receive import ReceiveDeps
from node.throttle import handshake_failed, share_taken
from node.tls import BCP195_CIPHERS, TlsError, server_context

__all__ = ["NativeListener", "NativeUnavailable", "native_module", "tls_context"]

logger = logging.getLogger(__name__)


class NativeUnavailable(RuntimeError):
    """node/native/_dcmnet is not built (scripts/setup.sh builds it from libdcmtk-dev)."""


def native_module() -> Any:
    """node.native._dcmnet; NativeUnavailable (naming the fix) if it is not built."""
    try:
        from node.native import _dcmnet  # type: ignore[attr-defined]
    except ImportError as exc:
        raise NativeUnavailable(
            f'[node] receiver = "dcmtk" needs node/native/_dcmnet, which is not built ({exc}); '
            "run scripts/setup.sh (it installs libdcmtk-dev and builds it)"
        ) from None
    return _dcmnet


def tls_context(tls: TlsConfig | None) -> Any:
    """dcmtls's server context for ``[node.tls]`` (None for plain DICOM); TlsError naming
    the key if it cannot be used. ``node.tls.server_context`` checks the files first, so
    both receive paths refuse the same settings with the same message."""
    if tls is None:
        return None
    server_context(tls)
    try:
        return native_module().configure_tls(
            str(tls.certificate),
            str(tls.private_key),
            None if tls.ca_bundle is None else str(tls.ca_bundle),
            tls.require_client_certificate,
            BCP195_CIPHERS,
        )
    except ValueError as exc:
        raise TlsError(f"[node.tls] {exc}") from None


@dataclass(frozen=True, slots=True)
class _Requestor:
    ae_title: str
    address: str


class _Association:
    """One connection's callbacks; ``requestor`` is what the audit reads of an association."""

    def __init__(
        self,
        host: str,
        deps: ReceiveDeps,
        access: AccessControl,
        book: CommitmentBook,
    ) -> None:
        self.requestor = _Requestor(ae_title="?", address=host)
        self.deps, self.access, self.book = deps, access, book

    def on_association(
        self, calling: str, _called: str, _address: str, subject: str | None
    ) -> str | None:
        """The access decision, as pynetdicom's path makes it (``AccessControl.decide``);
        ``subject``: the verified TLS client certificate's, if any. If this function
        itself failed, the C++ side refuses the caller."""
        self.requestor = _Requestor(ae_title=calling.strip(), address=self.requestor.address)
        return self.access.decide(
            lambda: (self.requestor.ae_title, self.requestor.address, subject)
        )

    def on_store(
        self, raw: bytes, transfer_syntax: str, sop_class: str, sop_instance: str, originator: str
    ) -> tuple[int, str | None]:
        status, comment = store_response(
            self.deps,
            self.access,
            self,
            raw=raw,
            transfer_syntax_uid=transfer_syntax,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            calling=self.requestor.ae_title,
            originator=originator,
        )
        return int(status), comment

    def on_report(
        self, event_type: int, sop_class: str, _sop_instance: str, raw: bytes, transfer_syntax: str
    ) -> int:
        return report_response(
            self.book,
            self.requestor.ae_title,
            sop_class_uid=sop_class,
            event_type_id=event_type,
            information=lambda: decode_dataset(raw, transfer_syntax) if raw else None,
        )


def tls_reason(text: str) -> str:
    """dcmtls's "TLS error: peer did not return a certificate" as Python's ssl module names
    the same OpenSSL reason ("PEER_DID_NOT_RETURN_A_CERTIFICATE"): one log text for both
    receive paths. Other texts (a timeout, an I/O error) stay as they are."""
    prefix = "TLS error: "
    if not text.startswith(prefix):
        return text
    return text[len(prefix) :].strip().upper().replace(" ", "_")


class _Slots:
    """Connections held, per host and in all (shared by the ports of one listener)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_host: dict[str, int] = {}
        self.total = 0

    def take(self, host: str) -> int:
        with self.lock:
            self.by_host[host] = self.by_host.get(host, 0) + 1
            self.total += 1
            return self.total

    def give(self, host: str) -> None:
        with self.lock:
            self.by_host[host] -= 1
            if not self.by_host[host]:
                del self.by_host[host]
            self.total -= 1

    def held(self, host: str) -> int:
        with self.lock:
            return self.by_host.get(host, 0)


class NativeListener:
    """The listening socket(s) and their connection threads."""

    def __init__(
        self,
        cfg: NodeConfig,
        deps: ReceiveDeps,
        auditor: Auditor | None,
        *,
        share_port: bool,
    ) -> None:
        self._dcmnet = native_module()
        node = cfg.node
        self.cfg = cfg
        self.deps = deps
        self.access = AccessControl(cfg.peers, auditor, node.ae_title)
        self.book = CommitmentBook(cfg, deps.sessions)
        self.slots = _Slots()
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        contexts = {uid: ALL_TRANSFER_SYNTAXES for uid in storage_sop_class_uids()}
        contexts[VERIFICATION] = UNCOMPRESSED
        contexts[STORAGE_COMMITMENT] = UNCOMPRESSED
        self._dcmnet.configure(contexts, {STORAGE_COMMITMENT})
        self.auditor = auditor
        tls = tls_context(node.tls)
        ports = [(port, tls if secure else None) for port, secure in node.ports]
        self.sockets: list[socket.socket] = []
        try:
            for port, _ in ports:
                self.sockets.append(self._bind(node.bind_address, port, share_port))
        except OSError:
            for sock in self.sockets:
                sock.close()
            raise
        self._accepting = [
            threading.Thread(
                target=self._accept_loop,
                args=(sock, port, context),
                name=f"listener:{port}{' (TLS)' if context else ''} (dcmtk)",
                daemon=True,
            )
            for sock, (port, context) in zip(self.sockets, ports, strict=True)
        ]
        for thread in self._accepting:
            thread.start()

    @staticmethod
    def _bind(address: str, port: int, share_port: bool) -> socket.socket:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((address, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.settimeout(0.25)
        return sock

    @property
    def active(self) -> int:
        return self.slots.total

    def _accept_loop(self, sock: socket.socket, port: int, tls: Any) -> None:
        node = self.cfg.node
        while not self._stopping.is_set():
            try:
                conn, address = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                logger.exception("accept failed on port %d", port)
                time.sleep(0.1)
                continue
            host = str(address[0])
            held = self.slots.held(host)
            if held >= node.per_host_limit:
                share_taken(host, held, node.per_host_limit)
                conn.close()
                continue
            total = self.slots.take(host)
            thread = threading.Thread(
                target=self._serve,
                args=(conn, host, total > node.max_associations, tls),
                name=f"assoc:{host}",
                daemon=True,
            )
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn: socket.socket, host: str, busy: bool, tls: Any) -> None:
        node = self.cfg.node
        assoc = _Association(host, self.deps, self.access, self.book)
        try:
            admitted, aborted, tls_error = self._dcmnet.serve_connection(
                fd=conn.detach(),
                ae_title=node.ae_title,
                max_pdu=min(node.max_pdu_bytes or 131072, 131072),
                acse_timeout=max(1, round(node.acse_timeout_s)),
                network_timeout=max(1, round(node.network_timeout_s)),
                dimse_timeout=max(1, round(node.dimse_timeout_s)),
                busy=busy,
                on_association=assoc.on_association,
                on_store=assoc.on_store,
                on_report=assoc.on_report,
                tls=tls,
            )
            if tls_error is not None:
                handshake_failed(host, tls_reason(tls_error), self.auditor)
            if admitted:
                self.access.associations.closed(assoc, aborted=aborted)
        except Exception:  # an edge: one connection's failure never stops the listener
            logger.exception("association from %s failed", host)
        finally:
            self.slots.give(host)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def close(self) -> None:
        """Stop accepting; running associations go on."""
        self._stopping.set()
        for thread in self._accepting:
            thread.join(2)
        for sock in self.sockets:
            sock.close()

    def abort_all(self) -> int:
        """Shut down every running association's socket; return how many."""
        aborted: int = self._dcmnet.abort_all()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)
        return aborted
