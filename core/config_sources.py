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

from core.config_network import client_tls, remote_node
from core.config_remote import RetrieveMethod, SourceConfig
from core.config_rules import array_of_tables

__all__ = ["parse_sources"]

_METHODS = (RetrieveMethod.MOVE, RetrieveMethod.GET)


def parse_sources(raw: object, base: Path) -> tuple[SourceConfig, ...]:
    found: list[SourceConfig] = []
    for table in array_of_tables(raw, "sources"):
        name, ae, host, port = remote_node(table, {s.name for s in found})
        retrieve = table.string("retrieve", RetrieveMethod.MOVE)
        if retrieve not in _METHODS:
            raise table.fail("retrieve", f'must be "move" or "get" (got {retrieve!r})')
        d = SourceConfig(name=name, ae_title=ae, host=host, port=port)
        source = SourceConfig(
            name=name,
            ae_title=ae,
            host=host,
            port=port,
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
