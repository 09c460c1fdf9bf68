"""The DICOM listener: a pynetdicom AE that accepts C-ECHO and every storage SOP class.

Several listener processes may share one port through ``SO_REUSEPORT``; the
kernel spreads incoming associations over them, which lifts the per-process
cost of pynetdicom's protocol handling off a single core.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from core.config import NodeConfig, Receiver
from node.audit import Auditor
from node.commitment import STORAGE_COMMITMENT, CommitmentBook, handle_report
from node.contexts import (
    ALL_TRANSFER_SYNTAXES,
    UNCOMPRESSED,
    VERIFICATION,
    storage_sop_class_uids,
)
from node.handlers import (
    AccessControl,
    handle_conn_close,
    handle_conn_open,
    handle_echo,
    handle_requested,
    handle_store,
)
from node.native_listener import NativeListener
from node.prefetch import new_study_hook
from node.receive import ReceiveDeps
from node.retention import RoomMaker
from node.throttle import handshake_failed, share_taken
from node.tls import server_context
from storage.spool import Spool

__all__ = [
    "Listener",
    "ListenerServer",
    "build_ae",
    "build_handlers",
    "start_listener",
    "stop_listener",
]

logger = logging.getLogger(__name__)


class ListenerServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, optionally sharing its port (SO_REUSEPORT).

    No single host may hold more than ``per_host_limit`` of the association
    slots: a further connection from it is closed at once, before any PDU, so
    a vulnerability scanner hammering the port cannot lock out the modalities.
    A connection that never sends a valid A-ASSOCIATE-RQ (junk, an unknown
    PDU, silence, a reset) holds its slot at most ``[node] acse_timeout_s``.
    """

    reuse_port = False
    daemon_threads = True
    per_host_limit = 1_000_000
    handshake_timeout_s = 2.0
    auditor: Auditor | None = None

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        # Slots are the AE's: a plain and a TLS port share them.
        held = sum(1 for a in self.ae.active_associations if _host_of(a) == host)
        if held < self.per_host_limit:
            return True
        share_taken(host, held, self.per_host_limit)
        return False

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept; with TLS, wrap without the handshake (done per connection, below).

        pynetdicom would handshake here, on the accepting thread: one caller
        that connects and never speaks TLS would stop the port for everyone.
        """
        assert self.socket is not None
        sock, address = self.socket.accept()
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        """On the connection's own thread: the TLS handshake first, bounded in time."""
        if isinstance(request, ssl.SSLSocket) and not self._handshake(request, client_address):
            return
        super().finish_request(request, client_address)

    def _handshake(self, sock: ssl.SSLSocket, client_address: Any) -> bool:
        host = str(client_address[0])
        try:
            sock.settimeout(self.handshake_timeout_s)
            sock.do_handshake()
            sock.settimeout(None)
        except (OSError, ValueError) as exc:  # ssl.SSLError, timeouts and resets are OSErrors
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            handshake_failed(host, reason, self.auditor)
            sock.close()
            return False
        return True

    def server_bind(self) -> None:
        if self.reuse_port and self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket; running associations go on."""
        socketserver.TCPServer.shutdown(self)
        self.server_close()


def _host_of(assoc: Any) -> str | None:
    try:
        return str(assoc.requestor.address)
    except (AttributeError, TypeError):  # an association still being set up
        return None


class SharedPortServer(ListenerServer):
    reuse_port = True


def build_ae(cfg: NodeConfig) -> AE:
    """An AE with the node's title, limits and presentation contexts."""
    # pynetdicom's own per-PDU logging handlers cost ~1 ms per message.
    _config.LOG_HANDLER_LEVEL = "none"
    node = cfg.node
    ae = AE(ae_title=node.ae_title)
    ae.maximum_pdu_size = node.max_pdu_bytes
    ae.maximum_associations = node.max_associations
    ae.network_timeout = node.network_timeout_s
    ae.acse_timeout = node.acse_timeout_s
    ae.dimse_timeout = node.dimse_timeout_s
    ae.require_called_aet = True
    # pynetdicom's own check of the calling AE title: a second line behind
    # handle_requested, which also checks the host (node.handlers.AccessControl).
    ae.require_calling_aet = sorted({peer.ae_title for peer in cfg.peers})
    for uid in storage_sop_class_uids():
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(VERIFICATION, UNCOMPRESSED)
    # Storage commitment results: the PACS opens the association as the SCP of
    # the Push Model and sends its N-EVENT-REPORT (node.commitment).
    ae.add_supported_context(STORAGE_COMMITMENT, UNCOMPRESSED, scu_role=False, scp_role=True)
    return ae


def build_handlers(cfg: NodeConfig, deps: ReceiveDeps, auditor: Auditor | None = None) -> list[Any]:
    access = AccessControl(cfg.peers, auditor, cfg.node.ae_title)
    return [
        (evt.EVT_CONN_OPEN, handle_conn_open),
        (evt.EVT_CONN_CLOSE, handle_conn_close, [access]),
        (evt.EVT_REQUESTED, handle_requested, [access]),
        (evt.EVT_C_ECHO, handle_echo, [access]),
        (evt.EVT_C_STORE, handle_store, [deps, access]),
        (evt.EVT_N_EVENT_REPORT, handle_report, [CommitmentBook(cfg, deps.sessions), access]),
    ]


def make_deps(cfg: NodeConfig, sessions: sessionmaker[Session]) -> ReceiveDeps:
    spool = Spool(cfg.storage.data_dir)
    return ReceiveDeps(
        spool=spool,
        sessions=sessions,
        on_duplicate=cfg.storage.on_duplicate,
        min_free_bytes=cfg.storage.min_free_mb * 2**20,
        make_room=RoomMaker(cfg, sessions, spool),
        on_new_study=new_study_hook(cfg),
    )


@dataclass(frozen=True, slots=True)
class Listener:
    """The listening servers of one process (a plain port, a TLS port, or both) and their AE.

    ``close``, ``active`` and ``abort_all`` are what :func:`stop_listener` needs of
    either receive path (``node.native_listener.NativeListener`` has the same).
    """

    ae: AE
    servers: tuple[ListenerServer, ...]

    def close(self) -> None:
        """Stop accepting; running associations go on."""
        for server in self.servers:
            server.shutdown()

    @property
    def active(self) -> int:
        return len(self.ae.active_associations)

    def abort_all(self) -> int:
        leftover = self.ae.active_associations
        for assoc in leftover:
            assoc.abort()
        return len(leftover)


def start_listener(
    cfg: NodeConfig, sessions: sessionmaker[Session], *, share_port: bool
) -> Listener | NativeListener:
    """Bind the port(s) and serve each in a background thread.

    Without ``[node.tls]`` the main port speaks plain DICOM; with it and no
    ``port`` of its own, the main port speaks TLS only; with a TLS ``port``
    both run side by side. One AE, one set of slots and handlers for both.

    Raises
    ------
    TlsError
        The certificate, key or CA bundle cannot be used.
    """
    auditor = Auditor(cfg.audit, cfg.node.ae_title) if cfg.audit is not None else None
    deps = make_deps(cfg, sessions)
    if cfg.node.receiver is Receiver.DCMTK:
        return NativeListener(cfg, deps, auditor, share_port=share_port)
    ae = build_ae(cfg)
    handlers = build_handlers(cfg, deps, auditor)
    tls = cfg.node.tls
    context = server_context(tls) if tls is not None else None
    servers = []
    for port, secure in cfg.node.ports:
        ssl_context = context if secure else None
        server = ae.make_server(
            (cfg.node.bind_address, port),
            evt_handlers=handlers,
            server_class=SharedPortServer if share_port else ListenerServer,
            ssl_context=ssl_context,
        )
        assert isinstance(server, ListenerServer)
        server.per_host_limit = cfg.node.per_host_limit
        server.handshake_timeout_s = cfg.node.acse_timeout_s
        server.auditor = auditor
        name = f"listener:{port}{' (TLS)' if ssl_context else ''}"
        threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
        servers.append(server)
    return Listener(ae=ae, servers=tuple(servers))


def stop_listener(listener: Listener | NativeListener, grace_s: float) -> int:
    """Stop accepting, let running associations finish for ``grace_s``, abort the rest.

    Returns how many associations had to be aborted.
    """
    listener.close()
    deadline = time.monotonic() + grace_s
    while listener.active and time.monotonic() < deadline:
        time.sleep(0.05)
    if not listener.active:
        return 0
    aborted = listener.abort_all()
    logger.warning("aborted %d association(s) still running after %.0f s", aborted, grace_s)
    return aborted
