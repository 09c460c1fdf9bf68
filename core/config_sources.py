"""``[[sources]]`` of config.toml: the PACS ainode queries and retrieves from.

::

    [[sources]]
    name = "pacs"
    ae_title = "PACS"
    host = "10.20.0.10"
    port = 104
    retrieve = "move"             # or "get"
    # counts = true               # complete a study once the PACS's count is here
    # max_studies_per_patient = 3 # newest priors retrieved per arriving study
    # max_mb_per_hour = 5000      # a runaway prefetch stops here

Pipelines name the sources of their priors: ``[[pipelines]] priors_from``.
"""

from __future__ import annotations

from pathlib import Path

from core.config_network import client_tls
from core.config_remote import RetrieveMethod, SourceConfig
from core.config_rules import NAME_RE, ConfigError, array_of_tables, validate_ae_title

__all__ = ["parse_sources"]

_METHODS = (RetrieveMethod.MOVE, RetrieveMethod.GET)


def parse_sources(raw: object, base: Path) -> tuple[SourceConfig, ...]:
    found: list[SourceConfig] = []
    for table in array_of_tables(raw, "sources"):
        name = table.string("name", "")
        if not NAME_RE.match(name):
            raise ConfigError(
                f"{table.key('name')}: is required: letters, digits, '_', '-', '.', "
                f"at most 64 characters (got {name!r})"
            )
        if any(s.name == name for s in found):
            raise ConfigError(f"{table.key('name')}: must be unique ({name!r} repeats)")
        if not table.has("ae_title") or not table.has("host"):
            raise ConfigError(f"{table.key('ae_title')}, host and port: are required")
        ae = validate_ae_title(table.raw("ae_title"), table.key("ae_title"))
        host = table.string("host", "")
        if not host:
            raise ConfigError(f"{table.key('host')}: must be a host name or IP address")
        retrieve = table.string("retrieve", RetrieveMethod.MOVE)
        if retrieve not in _METHODS:
            raise table.fail("retrieve", f'must be "move" or "get" (got {retrieve!r})')
        d = SourceConfig(name=name, ae_title=ae, host=host, port=104)
        source = SourceConfig(
            name=name,
            ae_title=ae,
            host=host,
            port=table.integer("port", 104, 1, 65535),
            tls=client_tls(table, base),
            retrieve=retrieve,
            counts=table.boolean("counts", d.counts),
            connect_timeout_s=table.number("connect_timeout_s", d.connect_timeout_s, 0.1, 600.0),
            dimse_timeout_s=table.number("dimse_timeout_s", d.dimse_timeout_s, 0.1, 3600.0),
            retrieve_timeout_s=table.number(
                "retrieve_timeout_s", d.retrieve_timeout_s, 1.0, 86400.0
            ),
            max_studies_per_patient=table.integer(
                "max_studies_per_patient", d.max_studies_per_patient, 0, 100
            ),
            max_mb_per_hour=table.number("max_mb_per_hour", d.max_mb_per_hour, 0.0),
            max_attempts=table.integer("max_attempts", d.max_attempts, 1, 1000),
            retry_wait_s=table.number("retry_wait_s", d.retry_wait_s, 0.0, 86400.0),
        )
        table.finish()
        found.append(source)
    return tuple(found)
