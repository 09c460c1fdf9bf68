"""Worker process entry points (``ainode worker``, and the workers ``ainode serve`` starts)."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as MpEvent

from core.config import NodeConfig
from core.logs import configure_logging
from inference.errors import ModelPackageError
from storage.db import create_sqlite_engine, make_sessionmaker, migrate

__all__ = ["run_worker", "worker_process"]

logger = logging.getLogger("ainode.worker")


def run_worker(
    cfg: NodeConfig,
    stop: threading.Event,
    ready: MpEvent | None = None,
    failed: Callable[[str], None] | None = None,
) -> int:
    """Load and try the models, then claim and run jobs until ``stop``; return an exit code.

    A package that cannot be loaded or fails its trial run is reported to
    ``failed`` (serve's supervisor) and logged; the exit code is 1.
    """
    from inference.worker import Worker  # torch is imported here, not at CLI start

    engine = create_sqlite_engine(cfg.storage.database_path)
    migrate(engine)
    try:
        worker = Worker(cfg, make_sessionmaker(engine))
    except (ModelPackageError, RuntimeError) as exc:
        logger.error("worker cannot start: %s", exc)
        if failed is not None:
            failed(str(exc))
        return 1
    if ready is not None:
        ready.set()
    worker.run(stop)
    engine.dispose()
    return 0


def worker_process(cfg: NodeConfig, ready: MpEvent, errors: Queue[tuple[str, str]]) -> None:
    """Entry point of a worker child of ``ainode serve``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards SIGTERM
    configure_logging(cfg.logging)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    name = multiprocessing.current_process().name
    raise SystemExit(run_worker(cfg, stop, ready, lambda why: errors.put((name, why))))
