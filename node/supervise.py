"""The child processes of ``ainode serve``: start, wait until ready, restart with back-off, stop.

A child reports why it could not start on a shared queue, so ``serve`` fails
at once with the child's own reason (a broken model package, a port taken)
instead of waiting for a readiness timeout. A child that dies is restarted
after a delay that doubles with each death in a row (0.5 s, 1 s, 2 s ... up to
``MAX_BACKOFF_S``); one that lived ``STABLE_S`` counts as healthy again. A
broken package therefore gives a slow, logged retry loop, not a tight one.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

__all__ = ["MAX_BACKOFF_S", "STABLE_S", "ChildFailed", "Supervisor", "backoff_s"]

logger = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 60.0
STABLE_S = 60.0

_mp = multiprocessing.get_context("spawn")

#: A child's entry point: (config, ready event, error queue, lifeline). It sets
#: ``ready`` once serving, or puts ``(name, reason)`` on the queue and exits
#: non-zero; it ends when the lifeline reads EOF (core.process.watch_parent).
Target = Callable[[Any, MpEvent, "Queue[tuple[str, str]]", Connection], None]


class ChildFailed(RuntimeError):
    """A child process did not start; the message is its own reason."""


def backoff_s(deaths_in_a_row: int) -> float:
    """Delay before restarting a child that died ``deaths_in_a_row`` times."""
    return float(min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** max(0, deaths_in_a_row - 1)))


@dataclass(slots=True)
class _Child:
    name: str
    target: Target
    process: BaseProcess
    ready: MpEvent
    lifeline: Connection  # the write end: only this process holds it
    started_at: float
    deaths: int = 0
    restart_at: float | None = None


class Supervisor:
    """Owns the children of one ``serve``; all methods run in the main process."""

    def __init__(self, cfg: Any) -> None:
        self._cfg = cfg
        self._errors: Queue[tuple[str, str]] = _mp.Queue()
        self._children: list[_Child] = []
        self._reasons: dict[str, str] = {}

    def start(self, name: str, target: Target) -> None:
        process, ready, lifeline = self._spawn(name, target)
        self._children.append(
            _Child(name, target, process, ready, lifeline, started_at=time.monotonic())
        )

    def _spawn(self, name: str, target: Target) -> tuple[BaseProcess, MpEvent, Connection]:
        ready = _mp.Event()
        theirs, ours = _mp.Pipe(duplex=False)
        process = _mp.Process(
            target=target, args=(self._cfg, ready, self._errors, theirs), name=name
        )
        process.start()
        theirs.close()  # the child has its copy; ours must stay the only write end
        return process, ready, ours

    def _drain_errors(self) -> None:
        while True:
            try:
                name, reason = self._errors.get_nowait()
            except queue.Empty:
                return
            self._reasons[name] = reason

    def describe(self) -> list[dict[str, object]]:
        """Each child: name, pid, alive, deaths in a row, seconds since it started."""
        now = time.monotonic()
        return [
            {
                "name": c.name,
                "pid": c.process.pid,
                "alive": c.process.is_alive(),
                "deaths": c.deaths,
                "up_s": round(now - c.started_at),
            }
            for c in self._children
        ]

    def reason(self, name: str) -> str | None:
        """The last reason a child gave for failing, if any."""
        self._drain_errors()
        return self._reasons.get(name)

    def wait_ready(self, timeout_s: float) -> None:
        """Return when every child is ready; raise as soon as one fails to start."""
        deadline = time.monotonic() + timeout_s
        pending = list(self._children)
        while pending:
            for child in list(pending):
                if child.ready.is_set():
                    pending.remove(child)
                elif not child.process.is_alive():
                    child.process.join(5)  # its error is on the queue before it exits
                    why = self.reason(child.name) or "no reason given; see the log above"
                    raise ChildFailed(
                        f"{child.name} did not start (exit code {child.process.exitcode}): {why}"
                    )
            if time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise ChildFailed(f"{names} not ready after {timeout_s:.0f} s")
            time.sleep(0.05)

    def check(self) -> None:
        """Restart dead children once their back-off has passed (call periodically)."""
        now = time.monotonic()
        for child in self._children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.lifeline.close()
                    child.process, child.ready, child.lifeline = self._spawn(
                        child.name, child.target
                    )
                    child.started_at, child.restart_at = now, None
                continue
            if child.process.is_alive():
                continue
            child.deaths = 1 if now - child.started_at >= STABLE_S else child.deaths + 1
            delay = backoff_s(child.deaths)
            child.restart_at = now + delay
            why = self.reason(child.name)
            logger.error(
                "%s died (exit code %s)%s: restarting in %.1f s (death %d in a row)",
                child.name,
                child.process.exitcode,
                f": {why}" if why else "",
                delay,
                child.deaths,
            )

    def terminate(self) -> None:
        """SIGTERM every running child (each drains its work and exits)."""
        for child in self._children:
            pid = child.process.pid
            if pid is not None and child.process.is_alive():
                os.kill(pid, signal.SIGTERM)

    def join(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` (+10 s) for each child after :meth:`terminate`; kill the rest."""
        for child in self._children:
            # A worker finishes its running job first (its lease covers a kill).
            child.process.join(grace_s + 10)
            if child.process.is_alive():
                logger.error("%s did not stop: killing it", child.name)
                child.process.kill()
            child.lifeline.close()  # only now: closing it tells a child its parent is gone
        self._errors.close()

    def kill(self) -> None:
        for child in self._children:
            if child.process.is_alive():
                child.process.kill()
