"""How every child process of ``ainode serve`` ends: on SIGTERM, or when its parent is gone.

A child must never outlive ``serve``. Each gets the read end of a pipe whose
only write end ``serve`` holds (:class:`node.supervise.Supervisor`): when
``serve`` dies — even by ``kill -9`` — the kernel closes that end and the
child's read returns EOF at once. Unlike polling the parent's PID, this cannot
be fooled by PID reuse.

SIGTERM is taken by a dedicated thread (through the signal wakeup fd), so it
is seen at once even while the main thread is deep inside a long C++ call (a
forward pass), where a Python signal handler would wait for the call to return.

Either way :class:`Ending` sets the stop flag the child's loop watches, and
after the grace period runs the child's last words (a worker releases the
lease of the job it still holds, so another worker takes it at once) and
exits, whatever the main thread is doing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

__all__ = ["Ending", "take_sigterm", "watch_parent"]

logger = logging.getLogger(__name__)


class Ending:
    """A child's stop flag, with a deadline after which it exits regardless."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._last_words: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._deadline: threading.Timer | None = None

    def last_words(self, fn: Callable[[], None]) -> None:
        """What to do just before a forced exit (e.g. release a job's lease)."""
        self._last_words = fn

    def request(self, why: str, grace_s: float, *, code: int = 0) -> None:
        """Ask the loop to stop; exit with ``code`` after ``grace_s`` if it has not."""
        with self._lock:
            if self._deadline is not None and grace_s >= self._deadline.interval:
                return
            if self._deadline is not None:
                self._deadline.cancel()
            logger.info("%s: stopping (at most %.1f s)", why, grace_s)
            self.stop.set()
            self._deadline = threading.Timer(grace_s, self._exit, args=(why, code))
            self._deadline.daemon = True
            self._deadline.start()

    def _exit(self, why: str, code: int) -> None:
        logger.warning("%s: grace period over, exiting now", why)
        try:
            if self._last_words is not None:
                self._last_words()
        except Exception:  # the edge of a dying process: log, and go anyway
            logger.exception("last words failed")
        finally:
            logging.shutdown()
            os._exit(code)


def take_sigterm(on_term: Callable[[], None]) -> None:
    """Run ``on_term`` on SIGTERM at once, in a thread of its own; call from the main thread.

    Python runs signal handlers on the main thread only, between bytecodes: a
    main thread inside a long native call (a forward pass) would not see the
    signal until it returns. The kernel, for its part, hands a process signal
    to any thread that does not block it (numpy's and torch's native threads
    included). So the C-level handler's wakeup fd is used: whichever thread
    receives SIGTERM writes its number there, and a dedicated thread reading
    that fd calls ``on_term`` straight away.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    # A Python-level handler must be installed for the wakeup fd to be written, but it
    # does nothing itself: run on the main thread, it could interrupt that thread inside
    # on_term (holding its lock) when a second SIGTERM comes (systemd, `timeout` and a
    # process-group kill signal every child, and serve forwards the signal too), and
    # deadlock it there. The thread below is the only caller of on_term.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def wait() -> None:
        while True:
            received = os.read(read_fd, 64)
            if int(signal.SIGTERM) in received:
                on_term()

    threading.Thread(target=wait, name="sigterm", daemon=True).start()


def watch_parent(lifeline: Connection, on_gone: Callable[[], None]) -> None:
    """Call ``on_gone`` when the parent's end of ``lifeline`` closes (the parent died)."""

    def wait() -> None:
        try:
            lifeline.recv()  # the parent never sends: this returns only by EOF
        except (EOFError, OSError):
            pass
        on_gone()

    threading.Thread(target=wait, name="lifeline", daemon=True).start()
