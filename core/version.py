"""ainode's own version, as installed (``pyproject.toml``), for the process roster and logs."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["VERSION"]

try:
    VERSION = version("ainode")
except PackageNotFoundError:  # run from a checkout that was never installed
    VERSION = "0+unknown"
