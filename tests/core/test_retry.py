from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.retry import RetryPolicy

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_exponential_backoff_capped() -> None:
    policy = RetryPolicy(max_attempts=10, wait_s=10, backoff=3, max_wait_s=100)
    assert [policy.delay_s(n) for n in (1, 2, 3, 4)] == [10, 30, 90, 100]


def test_next_attempt_until_max_then_none() -> None:
    policy = RetryPolicy(max_attempts=3, wait_s=5, backoff=2)
    assert policy.next_attempt_at(attempts=1, max_attempts=3, now=NOW, retryable=True) == (
        NOW + timedelta(seconds=5)
    )
    assert policy.next_attempt_at(attempts=2, max_attempts=3, now=NOW, retryable=True) == (
        NOW + timedelta(seconds=10)
    )
    assert policy.next_attempt_at(attempts=3, max_attempts=3, now=NOW, retryable=True) is None
    assert policy.next_attempt_at(attempts=1, max_attempts=3, now=NOW, retryable=False) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"backoff": 0.5}, "backoff"),
        ({"wait_s": -1}, "wait_s"),
    ],
)
def test_invalid_policy(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


def test_the_policy_decides_what_is_retryable() -> None:
    from core.errors import PermanentError
    from dicomio.errors import MissingData
    from inference.errors import OutputMismatch

    policy = RetryPolicy()
    assert not policy.retryable(MissingData("no (0028,0010) Rows"))
    assert not policy.retryable(OutputMismatch("2 outputs, 3 labels"))
    assert policy.retryable(OSError("disk hiccup"))
    assert policy.retryable(RuntimeError("CUDA error: unspecified launch failure"))
    strict = RetryPolicy(permanent=(PermanentError, KeyError))
    assert not strict.retryable(KeyError("x"))
