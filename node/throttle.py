"""Warnings about a remote host, throttled: a scanner hammering the port must not flood the log."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.audit import Auditor

__all__ = ["handshake_failed", "share_taken", "warn_once"]

logger = logging.getLogger(__name__)

_warned: dict[tuple[str, str], float] = {}
_warned_lock = threading.Lock()


def warn_once(host: str, message: str, *args: object) -> bool:
    """Log a warning about ``host``, the same text at most once every 10 s; True if logged.

    A scanner hammering the port must not flood the log (or the audit trail) either.
    """
    text = message % (host, *args)
    now = time.monotonic()
    with _warned_lock:
        if now - _warned.get((host, text), -3600.0) < 10:
            return False
        _warned[(host, text)] = now
    logger.warning("%s", text)
    return True


def share_taken(host: str, held: int, limit: int) -> None:
    """A connection from ``host`` was closed at once: it holds its share of the slots."""
    warn_once(
        host,
        "connection from %s closed: it holds its share of the association slots "
        "(%d of max_associations_per_host %d)",
        held,
        limit,
    )


def handshake_failed(host: str, reason: str, auditor: Auditor | None) -> None:
    """A caller's TLS handshake failed (both receive paths): logged and audited, throttled."""
    if warn_once(host, "TLS handshake with %s failed: %s", reason) and auditor is not None:
        auditor.refused(who="?", address=host, reason=f"TLS handshake: {reason}")
