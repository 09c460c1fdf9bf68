"""Worker process entry points (``ainode worker``, and the workers ``ainode serve`` starts).

A worker stops on SIGTERM within ``[node] shutdown_grace_s``: it finishes the
running job if it can; if not, it releases the job's lease (the job is claimed
again at once, the attempt not counted) and exits. A worker child of ``serve``
also ends within two seconds of ``serve`` dying (core.process).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as MpEvent

from core.config import NodeConfig
from core.logs import configure_logging
from core.process import Ending, take_sigterm, watch_parent
from inference.errors import ModelPackageError
from storage.db import DatabaseError, ensure_schema, make_sessionmaker, node_engine

__all__ = ["run_worker", "worker_process"]

logger = logging.getLogger("ainode.worker")


def run_worker(
    cfg: NodeConfig,
    ending: Ending,
    ready: MpEvent | None = None,
    failed: Callable[[str], None] | None = None,
) -> int:
    """Load and try the models, then claim and run jobs until ``ending.stop``; return an exit code.

    A package that cannot be loaded or fails its trial run is reported to
    ``failed`` (serve's supervisor) and logged; the exit code is 1.
    """
    from inference.worker import Worker  # torch is imported here, not at CLI start

    engine = node_engine(cfg)
    try:
        ensure_schema(engine)
    except DatabaseError as exc:
        logger.error("worker cannot start: %s", exc)
        if failed is not None:
            failed(str(exc))
        return 1
    try:
        worker = Worker(cfg, make_sessionmaker(engine))
    except (ModelPackageError, RuntimeError) as exc:
        logger.error("worker cannot start: %s", exc)
        if failed is not None:
            failed(str(exc))
        return 1
    ending.last_words(worker.abandon)
    if ready is not None:
        ready.set()
    worker.run(ending.stop)
    engine.dispose()
    return 0


def stop_on_sigterm(cfg: NodeConfig, ending: Ending) -> None:
    """SIGTERM (and Ctrl-C): stop within ``[node] shutdown_grace_s``."""
    take_sigterm(lambda: ending.request("SIGTERM", cfg.node.shutdown_grace_s))


def worker_process(
    cfg: NodeConfig, ready: MpEvent, errors: Queue[tuple[str, str]], lifeline: Connection
) -> None:
    """Entry point of a worker child of ``ainode serve``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards SIGTERM
    configure_logging(cfg.logging)
    ending = Ending()
    stop_on_sigterm(cfg, ending)
    # serve is gone: release the job at once and go (no one will wait for us).
    watch_parent(lifeline, lambda: ending.request("main process is gone", 0.0, code=1))
    name = multiprocessing.current_process().name
    raise SystemExit(run_worker(cfg, ending, ready, lambda why: errors.put((name, why))))
