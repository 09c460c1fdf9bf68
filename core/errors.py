"""The error every layer may raise when retrying cannot help.

A :class:`PermanentError` says: the same input fails the same way however
often it is tried (a series that makes no volume, a missing ECG lead, a model
whose outputs do not match its labels). The retry policy (:mod:`core.retry`)
dead-letters such a job at once; any other exception is retried. The message
is for a person: it is what ``ainode jobs`` shows.
"""

from __future__ import annotations

__all__ = ["PermanentError", "describe"]


class PermanentError(Exception):
    """Retrying cannot help: the input (or the model) is wrong, not the moment."""


def describe(error: BaseException) -> str:
    """The reason as a person reads it: our own errors say it, others carry their type."""
    if isinstance(error, PermanentError):
        return str(error)
    return f"{type(error).__name__}: {error}"
