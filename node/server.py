"""The DICOM listener: a pynetdicom AE that accepts C-ECHO and every storage SOP class.

Several listener processes may share one port through ``SO_REUSEPORT``; the
kernel spreads incoming associations over them, which lifts the per-process
cost of pynetdicom's protocol handling off a single core.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from typing import Any, cast

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt, sop_class
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from core.config import NodeConfig
from node.handlers import (
    AccessControl,
    handle_conn_open,
    handle_echo,
    handle_requested,
    handle_store,
)
from node.receive import ReceiveDeps
from storage.spool import Spool

__all__ = [
    "ListenerServer",
    "build_ae",
    "build_handlers",
    "start_listener",
    "stop_listener",
    "storage_sop_class_uids",
]

logger = logging.getLogger(__name__)

_VERIFICATION = "1.2.840.10008.1.1"
_UNCOMPRESSED = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]


def storage_sop_class_uids() -> list[str]:
    """Every storage SOP class pynetdicom knows (images, SR, SEG, waveforms, PDF...)."""
    uids = {
        str(obj)
        for obj in vars(sop_class).values()
        if isinstance(obj, sop_class.SOPClass)
        and cast(object, obj.service_class) is StorageServiceClass
    }
    return sorted(uids)


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
    _warned: dict[str, float]

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        held = sum(1 for a in self.active_associations if _host_of(a) == host)
        if held < self.per_host_limit:
            return True
        now = time.monotonic()
        warned = getattr(self, "_warned", {})
        if now - warned.get(host, -3600.0) > 10:  # a scanner must not flood the log either
            logger.warning(
                "connection from %s closed: %s holds its share of the association slots "
                "(%d of max_associations_per_host %d)",
                host,
                host,
                held,
                self.per_host_limit,
            )
            warned[host] = now
            self._warned = warned
        return False

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
    ae.add_supported_context(_VERIFICATION, _UNCOMPRESSED)
    return ae


def build_handlers(cfg: NodeConfig, deps: ReceiveDeps) -> list[Any]:
    access = AccessControl(cfg.peers)
    return [
        (evt.EVT_CONN_OPEN, handle_conn_open),
        (evt.EVT_REQUESTED, handle_requested, [access]),
        (evt.EVT_C_ECHO, handle_echo, [access]),
        (evt.EVT_C_STORE, handle_store, [deps, access]),
    ]


def make_deps(cfg: NodeConfig, sessions: sessionmaker[Session]) -> ReceiveDeps:
    return ReceiveDeps(
        spool=Spool(cfg.storage.data_dir),
        sessions=sessions,
        on_duplicate=cfg.storage.on_duplicate,
        min_free_bytes=cfg.storage.min_free_mb * 2**20,
    )


def start_listener(
    cfg: NodeConfig, sessions: sessionmaker[Session], *, share_port: bool
) -> ListenerServer:
    """Bind the port and serve in a background thread; return the server."""
    ae = build_ae(cfg)
    server = ae.make_server(
        (cfg.node.bind_address, cfg.node.port),
        evt_handlers=build_handlers(cfg, make_deps(cfg, sessions)),
        server_class=SharedPortServer if share_port else ListenerServer,
    )
    assert isinstance(server, ListenerServer)
    server.per_host_limit = cfg.node.per_host_limit
    thread = threading.Thread(target=server.serve_forever, name="listener", daemon=True)
    thread.start()
    return server


def stop_listener(server: ListenerServer, grace_s: float) -> int:
    """Stop accepting, let running associations finish for ``grace_s``, abort the rest.

    Returns how many associations had to be aborted.
    """
    server.shutdown()
    deadline = time.monotonic() + grace_s
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    leftover = server.active_associations
    for assoc in leftover:
        assoc.abort()
    if leftover:
        logger.warning(
            "aborted %d association(s) still running after %.0f s", len(leftover), grace_s
        )
    return len(leftover)
