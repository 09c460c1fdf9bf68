"""The network side of config.toml: ``[node.tls]``, peers, destinations, ``[audit]``.

File paths resolve against the config file's folder and must name readable
files; whether a certificate and its key belong together is checked when the
TLS contexts are built (``node.tls``), which ``ainode check-config`` does too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from pathlib import Path
from urllib.parse import urlsplit

from core.config import (
    AuditConfig,
    ClientTls,
    DestinationConfig,
    PeerConfig,
    SyslogTarget,
    TlsConfig,
    WebConfig,
)
from core.config_rules import (
    NAME_RE,
    ConfigError,
    array_of_tables,
    config_table,
    existing_file,
    validate_ae_title,
)
from core.tomltable import Table

HEAT_MAPS = ("float", "deflated", "off")

__all__ = [
    "client_tls",
    "parse_audit",
    "parse_destinations",
    "parse_node_tls",
    "parse_peers",
    "parse_web",
    "remote_node",
]


def parse_node_tls(raw: object, name: str, base: Path, main_port: int) -> TlsConfig | None:
    """``[node.tls]``, or None when absent."""
    if raw is None:
        return None
    table = config_table(raw, name)
    certificate = existing_file(table, "certificate", base, required=True)
    private_key = existing_file(table, "private_key", base, required=True)
    assert certificate is not None and private_key is not None
    ca_bundle = existing_file(table, "ca_bundle", base, required=False)
    require = table.boolean("require_client_certificate", False)
    if require and ca_bundle is None:
        raise table.fail("ca_bundle", "is required with require_client_certificate = true")
    port = table.integer("port", 2762, 1, 65535) if table.has("port") else None
    if port == main_port:
        raise table.fail(
            "port",
            f"must differ from [node] port ({main_port}); leave it out "
            "to make the main port TLS only",
        )
    table.finish()
    return TlsConfig(
        certificate=certificate,
        private_key=private_key,
        ca_bundle=ca_bundle,
        require_client_certificate=require,
        port=port,
    )


def parse_peers(raw: object) -> tuple[PeerConfig, ...]:
    peers = []
    for table in array_of_tables(raw, "peers"):
        if not table.has("ae_title"):
            raise ConfigError(f"{table.key('ae_title')}: is required")
        ae = validate_ae_title(table.raw("ae_title"), table.key("ae_title"))
        host_raw = table.raw("host")
        host = None
        if host_raw is not None:
            if not isinstance(host_raw, str):
                raise ConfigError(f"{table.key('host')}: must be a string")
            try:
                host = ipaddress.ip_network(host_raw, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{table.key('host')}: must be an IP address or network such as "
                    f'"10.0.0.5" or "10.0.0.0/24" (got {host_raw!r})'
                ) from None
        subject = table.required_string("tls_subject") if table.has("tls_subject") else None
        table.finish()
        peers.append(PeerConfig(ae_title=ae, host=host, tls_subject=subject))
    return tuple(peers)


def client_tls(table: Table, base: Path) -> ClientTls | None:
    if not table.boolean("tls", False):
        for key in ("tls_ca_bundle", "tls_certificate", "tls_private_key", "tls_server_name"):
            if table.has(key):
                raise table.fail(key, "only with tls = true")
        return None
    if table.has("tls_private_key") and not table.has("tls_certificate"):
        raise table.fail("tls_certificate", "is required with tls_private_key")
    return _client_tls_for(table, base)


def remote_node(table: Table, taken: Collection[str]) -> tuple[str, str, str, int]:
    """A called node's ``name`` (unique among ``taken``), ``ae_title``, ``host`` and ``port``."""
    name = table.string("name", "")
    if not NAME_RE.match(name):
        raise ConfigError(
            f"{table.key('name')}: is required: letters, digits, '_', '-', '.', "
            f"at most 64 characters (got {name!r})"
        )
    if name in taken:
        raise ConfigError(f"{table.key('name')}: must be unique ({name!r} repeats)")
    if not table.has("ae_title") or not table.has("host"):
        raise ConfigError(f"{table.key('ae_title')}, host and port: are required")
    ae = validate_ae_title(table.raw("ae_title"), table.key("ae_title"))
    host = table.string("host", "")
    if not host:
        raise ConfigError(f"{table.key('host')}: must be a host name or IP address")
    return name, ae, host, table.integer("port", 104, 1, 65535)


def parse_destinations(raw: object, base: Path) -> tuple[DestinationConfig, ...]:
    found: list[DestinationConfig] = []
    for table in array_of_tables(raw, "destinations"):
        name, ae, host, port = remote_node(table, {d.name for d in found})
        tls = client_tls(table, base)
        commitment = table.boolean("storage_commitment", False)
        if table.has("commitment_timeout_s") and not commitment:
            raise table.fail("commitment_timeout_s", "only with storage_commitment = true")
        timeout = table.number("commitment_timeout_s", 300.0, 1.0, 7 * 86400.0)
        heat_map = table.string("heat_map", "float")
        if heat_map not in HEAT_MAPS:
            raise table.fail("heat_map", f'must be "float", "deflated" or "off" (got {heat_map!r})')
        table.finish()
        found.append(
            DestinationConfig(
                name=name,
                ae_title=ae,
                host=host,
                port=port,
                tls=tls,
                storage_commitment=commitment,
                commitment_timeout_s=timeout,
                heat_map=heat_map,
            )
        )
    return tuple(found)


_SYSLOG_PORTS = {"udp": 514, "tcp": 601, "tcp+tls": 6514}


def parse_audit(table: Table, base: Path, data_dir: Path) -> AuditConfig:
    """``[audit]``: the local audit file (default ``<data_dir>/audit/audit.log``) and syslog."""
    raw_file = table.string("file", "")
    path = Path(raw_file).expanduser() if raw_file else data_dir / "audit" / "audit.log"
    path = path if path.is_absolute() else base / path
    syslog = None
    if table.has("syslog"):
        url = table.required_string("syslog")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            parts, port = urlsplit(""), None
        scheme = parts.scheme.lower()
        if scheme not in _SYSLOG_PORTS or not parts.hostname or parts.path not in ("", "/"):
            raise table.fail(
                "syslog",
                f'must look like "udp://host:514", "tcp://host:601" or "tcp+tls://host:6514" '
                f"(got {url!r})",
            )
        tls = _client_tls_for(table, base) if scheme == "tcp+tls" else None
        syslog = SyslogTarget(
            transport=scheme, host=parts.hostname, port=port or _SYSLOG_PORTS[scheme], tls=tls
        )
    for key in ("tls_ca_bundle", "tls_certificate", "tls_private_key", "tls_server_name"):
        if table.has(key):
            raise table.fail(key, 'only with syslog = "tcp+tls://..."')
    site = table.string("enterprise_site_id", "")
    source = table.string("source_id", "")
    table.finish()
    return AuditConfig(file=path, syslog=syslog, enterprise_site_id=site, source_id=source)


def _client_tls_for(table: Table, base: Path) -> ClientTls:
    certificate = existing_file(table, "tls_certificate", base, required=False)
    private_key = existing_file(table, "tls_private_key", base, required=certificate is not None)
    return ClientTls(
        ca_bundle=existing_file(table, "tls_ca_bundle", base, required=False),
        certificate=certificate,
        private_key=private_key,
        server_name=table.string("tls_server_name", "") or None,
    )


def parse_web(table: Table, base: Path, node_port: int) -> WebConfig:
    """``[web]``: where the dashboard listens, and the admin token's file."""
    d = WebConfig()
    bind = table.string("bind_address", d.bind_address)
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        raise table.fail(
            "bind_address", f"must be an IPv4 or IPv6 address (got {bind!r})"
        ) from None
    port = table.integer("port", d.port, 1, 65535)
    if port == node_port:
        raise table.fail("port", f"must differ from [node] port ({node_port})")
    token = existing_file(table, "admin_token_file", base, required=False)
    if token is not None and not token.read_text().strip():
        raise table.fail("admin_token_file", f"{token} is empty")
    cfg = WebConfig(
        enabled=table.boolean("enabled", d.enabled),
        bind_address=bind,
        port=port,
        admin_token_file=token,
    )
    table.finish()
    return cfg
