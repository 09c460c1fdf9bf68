"""Reading one TOML table with rules: types, ranges, choices, and no unknown keys.

Shared by ``config.toml`` (:mod:`core.config_file`) and the model packages'
``model.toml`` (:mod:`inference.spec`): each key is taken out of the table as
it is read, and :meth:`Table.finish` rejects whatever is left, so a typo such
as ``windw`` is an error naming the key instead of a silently ignored line.
Every error names the key and the rule, and is raised as the error class the
caller chose.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

__all__ = ["Table"]

T = TypeVar("T")


class Table:
    """One TOML table being read; ``name`` prefixes every key in errors."""

    def __init__(self, data: object, name: str, error: type[Exception]) -> None:
        self._error = error
        self._name = name
        if not isinstance(data, dict):
            raise self._error(f"{name}: must be a table")
        self._data: dict[str, Any] = dict(data)

    def key(self, key: str) -> str:
        """The key as errors name it, e.g. ``[node] port``."""
        return f"{self._name} {key}" if self._name else key

    def fail(self, key: str, rule: str) -> Exception:
        """The caller's error for ``key`` breaking ``rule`` (to raise)."""
        return self._error(f"{self.key(key)}: {rule}")

    def has(self, key: str) -> bool:
        return key in self._data

    def keys(self) -> list[str]:
        """The keys not read yet."""
        return list(self._data)

    def _get(self, key: str, default: T, kinds: tuple[type, ...], what: str) -> T:
        if key not in self._data:
            return default
        value = self._data.pop(key)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(key, f"must be {what} (got {value!r})")
        if not isinstance(value, kinds):
            raise self.fail(key, f"must be {what} (got {value!r})")
        return value  # type: ignore[return-value]

    def string(self, key: str, default: str) -> str:
        return self._get(key, default, (str,), "a string")

    def required_string(self, key: str) -> str:
        if key not in self._data:
            raise self.fail(key, "is required")
        value = self.string(key, "")
        if not value:
            raise self.fail(key, "must not be empty")
        return value

    def integer(self, key: str, default: int, low: int, high: int | None = None) -> int:
        value = self._get(key, default, (int,), "an integer")
        self._check_range(key, value, low, high)
        return value

    def number(self, key: str, default: float, low: float, high: float | None = None) -> float:
        value = float(self._get(key, default, (int, float), "a number"))
        self._check_range(key, value, low, high)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return self._get(key, default, (bool,), "true or false")

    def strings(self, key: str) -> tuple[str, ...]:
        empty: list[object] = []
        value: object = self._get(key, empty, (list, str), "a string or a list of strings")
        items = [value] if isinstance(value, str) else cast(list[object], value)
        if not all(isinstance(v, str) and v for v in items):
            raise self.fail(key, "must be a string or a list of strings")
        return tuple(str(v) for v in items)

    def numbers(
        self, key: str, count: int, low: float, high: float | None = None
    ) -> tuple[float, ...] | None:
        """A list of exactly ``count`` numbers, each within the range, or None if absent."""
        if key not in self._data:
            return None
        empty: list[object] = []
        values = self._get(key, empty, (list,), f"a list of {count} numbers")
        if len(values) != count or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            raise self.fail(key, f"must be a list of {count} numbers (got {values!r})")
        numbers = tuple(float(cast(float, v)) for v in values)
        for v in numbers:
            self._check_range(key, v, low, high)
        return numbers

    def choice(self, key: str, default: T, parse: Callable[[str], T], options: str) -> T:
        if key not in self._data:
            return default
        raw = self.string(key, "")
        try:
            return parse(raw)
        except ValueError:
            raise self.fail(key, f"must be one of {options} (got {raw!r})") from None

    def _check_range(self, key: str, value: float, low: float, high: float | None) -> None:
        if value < low:
            raise self.fail(key, f"must be at least {low} (got {value})")
        if high is not None and value > high:
            raise self.fail(key, f"must be at most {high} (got {value})")

    def raw(self, key: str) -> object:
        """The value as TOML gave it (for the caller to check), or None."""
        return self._data.pop(key, None)

    def finish(self) -> None:
        """Reject keys that no rule read: a typo must not pass silently."""
        if self._data:
            unknown = ", ".join(sorted(self._data))
            raise self._error(f"{self._name or 'top level'}: unknown key(s): {unknown}")
