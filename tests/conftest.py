from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.config import ListenerConfig, NodeConfig
from core.config_file import load_config
from storage.db import create_sqlite_engine, make_sessionmaker, migrate
from tests.peers import NodeProcess, Orthanc, free_port
from tests.pg import PostgresServer, pg_bin

ConfigFactory = Callable[..., Path]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not _cuda():
        for item in items:
            if "gpu" in item.keywords:  # a device, not a tool: CI has none, by design
                item.add_marker(pytest.mark.skip(reason="no CUDA device"))
    missing = [t for t in ("storescu", "echoscu", "Orthanc") if shutil.which(t) is None]
    if not missing or os.environ.get("CI"):
        return  # in CI a missing tool fails the tests loudly instead of skipping them
    # Network tests need dcmtk and Orthanc: skipped on a developer machine without them.
    for item in items:
        if "network" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"missing: {', '.join(missing)}"))


@pytest.fixture(autouse=True)
def _required_tools(request: pytest.FixtureRequest) -> None:
    """``@pytest.mark.tools("dciodvfy", ...)``: skipped without them, failed in CI."""
    marker = request.node.get_closest_marker("tools")
    if marker is None:
        return
    missing = [t for t in marker.args if shutil.which(t) is None]
    if not missing:
        return
    message = f"missing: {', '.join(missing)} (scripts/setup.sh --dev installs them)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture
def write_config(tmp_path: Path) -> ConfigFactory:
    """Write a config.toml into tmp_path: ``write_config(node={...}, extra="...")``."""

    def factory(text: str = "", **tables: dict[str, object]) -> Path:
        body = []
        for name, values in tables.items():
            body.append(f"[{name}]")
            for key, value in values.items():
                body.append(f"{key} = {_toml(value)}")
        path = tmp_path / "config.toml"
        path.write_text("\n".join(body) + "\n" + textwrap.dedent(text))
        return path

    return factory


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_sqlite_engine(tmp_path / "test.sqlite3")
    migrate(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the test session; each test takes a fresh database."""
    if pg_bin("initdb") is None:
        message = "missing: PostgreSQL (scripts/setup.sh --dev installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # Not under pytest's tmp folder: that is root's alone, and PostgreSQL runs as postgres.
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="ainode-pg-"))).start()
    yield server
    server.stop()


@pytest.fixture
def receiver() -> str:
    """``[node] receiver`` of the nodes a test starts: the default's. A test module that
    checks the listener itself imports ``tests.receivers.both_receivers``: both paths."""
    return ListenerConfig().receiver.value


@pytest.fixture
def node_factory(
    tmp_path: Path, write_config: ConfigFactory, receiver: str
) -> Iterator[Callable[..., tuple[NodeProcess, NodeConfig]]]:
    """Start ``ainode serve`` processes on free loopback ports; all stopped at teardown."""
    started: list[NodeProcess] = []

    def factory(
        text: str = "",
        *,
        start: bool = True,
        pipelines: str = '\n[[pipelines]]\nname = "default"\n',
        **tables: dict[str, object],
    ) -> tuple[NodeProcess, NodeConfig]:
        node = {
            "port": free_port(),
            "listener_processes": 1,
            "shutdown_grace_s": 20,
            "receiver": receiver,
            **tables.pop("node", {}),
        }
        storage = {"data_dir": "data", "min_free_mb": 0, **tables.pop("storage", {})}
        completion = {"quiet_period_s": 2, "check_interval_s": 0.2, **tables.pop("completion", {})}
        inference = {"workers": 0, **tables.pop("inference", {})}
        web = {"port": free_port(), **tables.pop("web", {})}
        path = write_config(
            text + pipelines,
            node=node,
            storage=storage,
            completion=completion,
            inference=inference,
            web=web,
            **tables,
        )
        cfg = load_config(path)
        proc = NodeProcess(path, cfg.node.port, tmp_path / "node.log")
        started.append(proc)
        if start:
            proc.start()
        return proc, cfg

    yield factory
    for proc in started:
        proc.stop()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A real Orthanc (Debian package) on free loopback ports, stopped at teardown."""
    pacs = Orthanc(tmp_path / "orthanc", dicom_port=free_port(), http_port=free_port())
    pacs.start()
    yield pacs
    pacs.stop()
