"""``ainode serve``: the main process, its listener processes and its workers.

The main process takes the data folder's exclusive lock before it touches
anything in it, then clears interrupted writes, migrates the database,
reconciles files and index (:mod:`storage.reconcile`), runs the scheduler
(completion, lease expiry, one delivery job per destination) and supervises
its children (:mod:`node.supervise`): with ``listener_processes = 1`` the
listener runs in-process, otherwise each runs in a child process on the
shared port; workers always run as children. A child that cannot start stops
``serve`` with its own reason; one that dies later is restarted with back-off.

SIGTERM (or Ctrl-C): stop accepting, let running associations finish for
``shutdown_grace_s``, exit 0.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import threading
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import IO

from sqlalchemy.orm import Session, sessionmaker

from core.clock import utc_now
from core.config import NodeConfig, Receiver
from core.logs import configure_logging
from core.metrics import MULTIPROC_ENV
from core.process import Ending, take_sigterm, watch_parent
from node.audit import Auditor
from node.audit_send import AuditSender
from node.housekeeping import leave_roster, start_scheduler
from node.native_listener import NativeUnavailable, native_module
from node.server import start_listener, stop_listener
from node.supervise import ChildFailed, Supervisor
from node.tls import TlsError, server_context
from node.web.app import WebContext, WebServer
from storage.db import DatabaseError, describe, ensure_schema, make_sessionmaker, node_engine
from storage.reconcile import ReconcileRefused, reconcile
from storage.spool import Spool

__all__ = ["ServeError", "listener_main", "serve"]

logger = logging.getLogger(__name__)

_READY_TIMEOUT_S = 60.0


class ServeError(RuntimeError):
    """The node cannot start; the message says why."""


def _lock_data_dir(data_dir: Path, *, shared_port: int | None) -> IO[bytes]:
    """One ``serve`` per data folder; with PostgreSQL one per host and port on it.

    Nodes (on several hosts, or one host on several ports) may share a data
    folder — on a network filesystem — when they share a PostgreSQL database;
    a SQLite file must never be shared.
    """
    host = socket.gethostname()
    name = f"ainode.{host}.{shared_port}.lock" if shared_port is not None else "ainode.lock"
    handle = open(data_dir / name, "wb")  # held open for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ServeError(f"another ainode process is using the data folder {data_dir}") from None
    return handle


def _check_port_free(address: str, port: int) -> None:
    """Fail early and clearly if something already listens on the port."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ServeError(f"cannot listen on {address}:{port}: {reason}") from None


def _install_stop_handlers(stop: threading.Event) -> None:
    def on_signal(signum: int, _frame: object) -> None:
        logger.info("%s received: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def listener_main(
    cfg: NodeConfig, ready: MpEvent, errors: Queue[tuple[str, str]], lifeline: Connection
) -> None:
    """Entry point of a listener child process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards SIGTERM
    configure_logging(cfg.logging)
    ending = Ending()
    take_sigterm(lambda: ending.request("SIGTERM", cfg.node.shutdown_grace_s + 5))
    watch_parent(lifeline, lambda: ending.request("main process is gone", 2.0, code=1))
    engine = node_engine(cfg)
    try:
        server = start_listener(cfg, make_sessionmaker(engine), share_port=True)
    except (OSError, TlsError, NativeUnavailable) as exc:
        name = multiprocessing.current_process().name
        errors.put((name, f"cannot listen on {cfg.node.bind_address}:{cfg.node.port}: {exc}"))
        raise SystemExit(1) from None
    ready.set()
    ending.stop.wait()
    stop_listener(server, cfg.node.shutdown_grace_s)
    engine.dispose()


def _verify_models(cfg: NodeConfig) -> None:
    from inference.errors import ModelPackageError
    from inference.spec import verify_package

    for pipeline in cfg.pipelines:
        for folder in pipeline.models:
            try:
                verify_package(folder)
            except ModelPackageError as exc:
                raise ServeError(f"[[pipelines]] {pipeline.name!r}: {exc}") from None


def _reconcile(sessions: sessionmaker[Session], spool: Spool, *, grace_s: float) -> None:
    """Repair what a crash left between files and index (storage.reconcile); log it all."""
    try:
        with sessions.begin() as s:
            found = reconcile(s, spool, grace_s=grace_s)
    except ReconcileRefused as exc:
        raise ServeError(str(exc)) from None
    for lost in found.lost:
        logger.error(
            "acknowledged instance lost from disk, removed from the index: sop=%s series=%s "
            "study=%s (was %s)",
            lost.sop_instance_uid,
            lost.series_instance_uid,
            lost.study_instance_uid,
            lost.path,
        )
    for moved in found.quarantined:
        logger.warning("file without an index row moved to %s", moved)
    logger.info(
        "reconciled %d file(s) with %d index row(s) in %.2f s: %d quarantined, %d lost",
        found.files_checked,
        found.rows_checked,
        found.seconds,
        len(found.quarantined),
        len(found.lost),
    )


def serve(cfg: NodeConfig) -> int:
    """Run the node until SIGTERM; return the process exit code."""
    cfg.storage.data_dir.mkdir(exist_ok=True)
    # Lock first: a second, refused serve must not touch the running node's files.
    shared = cfg.database is not None and cfg.database.sqlite_path is None
    lock = _lock_data_dir(cfg.storage.data_dir, shared_port=cfg.node.port if shared else None)
    _fresh_metrics_folder()
    spool = Spool(cfg.storage.data_dir)
    removed = spool.prepare(grace_s=cfg.queue.lease_s)
    if removed:
        logger.warning("removed %d partial file(s) left by an interrupted write", removed)
    engine = node_engine(cfg)
    try:
        ensure_schema(engine)
    except DatabaseError as exc:
        raise ServeError(str(exc)) from None
    logger.info("database: %s", describe(engine))
    sessions = make_sessionmaker(engine)
    _reconcile(sessions, spool, grace_s=cfg.queue.lease_s)
    node = cfg.node
    for port, _ in node.ports:
        _check_port_free(node.bind_address, port)
    if cfg.web.enabled:
        _check_port_free(cfg.web.bind_address, cfg.web.port)
    if node.tls is not None:
        try:
            server_context(node.tls)
        except TlsError as exc:
            raise ServeError(str(exc)) from None
    if node.receiver is Receiver.DCMTK:
        try:
            native_module()
        except NativeUnavailable as exc:
            raise ServeError(str(exc)) from None
    if cfg.inference.workers:
        _verify_models(cfg)
    if not cfg.peers:
        logger.warning("no [[peers]] configured: any calling AE title from any host is accepted")
    stop = threading.Event()
    _install_stop_handlers(stop)
    server = None
    children = Supervisor(cfg)
    if node.listener_processes == 1:
        try:
            server = start_listener(cfg, sessions, share_port=False)
        except (TlsError, NativeUnavailable) as exc:
            raise ServeError(str(exc)) from None
    else:
        for i in range(node.listener_processes):
            children.start(f"listener-{i + 1}", listener_main)
    workers = cfg.inference.workers if any(p.models for p in cfg.pipelines) else 0
    if cfg.inference.workers and not workers:
        logger.warning("no pipeline has models: no worker started; jobs stay queued")
    if workers:
        from inference.__main__ import worker_process

        for i in range(workers):
            children.start(f"worker-{i + 1}", worker_process)
    try:
        children.wait_ready(_READY_TIMEOUT_S)
    except ChildFailed as exc:
        children.kill()
        if server is not None:
            stop_listener(server, 0)
        raise ServeError(str(exc)) from None
    scheduler = start_scheduler(cfg, sessions)
    auditor, sender = _start_audit(cfg)
    web = None
    if cfg.web.enabled:
        web = _start_web(
            WebContext(
                cfg=cfg,
                sessions=sessions,
                started_at=utc_now(),
                children=children.describe,
                listening=lambda: (
                    server is not None
                    or any(
                        c["alive"]
                        for c in children.describe()
                        if str(c["name"]).startswith("listener")
                    )
                ),
            )
        )
    tls = node.tls
    logger.info(
        "ainode %s listening on %s:%d%s (%s, %d listener process%s, %d worker%s), data in %s",
        node.ae_title,
        node.bind_address,
        node.port,
        "" if tls is None else " (TLS only)" if tls.port is None else f", TLS on {tls.port}",
        node.receiver.value,
        node.listener_processes,
        "" if node.listener_processes == 1 else "es",
        cfg.inference.workers,
        "" if cfg.inference.workers == 1 else "s",
        cfg.storage.data_dir,
    )
    while not stop.wait(0.2):
        children.check()
    children.terminate()
    if server is not None:
        stop_listener(server, node.shutdown_grace_s)
    children.join(node.shutdown_grace_s)
    if web is not None:
        web.stop()
    scheduler.shutdown(wait=True)
    leave_roster(sessions)
    if auditor is not None:
        auditor.application(started=False)
    if sender is not None:
        sender.stop()
    engine.dispose()
    lock.close()
    logger.info("ainode stopped")
    return 0


def _start_web(ctx: WebContext) -> WebServer | None:
    """The dashboard; if its port was taken since the start-up check, DICOM goes on without it."""
    try:
        return WebServer(ctx).start()
    except OSError as exc:
        logger.error("%s: the node runs without its dashboard", exc)
        return None


def _fresh_metrics_folder() -> None:
    """Counters start at zero with each serve (Prometheus handles the reset)."""
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        Path(folder).mkdir(parents=True, exist_ok=True)


def _start_audit(cfg: NodeConfig) -> tuple[Auditor | None, AuditSender | None]:
    """Application Start in the audit trail; the syslog sender if a target is set."""
    if cfg.audit is None:
        return None, None
    auditor = Auditor(cfg.audit, cfg.node.ae_title)
    auditor.application(started=True)
    sender = None
    if cfg.audit.syslog is not None:
        sender = AuditSender(cfg.audit.file, cfg.audit.syslog).start()
    return auditor, sender
