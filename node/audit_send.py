"""Forward the audit file to syslog: UDP (RFC 5426), TCP (RFC 6587) or TLS (RFC 5425).

``serve`` runs one sender thread. It reads the audit file from the offset it
last sent (kept beside the file, ``<file>.sent``), sends each frame, and moves
the offset on. A target that is down or refuses is tried again with back-off
(1 s doubling to 60 s) from the same frame: nothing is lost, the target gets
the backlog in order when it is back. Delivery is at least once: a crash
between a send and the offset write resends that frame.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
from pathlib import Path

from core.config import SyslogTarget
from node.tls import client_context

__all__ = ["AuditSender"]

logger = logging.getLogger(__name__)

_MAX_BACKOFF_S = 60.0


class AuditSender:
    """One thread that ships the audit file's new frames to the syslog target."""

    def __init__(self, file: Path, target: SyslogTarget, *, poll_s: float = 0.5) -> None:
        self.file = file
        self.target = target
        self.poll_s = poll_s
        self.offset_file = file.with_name(file.name + ".sent")
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="audit-sender", daemon=True)
        self._context = (
            client_context(target.tls, f"syslog {target.host}") if target.tls is not None else None
        )

    def start(self) -> AuditSender:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send what is pending (for up to ``timeout_s``), then stop."""
        self._stop.set()
        self._thread.join(timeout_s)
        self._close()

    def _offset(self) -> int:
        try:
            return int(self.offset_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _run(self) -> None:
        offset, backoff = self._offset(), 1.0
        while True:
            try:
                offset = self._send_from(offset)
                backoff = 1.0
            except OSError as exc:
                self._close()
                logger.warning(
                    "audit target %s://%s:%d unreachable (%s): retrying in %.0f s",
                    self.target.transport,
                    self.target.host,
                    self.target.port,
                    exc,
                    backoff,
                )
                if self._stop.wait(backoff):
                    return
                backoff = min(_MAX_BACKOFF_S, backoff * 2)
                continue
            if self._stop.is_set():
                return
            self._stop.wait(self.poll_s)

    def _send_from(self, offset: int) -> int:
        """Send every whole frame after ``offset``; return the new offset."""
        try:
            with open(self.file, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return offset
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # a frame still being appended
            self._send(line.rstrip(b"\n"))
            offset += len(line)
            self.offset_file.write_text(str(offset))
        return offset

    def _send(self, frame: bytes) -> None:
        t = self.target
        if t.transport == "udp":
            if self._sock is None:
                self._sock = socket.socket(socket.AF_INET6 if ":" in t.host else socket.AF_INET,
                                           socket.SOCK_DGRAM)  # fmt: skip
            self._sock.sendto(frame, (t.host, t.port))
            return
        if self._sock is not None and _peer_closed(self._sock):
            self._close()  # the target went away: reconnect before sending into the void
        if self._sock is None:
            raw = socket.create_connection((t.host, t.port), timeout=10)
            if self._context is not None:
                server_name = (t.tls.server_name if t.tls else None) or t.host
                raw = self._context.wrap_socket(raw, server_hostname=server_name)
            self._sock = raw
        # RFC 6587 / RFC 5425 octet counting: "LENGTH SP FRAME".
        self._sock.sendall(str(len(frame)).encode() + b" " + frame)

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except (OSError, ssl.SSLError):
                pass
            self._sock = None


def _peer_closed(sock: socket.socket) -> bool:
    """Whether a TCP peer has hung up (a syslog receiver never sends to us)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        if isinstance(sock, ssl.SSLSocket):  # no MSG_PEEK on TLS; nothing to lose by reading
            sock.setblocking(False)
            try:
                return sock.recv(1) == b""
            finally:
                sock.setblocking(True)
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True
