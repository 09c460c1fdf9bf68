"""Retry policy as data: which errors are worth another try, how long to wait, when to stop."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.errors import PermanentError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff: ``wait_s * backoff ** (attempt - 1)``, capped.

    Parameters
    ----------
    max_attempts
        Attempts in all, the first included; after the last a job is dead.
    wait_s
        Wait after the first failed attempt.
    backoff
        Factor applied to the wait after each further failure.
    max_wait_s
        Upper bound of any single wait.
    permanent
        Exception classes that no retry can fix: a job failing with one is
        dead at once. The worker does not decide this; the policy does.
    """

    max_attempts: int = 3
    wait_s: float = 30.0
    backoff: float = 2.0
    max_wait_s: float = 3600.0
    permanent: tuple[type[BaseException], ...] = (PermanentError,)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError('Argument "max_attempts" must be at least 1.')
        if self.wait_s < 0 or self.max_wait_s < 0:
            raise ValueError('Arguments "wait_s" and "max_wait_s" must not be negative.')
        if self.backoff < 1:
            raise ValueError('Argument "backoff" must be at least 1.')

    def retryable(self, error: BaseException) -> bool:
        """Whether another attempt could succeed where this ``error`` happened."""
        return not isinstance(error, self.permanent)

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_wait_s, self.wait_s * self.backoff ** max(0, attempt - 1)))

    def next_attempt_at(
        self, *, attempts: int, max_attempts: int, now: datetime, retryable: bool
    ) -> datetime | None:
        """When to try again after ``attempts`` failed attempts, or None: dead."""
        if not retryable or attempts >= max_attempts:
            return None
        return now + timedelta(seconds=self.delay_s(attempts))
