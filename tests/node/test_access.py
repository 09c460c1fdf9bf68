"""Access control fails closed: an error anywhere in the decision refuses the caller.

The listener runs in the test process (so a fault can be injected into the
decision), and dcmtk's echoscu/storescu call it over 127.0.0.1. The first two
tests run on both receive paths (``[node] receiver``); the last ones pin the
pynetdicom behaviour the design relies on, so that an upgrade that changes it
fails here instead of silently opening the node.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pynetdicom
import pytest
from pynetdicom import AE, evt
from sqlalchemy import select

from core.config import NodeConfig, PeerConfig
from core.config_file import load_config
from node import handlers
from node.server import start_listener, stop_listener
from storage.models import Instance
from storage.spool import Spool
from tests.dicomgen import write_ct_series
from tests.peers import acknowledged, echoscu, free_port, storescu
from tests.receivers import RECEIVERS

pytestmark = pytest.mark.network

PEERS = "[[peers]]\nae_title = 'CT1'\n[[peers]]\nae_title = 'PACS'\nhost = '10.0.0.0/8'\n"


def _listen(write_config, sessions, receiver: str) -> Iterator[NodeConfig]:
    path = write_config(
        PEERS,
        node={"port": free_port(), "receiver": receiver},
        storage={"data_dir": "data", "min_free_mb": 0},
    )
    cfg = load_config(path)
    Spool(cfg.storage.data_dir).prepare()
    server = start_listener(cfg, sessions, share_port=False)
    yield cfg
    stop_listener(server, 0)


@pytest.fixture
def listener(write_config, sessions) -> Iterator[NodeConfig]:
    """pynetdicom's listener (the tests of how it is made to fail closed)."""
    yield from _listen(write_config, sessions, "pynetdicom")


@pytest.fixture(params=RECEIVERS)
def any_listener(request: pytest.FixtureRequest, write_config, sessions) -> Iterator[NodeConfig]:
    """Either receive path: the access rules are the same for both."""
    yield from _listen(write_config, sessions, str(request.param))


def _stored(sessions) -> list[str]:
    with sessions.begin() as s:
        return list(s.scalars(select(Instance.sop_instance_uid)))


def test_allowed_caller_stores_and_unknown_caller_is_rejected(any_listener, sessions, tmp_path):
    listener = any_listener
    files = write_ct_series(tmp_path / "ct", count=2)
    assert storescu(listener.node.port, files, aet="CT1").returncode == 0
    assert len(_stored(sessions)) == 2
    other = write_ct_series(tmp_path / "other", count=1)
    sent = storescu(listener.node.port, other, aet="INTRUDER")
    assert "Calling AE Title Not Recognized" in sent.stdout
    assert len(_stored(sessions)) == 2


def test_an_error_in_the_decision_rejects_the_association(
    any_listener, sessions, tmp_path, monkeypatch, caplog
) -> None:
    listener = any_listener

    def broken(self: PeerConfig, *_args: object) -> bool:
        raise RuntimeError("resolver down")

    monkeypatch.setattr(PeerConfig, "allows", broken)
    echo = echoscu(listener.node.port, aet="CT1")
    assert echo.returncode != 0
    assert "Association Rejected" in echo.stdout + echo.stderr
    sent = storescu(listener.node.port, write_ct_series(tmp_path / "ct", count=1), aet="CT1")
    assert "Association Rejected" in sent.stdout
    assert _stored(sessions) == []
    assert "access decision failed (RuntimeError: resolver down): association rejected" in (
        caplog.text
    )


def test_an_error_after_the_decision_rejects_the_association_too(
    any_listener, sessions, tmp_path, monkeypatch, caplog
) -> None:
    """Counting the decision failed (once: the metrics registry made from two threads at
    once). The caller is rejected, not accepted and then refused 0x0124 on each request."""
    listener = any_listener

    def broken(result: str) -> None:
        raise ValueError("Duplicated timeseries in CollectorRegistry")

    monkeypatch.setattr(handlers.metrics, "association", broken)
    sent = storescu(listener.node.port, write_ct_series(tmp_path / "ct", count=1), aet="CT1")
    assert "Association Rejected" in sent.stdout, sent.stdout
    assert _stored(sessions) == []
    assert "Duplicated timeseries in CollectorRegistry" in caplog.text


def test_a_failing_reject_aborts(listener, sessions, tmp_path, monkeypatch, caplog) -> None:
    def no_reject(assoc: object) -> None:
        raise AttributeError("'ACSE' object has no attribute 'send_reject'")

    monkeypatch.setattr(handlers, "_reject", no_reject)
    # PACS is a peer, but only from 10.0.0.0/8: the library's AE check lets it
    # through, the host check refuses it.
    sent = storescu(listener.node.port, write_ct_series(tmp_path / "ct", count=1), aet="PACS")
    assert sent.returncode != 0
    assert _stored(sessions) == []
    assert "A-ASSOCIATE-RJ failed: aborting the association instead" in caplog.text


def test_if_reject_and_abort_both_fail_nothing_is_served(
    listener, sessions, tmp_path, monkeypatch, caplog
) -> None:
    def broken(assoc: object) -> None:
        raise AttributeError("the library changed")

    monkeypatch.setattr(handlers, "_reject", broken)
    monkeypatch.setattr(handlers, "_abort", broken)
    files = write_ct_series(tmp_path / "ct", count=2)
    sent = storescu(listener.node.port, files, aet="PACS", extra=["--no-halt", "-d"])
    assert list(acknowledged(sent.stdout).values()) == ["0x0124", "0x0124"]
    assert _stored(sessions) == []
    assert "refused: association of AE 'PACS' from 127.0.0.1 was not admitted" in caplog.text
    assert "association not admitted by access control" in sent.stdout


# What the design relies on in pynetdicom (see node/handlers.py). If one of these
# fails after an upgrade, re-check handle_requested before changing the test.


def test_pinned_pynetdicom_version() -> None:
    assert pynetdicom.__version__ == "3.0.4"


def test_pynetdicom_swallows_exceptions_of_notification_handlers() -> None:
    """Why the decision catches its own errors: the library would accept the caller."""
    calls = []

    def raises(event: evt.Event) -> None:
        calls.append(event.event.name)
        raise RuntimeError("boom")

    port = free_port()
    ae = AE(ae_title="PINNED")
    ae.add_supported_context("1.2.840.10008.1.1")
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_REQUESTED, raises)]
    )
    try:
        echo = echoscu(port, aec="PINNED")
        assert calls == ["EVT_REQUESTED"]
        assert echo.returncode == 0  # accepted despite the handler's exception
    finally:
        server.shutdown()


def test_pynetdicom_reject_from_requested_handler_and_require_calling_aet() -> None:
    """The two ways the node refuses a caller, as the library implements them."""
    done = threading.Event()

    def reject(event: evt.Event) -> None:
        handlers._reject(event.assoc)
        done.set()

    port = free_port()
    ae = AE(ae_title="PINNED")
    ae.add_supported_context("1.2.840.10008.1.1")
    ae.require_calling_aet = ["ONLY"]
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        refused = echoscu(port, aec="PINNED", aet="OTHER")
        assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
        assert echoscu(port, aec="PINNED", aet="ONLY").returncode == 0
    finally:
        server.shutdown()
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_REQUESTED, reject)]
    )
    try:
        refused = echoscu(port, aec="PINNED", aet="ONLY")
        assert done.wait(10)
        assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    finally:
        server.shutdown()
