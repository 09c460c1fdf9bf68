"""The two receive paths (``[node] receiver``), for the tests that check the listener itself.

A test module runs every test on both by importing the fixture::

    from tests.receivers import both_receivers  # noqa: F401

(it is named ``receiver`` and overrides conftest's, which gives ``"pynetdicom"``).
"""

from __future__ import annotations

import pytest

__all__ = ["RECEIVERS", "both_receivers"]

RECEIVERS = ["pynetdicom", "dcmtk"]


@pytest.fixture(params=RECEIVERS, name="receiver")
def both_receivers(request: pytest.FixtureRequest) -> str:
    """``[node] receiver`` of the nodes a test starts: each of the two in turn."""
    return str(request.param)
