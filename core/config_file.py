"""``config.toml`` loaded once into the frozen records of :mod:`core.config`.

Every error names the TOML key and the rule it broke, e.g.::

    config.toml: [node] ae_title: must be at most 16 characters (got 17)

Relative paths inside the file resolve against the folder that holds it, so one
checkout can run several nodes, each from its own config file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from core.config import (
    CompletionConfig,
    CompletionLevel,
    DeliveryConfig,
    DuplicatePolicy,
    InferenceConfig,
    ListenerConfig,
    LoggingConfig,
    NodeConfig,
    QueueConfig,
    Receiver,
    ResultsConfig,
    RetentionConfig,
    StorageConfig,
)
from core.config_database import parse_database
from core.config_export import parse_export
from core.config_network import (
    parse_audit,
    parse_destinations,
    parse_node_tls,
    parse_peers,
    parse_web,
)
from core.config_pipelines import parse_pipelines
from core.config_rules import ConfigError, config_table, short_text, validate_ae_title
from core.config_sources import parse_sources
from core.tomltable import Table

__all__ = [
    "ConfigError",
    "default_config_path",
    "load_config",
    "parse_config",
    "validate_ae_title",
]

ENV_CONFIG = "AINODE_CONFIG"

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def default_config_path() -> Path:
    """``$AINODE_CONFIG`` if set, else ``./config.toml``."""
    return Path(os.environ.get(ENV_CONFIG, "config.toml"))


def _listener(table: Table, base: Path) -> ListenerConfig:
    d = ListenerConfig()
    ae_title = validate_ae_title(table.string("ae_title", d.ae_title), table.key("ae_title"))
    bind = table.string("bind_address", d.bind_address)
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        raise ConfigError(
            f"{table.key('bind_address')}: must be an IPv4 or IPv6 address (got {bind!r})"
        ) from None
    port = table.integer("port", d.port, 1, 65535)
    cfg = ListenerConfig(
        ae_title=ae_title,
        bind_address=bind,
        port=port,
        listener_processes=table.integer("listener_processes", d.listener_processes, 1, 64),
        max_associations=table.integer("max_associations", d.max_associations, 1, 1000),
        max_associations_per_host=(
            table.integer("max_associations_per_host", 1, 1, 1000)
            if table.has("max_associations_per_host")
            else None
        ),
        max_pdu_bytes=table.integer("max_pdu_bytes", d.max_pdu_bytes, 0, 2**32 - 1),
        network_timeout_s=table.number("network_timeout_s", d.network_timeout_s, 1),
        acse_timeout_s=table.number("acse_timeout_s", d.acse_timeout_s, 0.5, 300),
        dimse_timeout_s=table.number("dimse_timeout_s", d.dimse_timeout_s, 1),
        shutdown_grace_s=table.number("shutdown_grace_s", d.shutdown_grace_s, 0),
        tls=parse_node_tls(table.raw("tls"), "[node.tls]", base, port),
        receiver=table.choice("receiver", d.receiver, Receiver, '"pynetdicom" or "dcmtk"'),
    )
    if cfg.per_host_limit > cfg.max_associations:
        raise ConfigError(
            f"{table.key('max_associations_per_host')}: must be at most max_associations "
            f"({cfg.per_host_limit} > {cfg.max_associations})"
        )
    if 0 < cfg.max_pdu_bytes < 4096:
        raise ConfigError(
            f"{table.key('max_pdu_bytes')}: must be 0 (unlimited) or at least 4096 "
            f"(got {cfg.max_pdu_bytes})"
        )
    table.finish()
    return cfg


def _storage(table: Table, base: Path) -> StorageConfig:
    data_dir = Path(table.string("data_dir", "data")).expanduser()
    if not data_dir.is_absolute():
        data_dir = base / data_dir
    if not data_dir.parent.is_dir():
        raise ConfigError(
            f"{table.key('data_dir')}: the folder that holds it must exist "
            f"({data_dir.parent} does not)"
        )
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"{table.key('data_dir')}: {data_dir} exists and is not a folder")
    cfg = StorageConfig(
        data_dir=data_dir,
        on_duplicate=table.choice(
            "on_duplicate", DuplicatePolicy.KEEP, DuplicatePolicy, '"keep" or "replace"'
        ),
        min_free_mb=table.integer("min_free_mb", 1024, 0),
    )
    table.finish()
    return cfg


def _completion(table: Table) -> CompletionConfig:
    d = CompletionConfig()
    cfg = CompletionConfig(
        level=table.choice("level", d.level, CompletionLevel, '"study" or "series"'),
        quiet_period_s=table.number("quiet_period_s", d.quiet_period_s, 0.1, 86400),
        check_interval_s=table.number("check_interval_s", d.check_interval_s, 0.05, 60),
    )
    table.finish()
    return cfg


def _queue(table: Table) -> QueueConfig:
    d = QueueConfig()
    cfg = QueueConfig(
        lease_s=table.number("lease_s", d.lease_s, 1),
        lease_check_interval_s=table.number(
            "lease_check_interval_s", d.lease_check_interval_s, 0.05, 3600
        ),
        max_attempts=table.integer("max_attempts", d.max_attempts, 1, 100),
        retry_wait_s=table.number("retry_wait_s", d.retry_wait_s, 0),
        retry_backoff=table.number("retry_backoff", d.retry_backoff, 1),
        retry_max_wait_s=table.number("retry_max_wait_s", d.retry_max_wait_s, 0),
    )
    table.finish()
    return cfg


def _log_format(value: str) -> str:
    if value not in ("text", "json"):
        raise ValueError(value)
    return value


def _logging(table: Table) -> LoggingConfig:
    def level(key: str, default: str) -> str:
        value = table.string(key, default).upper()
        if value not in _LOG_LEVELS:
            raise ConfigError(f"{table.key(key)}: must be one of {', '.join(_LOG_LEVELS)}")
        return value

    d = LoggingConfig()
    cfg = LoggingConfig(
        level=level("level", d.level),
        pynetdicom_level=level("pynetdicom_level", d.pynetdicom_level),
        format=table.choice("format", d.format, _log_format, '"text" or "json"'),
    )
    table.finish()
    return cfg


def _delivery(table: Table) -> DeliveryConfig:
    d = DeliveryConfig()
    cfg = DeliveryConfig(
        check_interval_s=table.number("check_interval_s", d.check_interval_s, 0.05, 3600),
        max_attempts=table.integer("max_attempts", d.max_attempts, 1, 1000),
        retry_wait_s=table.number("retry_wait_s", d.retry_wait_s, 0, 86400),
        retry_backoff=table.number("retry_backoff", d.retry_backoff, 1, 10),
        retry_max_wait_s=table.number("retry_max_wait_s", d.retry_max_wait_s, 0, 7 * 86400),
        connect_timeout_s=table.number("connect_timeout_s", d.connect_timeout_s, 0.1, 600),
        dimse_timeout_s=table.number("dimse_timeout_s", d.dimse_timeout_s, 0.1, 3600),
    )
    table.finish()
    return cfg


def _results(table: Table) -> ResultsConfig:
    d = ResultsConfig()
    cfg = ResultsConfig(
        manufacturer=short_text(table, "manufacturer", 64) or d.manufacturer,
        institution_name=short_text(table, "institution_name", 64),
        device_serial_number=short_text(table, "device_serial_number", 64),
    )
    table.finish()
    return cfg


def _inference(table: Table) -> InferenceConfig:
    d = InferenceConfig()
    cfg = InferenceConfig(
        workers=table.integer("workers", d.workers, 0, 64),
        device=table.choice("device", d.device, check_device, '"auto", "cpu", "cuda" or "cuda:N"'),
        batch_size=table.integer("batch_size", d.batch_size, 1, 4096),
        amp=table.boolean("amp", d.amp),
        poll_interval_s=table.number("poll_interval_s", d.poll_interval_s, 0.05, 60),
        heartbeat_s=table.number("heartbeat_s", d.heartbeat_s, 0.1, 3600),
    )
    table.finish()
    return cfg


def check_device(value: str) -> str:
    """A device setting: auto, cpu, cuda or cuda:N (else ValueError)."""
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise ValueError(value)


def _retention(table: Table) -> RetentionConfig:
    def days(key: str) -> float | None:
        return table.number(key, 0.0, 0.0, 36500.0) if table.has(key) else None

    d = RetentionConfig()
    cfg = RetentionConfig(
        instances_days=days("instances_days"),
        results_days=days("results_days"),
        check_interval_s=table.number("check_interval_s", d.check_interval_s, 1.0, 86400.0),
        evict_when_full=table.boolean("evict_when_full", d.evict_when_full),
    )
    table.finish()
    return cfg


def parse_config(data: dict[str, Any], path: Path) -> NodeConfig:
    """Validate the parsed TOML ``data`` of the file at ``path``."""
    top = config_table(data, "")
    base = path.resolve().parent

    def table(name: str) -> Table:
        return config_table(top.raw(name) or {}, f"[{name}]")

    storage = _storage(table("storage"), base)
    node = _listener(table("node"), base)
    cfg = NodeConfig(
        path=path.resolve(),
        node=node,
        storage=storage,
        completion=_completion(table("completion")),
        queue=_queue(table("queue")),
        logging=_logging(table("logging")),
        inference=_inference(table("inference")),
        peers=parse_peers(top.raw("peers")),
        pipelines=parse_pipelines(top.raw("pipelines"), base),
        destinations=parse_destinations(top.raw("destinations"), base),
        sources=parse_sources(top.raw("sources"), base),
        delivery=_delivery(table("delivery")),
        results=_results(table("results")),
        audit=parse_audit(table("audit"), base, storage.data_dir),
        retention=_retention(table("retention")),
        web=parse_web(table("web"), base, node.port),
        database=parse_database(table("database"), base, storage.database_path),
        export=parse_export(table("export"), base),
    )
    for p in cfg.pipelines:
        for name in p.destinations:
            if not any(d.name == name for d in cfg.destinations):
                raise ConfigError(
                    f"[[pipelines]] {p.name!r} destinations: {name!r} is not a "
                    f"[[destinations]] name"
                )
        for name in p.priors_from:
            if not any(s.name == name for s in cfg.sources):
                raise ConfigError(
                    f"[[pipelines]] {p.name!r} priors_from: {name!r} is not a [[sources]] name"
                )
    if cfg.inference.heartbeat_s * 2 > cfg.queue.lease_s:
        raise ConfigError(
            f"[inference] heartbeat_s: must be at most half of [queue] lease_s "
            f"({cfg.inference.heartbeat_s} > {cfg.queue.lease_s} / 2)"
        )
    top.finish()
    return cfg


def load_config(path: Path | None = None) -> NodeConfig:
    """Read and validate the config file (default: :func:`default_config_path`)."""
    path = path or default_config_path()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return parse_config(data, path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
